"""ODVG detection files (Open-GroundingDino's JSON-lines format) as COCO ground truth, for `eval run --dataset odvg`.

One JSON object per line::

    {"filename": "000000391895.jpg", "height": 360, "width": 640,
     "detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label": 3, "category": "motorcycle"}, ...]}}

Parsing and validation are `groundscope.data.odvg.read_odvg`'s (one reader for the whole toolkit); this module
only turns its `Dataset` into the COCO dict the metrics read. Category names come from a label map
``{"0": "person", ...}`` when one is given, else from the instances' ``category`` fields. Images are numbered 1..N
in line order and a category's id is its ODVG ``label``, so results written against the converted file read back
against the same lines. Only detection lines are ground truth for box AP (grounding lines carry no class labels).
"""

from __future__ import annotations

from pathlib import Path

from groundscope.data.coco import coco_dict
from groundscope.data.errors import DataFormatError
from groundscope.data.odvg import read_odvg
from groundscope.evaluate.validate import EvaluationInputError, load_json


def _label_map(label_map: str | Path | dict | None) -> dict[int, str] | None:
    if label_map is None:
        return None
    raw, source = load_json(label_map, "<label map>")
    if not isinstance(raw, dict):
        raise EvaluationInputError(source, 'a label map is a JSON object {"0": "name", ...}')
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        bad = next(k for k in raw if not str(k).lstrip("-").isdigit())
        raise EvaluationInputError(source, f"label {bad!r} is not an integer") from None


def odvg_to_coco(path: str | Path, label_map: str | Path | dict | None = None) -> dict:
    """Convert an ODVG detection file to a COCO instances dict (boxes become xywh, ``area`` = box area).

    Raises:
        EvaluationInputError: a malformed line (named by file and line), a grounding-only file, or no lines.
    """
    path = Path(path)
    if not path.exists():
        raise EvaluationInputError(str(path), "file not found")
    try:
        dataset = read_odvg(path, label_map=_label_map(label_map))
    except DataFormatError as e:
        raise EvaluationInputError(e.location, e.reason) from None
    if not dataset.images:
        raise EvaluationInputError(str(path), "has no lines")
    for n, im in enumerate(dataset.images, start=1):
        if any(inst.label is None for inst in im.instances):
            raise EvaluationInputError(
                str(path), "is a grounding file; box AP needs ODVG detection lines ('detection': {'instances': ...})",
                f"record {n} ({im.filename})",
            )
    coco = coco_dict(dataset)
    for image in coco["images"]:  # ground truth needs no captions; keep the file small
        image.pop("caption", None), image.pop("grounding_caption", None)
    return coco
