"""ODVG JSON-lines (mmdetection's MM-Grounding-DINO training format): reader and writers.

One JSON object per line, boxes xyxy in pixels. Detection records (with a separate ``label_map`` file)::

    {"filename": "images/000000.png", "height": 360, "width": 480,
     "detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label": 0, "category": "red circle"}]}}
    label_map.json: {"0": "red circle", "1": "red square", ...}

Grounding records::

    {"filename": ..., "height": ..., "width": ...,
     "grounding": {"caption": "a small red circle and a blue star.",
                   "regions": [{"bbox": [x1, y1, x2, y2], "phrase": "small red circle",
                                "tokens_positive": [[2, 18]],
                                "category": "red circle", "description": "...",
                                "attributes": {"colour": "red", "texture": "plain"}}]}}   # last three optional

A region's ``phrase`` defaults to the caption text under its spans when absent. ``attributes`` (an object of
free-form facts, as COCO annotations carry them) is kept as the instance's ``attributes``: the synthetic world
writes its objects' colour, shape, size and texture there, which `groundscope pretrain-vlm` can learn from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from groundscope.data.errors import DataFormatError
from groundscope.data.jsonio import iter_jsonl, load_json, parse_records, write_json, write_jsonl
from groundscope.data.records import (
    Dataset,
    ImageRecord,
    Instance,
    Span,
    build_caption,
    check_size,
    check_spans,
    check_str,
    check_xyxy,
    clean_box,
    require,
)

LabelMap = dict[int, str]


# ----------------------------------------------------------------------------------------------- label map


def read_label_map(path: str | Path) -> LabelMap:
    """``{"0": "red circle", ...}`` -> ``{0: "red circle", ...}``; keys must be integers, values strings."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataFormatError('a label map must be a JSON object {"0": "name", ...}', path)
    out: LabelMap = {}
    for key, name in data.items():
        try:
            label = int(key)
        except ValueError:
            raise DataFormatError(f"label map key {key!r} is not an integer", path) from None
        if not isinstance(name, str):
            raise DataFormatError(f"label map value for {key!r} must be a string, got {name!r}", path)
        out[label] = name
    return out


def label_map_dict(dataset: Dataset) -> dict[str, str]:
    return {str(dataset.odvg_label(k)): name for k, name in enumerate(dataset.categories)}


def write_label_map(path: str | Path, dataset: Dataset) -> Path:
    return write_json(path, label_map_dict(dataset))


# ----------------------------------------------------------------------------------------------- records


def _image_header(raw: Any) -> tuple[str, int, int]:
    require(raw, ("filename", "height", "width"))
    h, w = check_size(raw)
    return check_str(raw["filename"], "filename"), h, w


def _opt_str(region: dict, key: str) -> str | None:
    return None if region.get(key) is None else check_str(region[key], key)


def _opt_attributes(region: dict) -> dict:
    attributes = region.get("attributes")
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise DataFormatError(f"region attributes must be an object, got {attributes!r}")
    return dict(attributes)


def parse_grounding(raw: Any) -> ImageRecord:
    """One grounding record -> `ImageRecord` (instances without labels)."""
    filename, h, w = _image_header(raw)
    g = raw.get("grounding")
    require(g, ("caption", "regions"), "grounding")
    caption = check_str(g["caption"], "grounding.caption")
    if not isinstance(g["regions"], list):
        raise DataFormatError("grounding.regions must be a list")
    instances = []
    for r in g["regions"]:
        require(r, ("bbox", "tokens_positive"), "region")
        spans = check_spans(r["tokens_positive"], caption)
        phrase = _opt_str(r, "phrase")
        if phrase is None:
            phrase = " ".join(caption[a:b] for a, b in spans)
        instances.append(Instance(bbox=check_xyxy(r["bbox"]), category=_opt_str(r, "category"), phrase=phrase,
                                  tokens_positive=spans, description=_opt_str(r, "description"),
                                  attributes=_opt_attributes(r)))
    return ImageRecord(filename=filename, height=h, width=w, instances=instances, caption=caption)


def _parse_detection(raw: Any, label_map: LabelMap | None, seen: dict[int, str]) -> ImageRecord:
    filename, h, w = _image_header(raw)
    det = raw.get("detection")
    require(det, ("instances",), "detection")
    if not isinstance(det["instances"], list):
        raise DataFormatError("detection.instances must be a list")
    instances = []
    for ins in det["instances"]:
        require(ins, ("bbox", "label"), "instance")
        label = ins["label"]
        if not isinstance(label, int) or isinstance(label, bool):
            raise DataFormatError(f"instance label must be an integer, got {label!r}")
        category = _opt_str(ins, "category")
        if label_map is not None:
            if label not in label_map:
                raise DataFormatError(f"label {label} is not in the label map")
            if category is not None and category != label_map[label]:
                raise DataFormatError(f"category {category!r} disagrees with label map {label}: {label_map[label]!r}")
            category = label_map[label]
        elif category is None:
            raise DataFormatError("instance has no category and no label map was given (pass label_map)")
        elif seen.setdefault(label, category) != category:
            raise DataFormatError(f"label {label} is {category!r} here but {seen[label]!r} earlier")
        # `label` holds the file's integer here; read_odvg turns it into an index into the categories.
        instances.append(Instance(bbox=check_xyxy(ins["bbox"]), label=label, category=category))
    return ImageRecord(filename=filename, height=h, width=w, instances=instances)


def read_odvg(path: str | Path, label_map: str | Path | LabelMap | None = None,
              skip_invalid: bool = False) -> Dataset:
    """Read an ODVG ``.jsonl`` file of detection and/or grounding records.

    A record with a ``detection`` key is read as detection, otherwise as grounding. Detection labels become
    indices into ``Dataset.categories`` (ordered by the file's integer label, which is kept in
    ``Dataset.category_ids``); grounding regions keep their ``category`` when present.

    Args:
        path: the ``.jsonl`` file.
        label_map: label map file or dict; needed for detection records that carry no ``category``.
        skip_invalid: skip malformed lines and count them in ``Dataset.skipped`` instead of raising.

    Raises:
        DataFormatError: naming the file and 1-based line of the first malformed record.
    """
    path = Path(path)
    lmap = read_label_map(label_map) if isinstance(label_map, (str, Path)) else label_map
    seen: dict[int, str] = {}

    def parse(raw: Any) -> ImageRecord:
        if isinstance(raw, dict) and "detection" in raw:
            return _parse_detection(raw, lmap, seen)
        if isinstance(raw, dict) and "grounding" not in raw:
            _image_header(raw)  # a missing header key is the clearer message
            raise DataFormatError("record has neither 'detection' nor 'grounding'")
        return parse_grounding(raw)

    images, skipped = parse_records(iter_jsonl(path), parse, lambda e, line: e.located(path, line=line),
                                    skip_invalid)
    file_labels = lmap if lmap is not None else seen
    ids = sorted(file_labels)
    index = {fid: k for k, fid in enumerate(ids)}
    for im in images:
        for inst in im.instances:
            if inst.label is not None:
                inst.label = index[inst.label]
    dataset = Dataset(images=images, categories=[file_labels[i] for i in ids], category_ids=ids or None)
    assign_labels_from_categories(dataset)
    dataset.skipped = skipped
    return dataset


def assign_labels_from_categories(dataset: Dataset) -> None:
    """Give label-less instances that carry a category name a label, extending ``categories`` as needed."""
    index = {name: k for k, name in enumerate(dataset.categories)}
    for im in dataset.images:
        for inst in im.instances:
            if inst.label is None and inst.category is not None:
                if inst.category not in index:
                    index[inst.category] = len(dataset.categories)
                    dataset.categories.append(inst.category)
                    if dataset.category_ids is not None:
                        dataset.category_ids.append(max(dataset.category_ids, default=-1) + 1)
                inst.label = index[inst.category]


# ----------------------------------------------------------------------------------------------- writers


def _category(inst: Instance, categories: list[str]) -> str | None:
    if inst.category is not None:
        return inst.category
    return categories[inst.label] if inst.label is not None and 0 <= inst.label < len(categories) else None


def caption_and_spans(image: ImageRecord, categories: list[str] = ()) -> tuple[str, list[list[Span]]]:
    """The image's grounding caption and each instance's spans; built GLIP-style from phrases (or category
    names, ``categories[label]``) as ``"red circle. blue star."`` when the record has no caption."""
    if image.caption is not None and all(inst.tokens_positive for inst in image.instances):
        return image.caption, [list(inst.tokens_positive) for inst in image.instances]
    names = []
    for inst in image.instances:
        name = inst.phrase or _category(inst, list(categories))
        if not name:
            raise ValueError(f"{image.filename}: an instance has neither phrase nor category to caption")
        names.append(name)
    caption, spans = build_caption(names)
    return caption, [[s] for s in spans]


def grounding_entry(image: ImageRecord, categories: list[str] = ()) -> dict:
    """The ODVG grounding record for ``image``; ``categories`` names labelled instances without a category."""
    caption, spans = caption_and_spans(image, categories)
    regions = []
    for inst, sp in zip(image.instances, spans, strict=True):
        region: dict[str, Any] = {"bbox": clean_box(inst.bbox),
                                  "phrase": inst.phrase or " ".join(caption[a:b] for a, b in sp),
                                  "tokens_positive": [list(s) for s in sp]}
        category = _category(inst, list(categories))
        if category is not None:
            region["category"] = category
        if inst.description is not None:
            region["description"] = inst.description
        if inst.attributes:
            region["attributes"] = inst.attributes
        regions.append(region)
    return {"filename": image.filename, "height": image.height, "width": image.width,
            "grounding": {"caption": caption, "regions": regions}}


def detection_entry(image: ImageRecord, dataset: Dataset) -> dict:
    """The ODVG detection record for ``image`` (every instance needs a label)."""
    instances = []
    for inst in image.instances:
        if inst.label is None:
            raise ValueError(f"{image.filename}: instance {inst.bbox} has no category label")
        instances.append({"bbox": clean_box(inst.bbox), "label": dataset.odvg_label(inst.label),
                          "category": dataset.categories[inst.label]})
    return {"filename": image.filename, "height": image.height, "width": image.width,
            "detection": {"instances": instances}}


def write_odvg_detection(path: str | Path, dataset: Dataset, label_map_path: str | Path | None = None
                         ) -> tuple[Path, Path]:
    """Write detection records and the label map (default: ``label_map.json`` next to ``path``)."""
    path = Path(path)
    lm = Path(label_map_path) if label_map_path is not None else path.with_name("label_map.json")
    write_jsonl(path, (detection_entry(im, dataset) for im in dataset.images))
    write_label_map(lm, dataset)
    return path, lm


def write_odvg_grounding(path: str | Path, dataset: Dataset) -> Path:
    """Write grounding records (one per image)."""
    return write_jsonl(path, (grounding_entry(im, dataset.categories) for im in dataset.images))
