"""The labelled dataset on disk: COCO instances JSON or ODVG detection JSON lines (+ label map).

Both go through the toolkit's own writers (`groundscope.data.coco.coco_dict`, `groundscope.data.odvg.
detection_entry`), so a labelled file reads straight back with `read_coco` / `read_odvg` and trains with
``groundscope train``; the only addition is each box's ``score`` (2 decimals for boxes as everywhere in
`groundscope.data`, 5 for scores as in ``groundscope detect``'s JSON):

- COCO: ``images`` (id 1..N in input order, ``file_name`` relative to the output file's folder, which is where
  ``groundscope train`` looks by default), ``categories`` ``{"id": k + 1, "name": classes[k]}`` in the given
  order, ``annotations`` with ``bbox`` xywh, ``area``, ``iscrowd`` 0, ``category_id`` and ``score``, and an
  ``info`` block naming the model and thresholds.
- ODVG: one ``{"filename", "height", "width", "detection": {"instances": [{"bbox": xyxy, "label": k,
  "category": classes[k], "score"}]}}`` line per image, and ``label_map.json`` ``{"0": classes[0], ...}``
  (default: beside the output file, as ``groundscope convert`` writes it).

With masks (``groundscope label --masks``) each COCO annotation also has ``segmentation`` (compressed RLE, or
polygons with ``--polygons``; a mask that traces to no polygon stays RLE) and its ``area`` is the mask's pixel
count, as in COCO's own files; each ODVG instance gets ``mask`` (compressed RLE; ODVG has no mask field of its
own, and groundscope's ODVG reader ignores extra keys).

Boxes that round to zero width or height are left out: both readers reject them, and a box under 0.01 px is
no label. Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from groundscope.data.coco import coco_dict
from groundscope.data.jsonio import dumps
from groundscope.data.odvg import detection_entry, label_map_dict
from groundscope.data.records import Dataset, ImageRecord, Instance, clean_number

FORMATS = ("coco", "odvg")
SCORE_DIGITS = 5


def default_label_map_path(out: str | Path) -> Path:
    return Path(out).with_name("label_map.json")


def keeps_box(box: Sequence[float]) -> bool:
    """Whether ``box`` (xyxy) still has width and height once rounded the way the writers round it."""
    x1, y1, x2, y2 = (clean_number(v) for v in box)
    return x2 > x1 and y2 > y1 and clean_number(box[2] - box[0]) > 0 and clean_number(box[3] - box[1]) > 0


def _dataset(images: Sequence[dict[str, Any]], classes: Sequence[str]
             ) -> tuple[Dataset, list[list[float]], list[list[dict | None]]]:
    """Labelled images ``{"file_name", "width", "height", "detections"}`` -> a `Dataset`, each kept instance's
    rounded score and its mask (RLE or None; the format-neutral records have neither field)."""
    dataset = Dataset(categories=list(classes))
    scores: list[list[float]] = []
    masks: list[list[dict | None]] = []
    for im in images:
        record = ImageRecord(filename=im["file_name"], height=int(im["height"]), width=int(im["width"]))
        kept, kept_masks = [], []
        for d in im["detections"]:
            if keeps_box(d["box"]):
                k = int(d["class_id"])
                record.instances.append(Instance(bbox=tuple(d["box"]), label=k, category=classes[k]))
                kept.append(round(float(d["score"]), SCORE_DIGITS))
                kept_masks.append(d.get("mask"))
        dataset.images.append(record)
        scores.append(kept)
        masks.append(kept_masks)
    return dataset, scores, masks


def _segmentation(rle: dict, polygons: bool):
    """A mask as COCO writes it: the RLE, or its polygons (RLE when it traces to none)."""
    if polygons:
        from groundscope.masks import decode_one, to_polygons

        traced = to_polygons(decode_one(rle))
        if traced:
            return traced
    return rle


def coco_labels(images: Sequence[dict[str, Any]], classes: Sequence[str], info: dict[str, Any],
                polygons: bool = False) -> dict[str, Any]:
    """The COCO JSON object (module docstring)."""
    from groundscope.masks import area

    dataset, scores, masks = _dataset(images, classes)
    coco = coco_dict(dataset)
    # coco_dict emits annotations image by image, instance by instance: the same order as `scores` and `masks`.
    flat_masks = [m for per in masks for m in per]
    for ann, score, rle in zip(coco["annotations"], (s for per in scores for s in per), flat_masks, strict=True):
        ann["score"] = score
        if rle is not None:
            ann["segmentation"] = _segmentation(rle, polygons)
            ann["area"] = float(area([rle])[0])
    return {"info": info, **coco}


def odvg_labels(images: Sequence[dict[str, Any]], classes: Sequence[str]) -> tuple[list[dict], dict[str, str]]:
    """The ODVG detection records and the label map (module docstring)."""
    dataset, scores, masks = _dataset(images, classes)
    rows = []
    for record, per, per_mask in zip(dataset.images, scores, masks, strict=True):
        entry = detection_entry(record, dataset)
        for inst, score, rle in zip(entry["detection"]["instances"], per, per_mask, strict=True):
            inst["score"] = score
            if rle is not None:
                inst["mask"] = rle
        rows.append(entry)
    return rows, label_map_dict(dataset)


def _atomic_write(path: Path, lines: Iterable[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_labels(
    out: str | Path,
    fmt: str,
    images: Sequence[dict[str, Any]],
    classes: Sequence[str],
    info: dict[str, Any],
    label_map: str | Path | None = None,
    polygons: bool = False,
) -> list[Path]:
    """Write the labelled images as ``fmt`` ("coco" or "odvg"); returns the files written. `polygons` writes
    COCO masks as polygons.

    Same images in the same order give the same bytes (compact JSON, fixed key order, ``\\n`` line ends).
    """
    out = Path(out)
    if fmt == "coco":
        return [_atomic_write(out, [dumps(coco_labels(images, classes, info, polygons))])]
    if fmt == "odvg":
        rows, lmap = odvg_labels(images, classes)
        lm_path = Path(label_map) if label_map is not None else default_label_map_path(out)
        # The label map first: once the records file exists, everything it refers to exists too.
        _atomic_write(lm_path, [dumps(lmap)])
        return [_atomic_write(out, (dumps(r) for r in rows)), lm_path]
    raise ValueError(f"unknown label format {fmt!r}; use one of {', '.join(FORMATS)}")
