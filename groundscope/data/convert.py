"""Conversion between COCO, ODVG, RefCOCO (MDETR) and GroundingCap files.

Everything goes through the format-neutral records (`Dataset` for COCO/ODVG/GroundingCap, `RefExpSet` for
referring expressions). What a conversion keeps or invents:

* COCO <-> ODVG detection: boxes, labels, category names and ids are kept (ids as the source had them).
* to ODVG grounding / GroundingCap from a source without a caption: a GLIP-style caption
  ``"red circle. blue star."`` is built from the phrases (or class names); GroundingCap without a long
  caption uses the grounding caption as its long caption.
* from grounding records to COCO: a region's ``category`` names its class when present, else its phrase.
* refexp -> image formats: ``odvg``/``groundingcap`` get one grounding record per expression (caption =
  expression, one region), as mmdetection's RefCOCO-to-ODVG conversion does; ``coco`` gets one image per
  underlying image with each distinct target once.
* image formats -> refexp: a record with one region and a caption becomes that expression (the inverse of
  the above); otherwise every object whose name (phrase, else category) is unique in its image becomes the
  expression ``"the <name>"`` — unambiguous by construction, but only as rich as the source's names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from groundscope.data.coco import read_coco, write_coco
from groundscope.data.errors import DataFormatError
from groundscope.data.groundingcap import read_groundingcap, write_groundingcap
from groundscope.data.jsonio import iter_jsonl, load_json
from groundscope.data.odvg import (
    assign_labels_from_categories,
    read_odvg,
    write_odvg_detection,
    write_odvg_grounding,
)
from groundscope.data.records import Dataset, ImageRecord, Instance, RefExp, RefExpSet
from groundscope.data.refexp import read_refexp, write_refexp

FORMATS = ("coco", "odvg", "refexp", "groundingcap")
ODVG_MODES = ("auto", "det", "grounding")


# ----------------------------------------------------------------------------------------------- inference


def _name_hint(path: Path) -> str | None:
    name = path.name.lower()
    if "groundingcap" in name:
        return "groundingcap"
    if "refexp" in name or "refcoco" in name:
        return "refexp"
    if "odvg" in name:
        return "odvg"
    if "coco" in name or "instances" in name:
        return "coco"
    return None


def infer_format(path: str | Path, must_exist: bool = True) -> str:
    """Guess a file's format. Existing files are sniffed by content (JSON-lines with ``conversations`` ->
    groundingcap, other JSON-lines -> odvg; JSON whose entries carry ``caption`` + ``original_img_id`` ->
    refexp, other JSON -> coco); output paths only by name (``*refexp*``, ``*groundingcap*``, ``*.jsonl`` ->
    odvg, ``*.json`` with ``coco``/``instances`` in the name -> coco).

    Raises:
        DataFormatError: when the format cannot be told; pass it explicitly then.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_file() and must_exist:
        if suffix == ".jsonl":
            for _, first in iter_jsonl(path):
                return "groundingcap" if isinstance(first, dict) and "conversations" in first else "odvg"
            raise DataFormatError("empty file; cannot tell its format (pass --from)", path)
        if suffix == ".json":
            data = load_json(path)
            if isinstance(data, dict) and isinstance(data.get("images"), list):
                first = data["images"][0] if data["images"] else {}
                if isinstance(first, dict) and "caption" in first and "original_img_id" in first:
                    return "refexp"
                return "coco"
    hint = _name_hint(path)
    if hint == "groundingcap" or (hint == "odvg" and suffix == ".jsonl"):
        return hint
    if hint in ("refexp", "coco") and suffix == ".json":
        return hint
    if suffix == ".jsonl" and hint is None:
        return "odvg"
    raise DataFormatError("cannot infer the format from the file name; pass it explicitly "
                          f"(one of {', '.join(FORMATS)})", path)


# ----------------------------------------------------------------------------------------------- read / write


def read_any(path: str | Path, fmt: str, label_map: str | Path | None = None,
             skip_invalid: bool = False) -> Dataset | RefExpSet:
    """Read ``path`` as ``fmt`` (one of `FORMATS`)."""
    if fmt == "coco":
        return read_coco(path, skip_invalid)
    if fmt == "odvg":
        return read_odvg(path, label_map, skip_invalid)
    if fmt == "groundingcap":
        return read_groundingcap(path, skip_invalid)
    if fmt == "refexp":
        return read_refexp(path, skip_invalid)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def _label_everything(dataset: Dataset) -> Dataset:
    """Give every instance a label: its category, else its phrase, names the class (grounding -> COCO)."""
    for im in dataset.images:
        for inst in im.instances:
            if inst.label is None and inst.category is None:
                inst.category = inst.phrase
    assign_labels_from_categories(dataset)
    return dataset


def write_any(path: str | Path, data: Dataset | RefExpSet, fmt: str, label_map: str | Path | None = None,
              odvg_mode: str = "auto") -> list[Path]:
    """Write ``data`` as ``fmt``; returns the files written (ODVG detection also writes a label map).

    ``odvg_mode``: ``det`` (detection records + label map), ``grounding``, or ``auto`` = detection when every
    instance has a class label and the source is not referring expressions, else grounding.
    """
    if odvg_mode not in ODVG_MODES:
        raise ValueError(f"odvg_mode must be one of {ODVG_MODES}, got {odvg_mode!r}")
    if fmt == "refexp":
        refs = data if isinstance(data, RefExpSet) else refexps_from_dataset(data)
        return [write_refexp(path, refs)]
    from_refs = isinstance(data, RefExpSet)
    if isinstance(data, RefExpSet):
        data = dataset_from_refexps(data, per_expression=fmt != "coco")
    if fmt == "coco":
        return [write_coco(path, _label_everything(data))]
    if fmt == "groundingcap":
        return [write_groundingcap(path, data)]
    if fmt == "odvg":
        labelled = all(inst.label is not None for im in data.images for inst in im.instances)
        if odvg_mode == "det" or (odvg_mode == "auto" and labelled and not from_refs):
            return list(write_odvg_detection(path, _label_everything(data), label_map))
        return [write_odvg_grounding(path, data)]
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


# ----------------------------------------------------------------------------------------------- refexp bridges


def dataset_from_refexps(refs: RefExpSet, per_expression: bool) -> Dataset:
    """Referring expressions as image records (see the module docstring for the two layouts)."""
    dataset = Dataset(categories=list(refs.categories))
    if per_expression:
        for ref in refs.refs:
            inst = Instance(bbox=ref.bbox, category=ref.category, tokens_positive=list(ref.tokens_positive),
                            phrase=" ".join(ref.expression[a:b] for a, b in ref.tokens_positive) or ref.expression,
                            id=ref.ann_id)
            dataset.images.append(ImageRecord(filename=ref.filename, height=ref.height, width=ref.width,
                                              instances=[inst], image_id=ref.image_id, caption=ref.expression))
        # One record per expression repeats image ids; they are meaningless in ODVG, so drop them.
        for im in dataset.images:
            im.image_id = None
    else:
        by_image: dict[int, ImageRecord] = {}
        seen: set[tuple[int, Any]] = set()
        for ref in refs.refs:
            im = by_image.setdefault(ref.image_id, ImageRecord(filename=ref.filename, height=ref.height,
                                                               width=ref.width, image_id=ref.image_id))
            key = (ref.image_id, ref.ann_id if ref.ann_id is not None else tuple(ref.bbox))
            if key in seen:
                continue
            seen.add(key)
            head = " ".join(ref.expression[a:b] for a, b in ref.tokens_positive) or ref.expression
            im.instances.append(Instance(bbox=ref.bbox, category=ref.category, phrase=head, id=ref.ann_id))
        dataset.images = list(by_image.values())
    assign_labels_from_categories(dataset)
    return dataset


def refexps_from_dataset(dataset: Dataset) -> RefExpSet:
    """Image records as referring expressions (see the module docstring)."""
    out = RefExpSet(categories=list(dataset.categories))
    for n, im in enumerate(dataset.images):
        image_id = im.image_id if im.image_id is not None else n + 1
        if len(im.instances) == 1 and im.caption is not None and im.instances[0].tokens_positive:
            inst = im.instances[0]
            out.refs.append(RefExp(expression=im.caption, bbox=inst.bbox, filename=im.filename, height=im.height,
                                   width=im.width, image_id=image_id, tokens_positive=list(inst.tokens_positive),
                                   category=_category(dataset, inst), ann_id=inst.id))
            continue
        names = [inst.phrase or _category(dataset, inst) for inst in im.instances]
        for inst, name in zip(im.instances, names, strict=True):
            if name and names.count(name) == 1:
                text = f"the {name}"
                out.refs.append(RefExp(expression=text, bbox=inst.bbox, filename=im.filename, height=im.height,
                                       width=im.width, image_id=image_id, tokens_positive=[(0, len(text))],
                                       category=_category(dataset, inst), ann_id=inst.id))
    return out


def _category(dataset: Dataset, inst: Instance) -> str | None:
    if inst.category is not None:
        return inst.category
    return dataset.categories[inst.label] if inst.label is not None else None


# ----------------------------------------------------------------------------------------------- convert


def convert(src: str | Path, dst: str | Path, src_format: str | None = None, dst_format: str | None = None,
            label_map: str | Path | None = None, skip_invalid: bool = False, odvg_mode: str = "auto",
            out_label_map: str | Path | None = None) -> dict:
    """Convert ``src`` to ``dst``; formats are inferred when not given (see `infer_format`).

    Args:
        label_map: label map to read ODVG detection input with.
        out_label_map: where ODVG detection output writes its label map (default ``label_map.json`` beside
            ``dst``).

    Returns:
        ``{"from", "to", "records", "skipped", "written": [paths]}``.
    """
    src_format = src_format or infer_format(src)
    dst_format = dst_format or infer_format(dst, must_exist=False)
    data = read_any(src, src_format, label_map, skip_invalid)
    written = write_any(dst, data, dst_format, out_label_map, odvg_mode)
    records = len(data.refs) if isinstance(data, RefExpSet) else len(data.images)
    return {"from": src_format, "to": dst_format, "records": records, "skipped": data.skipped,
            "written": [str(p) for p in written]}
