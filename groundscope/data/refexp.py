"""Referring expressions in MDETR / GLIP ``final_refexp_<split>.json`` style: reader and writer.

Each ``images`` entry is one expression about one underlying image, with exactly one annotation::

    {"images": [{"id": 7, "file_name": "images/000003.png", "height": 360, "width": 480,
                 "caption": "the small blue square left of the green star",
                 "original_img_id": 4,                   # the image's id in the COCO file
                 "tokens_negative": [[0, 44]],           # the whole expression, as MDETR writes it
                 "tokens_positive_eval": [[[0, 21]]],    # per-target spans, used by MDETR's evaluator
                 "dataset_name": "synth-refexp"}],
     "annotations": [{"id": 7, "image_id": 7, "category_id": 12, "bbox": [x, y, w, h], "area": w*h,
                      "iscrowd": 0, "tokens_positive": [[0, 21]],   # the target's noun phrase
                      "original_id": 31}],                           # its annotation id in the COCO file
     "categories": [{"id": 12, "name": "blue square"}]}

Boxes are xywh on disk and xyxy in `RefExp`.
"""

from __future__ import annotations

from pathlib import Path

from groundscope.data.errors import DataFormatError
from groundscope.data.jsonio import load_json, parse_records, write_json
from groundscope.data.records import (
    RefExp,
    RefExpSet,
    check_size,
    check_spans,
    check_str,
    check_xywh,
    clean_box,
    clean_number,
    require,
    xyxy_to_xywh,
)

FALLBACK_CATEGORY = "object"


def _int(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DataFormatError(f"{what} must be an integer, got {value!r}")
    return value


def read_refexp(path: str | Path, skip_invalid: bool = False) -> RefExpSet:
    """Read an MDETR-style referring-expression file.

    Every ``images`` entry must have exactly one annotation; violations and malformed records raise
    `DataFormatError` naming the file and ``section[index]``, or with ``skip_invalid`` are dropped and
    counted in ``RefExpSet.skipped`` (an entry whose annotation is bad is dropped with it).
    """
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataFormatError("a refexp file must be a JSON object with images/annotations", path)
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataFormatError(f"missing or non-list top-level key {key!r}", path)
    raw_cats = data.get("categories", [])
    if not isinstance(raw_cats, list):
        raise DataFormatError("'categories' must be a list", path)

    def locator(section):
        return lambda e, i: e.located(path, index=i, section=section)

    def parse_cat(c) -> tuple[int, str]:
        require(c, ("id", "name"), "category")
        return _int(c["id"], "category id"), check_str(c["name"], "category name")

    cats, skipped = parse_records(enumerate(raw_cats), parse_cat, locator("categories"), skip_invalid)
    cat_name = dict(cats)

    def parse_entry(e) -> dict:
        require(e, ("id", "file_name", "height", "width", "caption"), "image entry")
        h, w = check_size(e)
        caption = check_str(e["caption"], "caption")
        if not caption.strip():
            raise DataFormatError("caption (the expression) is empty")
        return {"id": _int(e["id"], "id"), "file_name": check_str(e["file_name"], "file_name"), "height": h,
                "width": w, "caption": caption,
                "original_img_id": _int(e.get("original_img_id", e["id"]), "original_img_id")}

    entries, n = parse_records(enumerate(data["images"]), parse_entry, locator("images"), skip_invalid)
    skipped += n
    by_id = {e["id"]: e for e in entries}
    # Keep positions in the file so a count violation can name the entry.
    position = {e["id"]: i for i, e in enumerate(data["images"]) if isinstance(e, dict) and "id" in e}

    def parse_ann(a) -> tuple[int, RefExp]:
        require(a, ("image_id", "bbox"), "annotation")
        entry = by_id.get(a["image_id"])
        if entry is None:
            raise DataFormatError(f"annotation refers to unknown image_id {a['image_id']!r}")
        spans = check_spans(a.get("tokens_positive", [[0, len(entry["caption"])]]), entry["caption"])
        category = None
        if "category_id" in a:
            if a["category_id"] not in cat_name:
                raise DataFormatError(f"annotation refers to unknown category_id {a['category_id']!r}")
            category = cat_name[a["category_id"]]
        ann_id = a.get("original_id")
        return entry["id"], RefExp(
            expression=entry["caption"], bbox=check_xywh(a["bbox"]), filename=entry["file_name"],
            height=entry["height"], width=entry["width"], image_id=entry["original_img_id"],
            tokens_positive=spans, category=category, id=entry["id"],
            ann_id=None if ann_id is None else _int(ann_id, "original_id"),
        )

    anns, n = parse_records(enumerate(data["annotations"]), parse_ann, locator("annotations"), skip_invalid)
    skipped += n
    per_entry: dict[int, list[RefExp]] = {}
    for eid, ref in anns:
        per_entry.setdefault(eid, []).append(ref)
    refs = []
    for entry in entries:
        found = per_entry.get(entry["id"], [])
        if len(found) != 1:
            if skip_invalid:
                skipped += 1
                continue
            raise DataFormatError(f"expression entry id {entry['id']} has {len(found)} annotations; "
                                  "a referring expression needs exactly one", path,
                                  index=position.get(entry["id"]), section="images")
        refs.append(found[0])
    return RefExpSet(refs=refs, categories=[name for _, name in cats], skipped=skipped)


def refexp_dict(refset: RefExpSet, dataset_name: str = "refexp") -> dict:
    """The MDETR-style JSON object for ``refset`` (entry ids default to 1..N)."""
    names = list(refset.categories)
    for ref in refset.refs:
        name = ref.category or FALLBACK_CATEGORY
        if name not in names:
            names.append(name)
    cat_id = {name: k + 1 for k, name in enumerate(names)}
    images, annotations = [], []
    for n, ref in enumerate(refset.refs):
        eid = ref.id if ref.id is not None else n + 1
        spans = [list(s) for s in ref.tokens_positive] or [[0, len(ref.expression)]]
        images.append({"id": eid, "file_name": ref.filename, "height": ref.height, "width": ref.width,
                       "caption": ref.expression, "original_img_id": ref.image_id,
                       "tokens_negative": [[0, len(ref.expression)]], "tokens_positive_eval": [spans],
                       "dataset_name": dataset_name})
        xywh = xyxy_to_xywh(ref.bbox)
        ann = {"id": eid, "image_id": eid, "category_id": cat_id[ref.category or FALLBACK_CATEGORY],
               "bbox": clean_box(xywh), "area": clean_number(xywh[2] * xywh[3]), "iscrowd": 0,
               "tokens_positive": spans}
        if ref.ann_id is not None:
            ann["original_id"] = ref.ann_id
        annotations.append(ann)
    return {"images": images, "annotations": annotations,
            "categories": [{"id": cat_id[name], "name": name} for name in names]}


def write_refexp(path: str | Path, refset: RefExpSet, dataset_name: str = "refexp") -> Path:
    return write_json(path, refexp_dict(refset, dataset_name))
