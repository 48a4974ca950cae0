"""Data: annotation formats (COCO, ODVG, RefCOCO/MDETR, GroundingCap), conversion, the synthetic world.

Readers return format-neutral records (`Dataset` of `ImageRecord`/`Instance`, or `RefExpSet` of `RefExp`)
with absolute-pixel xyxy boxes; writers take them back to files. Malformed input raises `DataFormatError`
naming the file and line (JSON-lines) or ``section[index]`` (JSON), or is skipped and counted with
``skip_invalid=True``.
"""

from groundscope.data.coco import read_coco, write_coco
from groundscope.data.convert import FORMATS, convert, infer_format, read_any, write_any
from groundscope.data.errors import DataFormatError
from groundscope.data.groundingcap import read_groundingcap, write_groundingcap
from groundscope.data.odvg import (
    read_label_map,
    read_odvg,
    write_label_map,
    write_odvg_detection,
    write_odvg_grounding,
)
from groundscope.data.records import Dataset, ImageRecord, Instance, RefExp, RefExpSet
from groundscope.data.refexp import read_refexp, write_refexp
from groundscope.data.synth import generate_world

__all__ = [
    "FORMATS",
    "DataFormatError",
    "Dataset",
    "ImageRecord",
    "Instance",
    "RefExp",
    "RefExpSet",
    "convert",
    "generate_world",
    "infer_format",
    "read_any",
    "read_coco",
    "read_groundingcap",
    "read_label_map",
    "read_odvg",
    "read_refexp",
    "write_any",
    "write_coco",
    "write_groundingcap",
    "write_label_map",
    "write_odvg_detection",
    "write_odvg_grounding",
    "write_refexp",
]
