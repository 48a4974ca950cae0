"""ODVG detection files (Open-GroundingDino's JSON-lines format) as COCO ground truth, for `eval run --dataset odvg`.

One JSON object per line::

    {"filename": "000000391895.jpg", "height": 360, "width": 640,
     "detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label": 3, "category": "motorcycle"}, ...]}}

Category names come from a label map ``{"0": "person", "1": "bicycle", ...}`` when one is given (mmdetection's
``label_map_file``), else from the instances' ``category`` fields. Images are numbered 1..N in line order and a
category's id is its ``label``, so results written against the converted file read back against the same lines.
Only the detection part is read: this is the ground truth for box AP (grounding lines have no class labels).
"""

from __future__ import annotations

import json
from pathlib import Path

from groundscope.evaluate.validate import EvaluationInputError, is_id, is_number, load_json


def odvg_to_coco(path: str | Path, label_map: str | Path | dict | None = None) -> dict:
    """Convert an ODVG detection file to a COCO instances dict (boxes become xywh, ``area`` = box area).

    Raises:
        EvaluationInputError: a line that is not JSON or has no ``detection.instances``, a bad box, a label
        without a name, naming the file and the line.
    """
    path = Path(path)
    names: dict[int, str] = {}
    if label_map is not None:
        raw, source = load_json(label_map, "<label map>")
        if not isinstance(raw, dict):
            raise EvaluationInputError(source, 'a label map is a JSON object {"0": "name", ...}')
        for key, name in raw.items():
            try:
                names[int(key)] = str(name)
            except ValueError:
                raise EvaluationInputError(source, f"label {key!r} is not an integer") from None
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise EvaluationInputError(str(path), "file not found") from None
    images, annotations, seen_labels = [], [], {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvaluationInputError(str(path), f"not valid JSON: {e.msg}", where) from None
        instances = rec.get("detection", {}).get("instances") if isinstance(rec, dict) else None
        if not isinstance(instances, list) or not isinstance(rec.get("filename"), str):
            raise EvaluationInputError(
                str(path), "an ODVG detection line needs 'filename' and 'detection': {'instances': [...]}", where, rec
            )
        image_id = len(images) + 1
        images.append(
            {"id": image_id, "file_name": rec["filename"], "height": rec.get("height"), "width": rec.get("width")}
        )
        for inst in instances:
            if not isinstance(inst, dict):
                raise EvaluationInputError(str(path), "an instance must be a JSON object", where, inst)
            box, label = inst.get("bbox"), inst.get("label")
            if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
                raise EvaluationInputError(str(path), "an instance needs 'bbox': [x1, y1, x2, y2]", where, inst)
            if box[2] < box[0] or box[3] < box[1]:
                raise EvaluationInputError(
                    str(path), "box has x2 < x1 or y2 < y1 ('bbox' is [x1, y1, x2, y2])", where, inst
                )
            if not is_id(label):
                raise EvaluationInputError(str(path), "an instance needs an integer 'label'", where, inst)
            if isinstance(inst.get("category"), str):
                seen_labels.setdefault(label, inst["category"])
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    if not images:
        raise EvaluationInputError(str(path), "has no lines")
    for label, name in seen_labels.items():
        names.setdefault(label, name)
    missing = sorted({a["category_id"] for a in annotations} - set(names))
    if missing:
        raise EvaluationInputError(
            str(path), f"labels {missing[:10]} have no name: pass a label map or give instances a 'category'"
        )
    categories = [{"id": label, "name": names[label]} for label in sorted(names)]
    return {"images": images, "annotations": annotations, "categories": categories}
