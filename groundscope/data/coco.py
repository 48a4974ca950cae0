"""COCO instances JSON: reader and writer.

On disk (standard keys, plus optional extras this toolkit reads and writes)::

    {"images": [{"id": 1, "file_name": "images/000000.png", "height": 360, "width": 480,
                 "caption": "<detailed image caption>",              # optional extra
                 "grounding_caption": "a red circle and ..."}],      # optional extra
     "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [x, y, w, h], "area": w*h,
                      "iscrowd": 0,
                      "phrase": "small red circle",                  # optional extras from here on
                      "tokens_positive": [[2, 18]],                  # spans into the image's grounding_caption
                      "description": "<detailed region description>",
                      "attributes": {"colour": "red", ...}}],
     "categories": [{"id": 3, "name": "red circle"}]}

``bbox`` is xywh in pixels on disk and xyxy in the returned `Instance`. Category ids are kept
(`Dataset.category_ids`); annotation ids and image ids are kept too.
"""

from __future__ import annotations

from pathlib import Path

from groundscope.data.errors import DataFormatError
from groundscope.data.jsonio import load_json, parse_records, write_json
from groundscope.data.records import (
    Dataset,
    ImageRecord,
    Instance,
    check_size,
    check_spans,
    check_str,
    check_xywh,
    clean_box,
    clean_number,
    require,
    xyxy_to_xywh,
)


def _int_id(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DataFormatError(f"{what} must be an integer, got {value!r}")
    return value


def read_coco(path: str | Path, skip_invalid: bool = False) -> Dataset:
    """Read a COCO instances file.

    Args:
        path: the ``.json`` file.
        skip_invalid: drop malformed images/annotations/categories and count them in ``Dataset.skipped``
            instead of raising. An annotation whose image or category was dropped is dropped too.

    Raises:
        DataFormatError: naming the file and ``section[index]`` of the first malformed record.
    """
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataFormatError("a COCO file must be a JSON object with images/annotations/categories", path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataFormatError(f"missing or non-list top-level key {key!r}", path)

    def locator(section):
        return lambda e, i: e.located(path, index=i, section=section)

    seen_cat: set[int] = set()

    def parse_category(c) -> tuple[int, str]:
        require(c, ("id", "name"), "category")
        cid = _int_id(c["id"], "category id")
        if cid in seen_cat:
            raise DataFormatError(f"duplicate category id {cid}")
        seen_cat.add(cid)
        return cid, check_str(c["name"], "category name")

    cats, skipped_c = parse_records(enumerate(data["categories"]), parse_category, locator("categories"), skip_invalid)
    label_of = {cid: label for label, (cid, _) in enumerate(cats)}

    seen_img: set[int] = set()

    def parse_image(im) -> ImageRecord:
        require(im, ("id", "file_name", "height", "width"), "image")
        iid = _int_id(im["id"], "image id")
        if iid in seen_img:
            raise DataFormatError(f"duplicate image id {iid}")
        seen_img.add(iid)
        h, w = check_size(im)
        caption = im.get("grounding_caption")
        long_caption = im.get("caption")
        return ImageRecord(
            filename=check_str(im["file_name"], "file_name"), height=h, width=w, image_id=iid,
            caption=None if caption is None else check_str(caption, "grounding_caption"),
            long_caption=None if long_caption is None else check_str(long_caption, "caption"),
        )

    images, skipped_i = parse_records(enumerate(data["images"]), parse_image, locator("images"), skip_invalid)
    by_id = {im.image_id: im for im in images}

    def parse_annotation(a) -> tuple[ImageRecord, Instance]:
        require(a, ("image_id", "category_id", "bbox"), "annotation")
        image = by_id.get(a["image_id"])
        if image is None:
            raise DataFormatError(f"annotation refers to unknown image_id {a['image_id']!r}")
        if a["category_id"] not in label_of:
            raise DataFormatError(f"annotation refers to unknown category_id {a['category_id']!r}")
        label = label_of[a["category_id"]]
        spans = []
        if "tokens_positive" in a:
            if image.caption is None:
                raise DataFormatError("tokens_positive given but the image has no grounding_caption")
            spans = check_spans(a["tokens_positive"], image.caption)
        attributes = a.get("attributes", {})
        if not isinstance(attributes, dict):
            raise DataFormatError(f"attributes must be an object, got {attributes!r}")
        inst = Instance(
            bbox=check_xywh(a["bbox"]), label=label, category=cats[label][1],
            phrase=None if a.get("phrase") is None else check_str(a["phrase"], "phrase"),
            tokens_positive=spans,
            description=None if a.get("description") is None else check_str(a["description"], "description"),
            attributes=dict(attributes),
            id=None if a.get("id") is None else _int_id(a["id"], "annotation id"),
        )
        return image, inst

    anns, skipped_a = parse_records(enumerate(data["annotations"]), parse_annotation, locator("annotations"),
                                    skip_invalid)
    for image, inst in anns:
        image.instances.append(inst)
    return Dataset(
        images=images, categories=[name for _, name in cats], category_ids=[cid for cid, _ in cats],
        skipped=skipped_c + skipped_i + skipped_a,
    )


def coco_dict(dataset: Dataset) -> dict:
    """The COCO JSON object for ``dataset`` (see the module docstring for the keys).

    Every instance needs a ``label`` (index into ``dataset.categories``). Image ids default to 1..N and
    annotation ids to a running count when the records carry none.
    """
    categories = [{"id": dataset.category_id(k), "name": name} for k, name in enumerate(dataset.categories)]
    images, annotations = [], []
    used_ids = {inst.id for im in dataset.images for inst in im.instances if inst.id is not None}
    next_ann = max(used_ids, default=0) + 1
    for n, im in enumerate(dataset.images):
        iid = im.image_id if im.image_id is not None else n + 1
        entry = {"id": iid, "file_name": im.filename, "height": im.height, "width": im.width}
        if im.long_caption is not None:
            entry["caption"] = im.long_caption
        if im.caption is not None:
            entry["grounding_caption"] = im.caption
        images.append(entry)
        for inst in im.instances:
            if inst.label is None or not 0 <= inst.label < len(dataset.categories):
                raise ValueError(f"{im.filename}: instance {inst.bbox} has no valid category label")
            if inst.id is None:
                ann_id, next_ann = next_ann, next_ann + 1
            else:
                ann_id = inst.id
            xywh = xyxy_to_xywh(inst.bbox)
            ann = {"id": ann_id, "image_id": iid, "category_id": dataset.category_id(inst.label),
                   "bbox": clean_box(xywh), "area": clean_number(xywh[2] * xywh[3]), "iscrowd": 0}
            if inst.phrase is not None:
                ann["phrase"] = inst.phrase
            if inst.tokens_positive and im.caption is not None:
                ann["tokens_positive"] = [list(s) for s in inst.tokens_positive]
            if inst.description is not None:
                ann["description"] = inst.description
            if inst.attributes:
                ann["attributes"] = inst.attributes
            annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(path: str | Path, dataset: Dataset) -> Path:
    """Write ``dataset`` as a COCO instances file (boxes converted to xywh here)."""
    return write_json(path, coco_dict(dataset))
