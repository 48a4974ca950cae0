"""Sliced inference for small objects in large images (SAHI's method): tiles, merge rules, the sliced tasks.

    tiles.py   `SliceSpec` (the settings, checked), `tile_boxes` (where the tiles lie), `parse_slices` ("640x640")
    merge.py   `shift_detections` (tile pixels -> image pixels, masks too), `merge_detections` (NMS / greedy NMM)
    api.py     `sliced_detect`, `sliced_ground`, `sliced_refer` over any detector

The package knows no model: it sits in the ground layer (detections, images, masks below it), so the detector's
methods (``detect(..., slices=(640, 640))``) and every entry point can use it. docs/sliced.md describes it.
"""

from groundscope.slicing.api import plan, sliced_detect, sliced_ground, sliced_refer, tile_count
from groundscope.slicing.merge import match_matrix, merge_detections, shift_detections
from groundscope.slicing.tiles import MERGES, SliceError, SliceSpec, parse_slices, slice_spec, tile_boxes

__all__ = ["MERGES", "SliceError", "SliceSpec", "match_matrix", "merge_detections", "parse_slices", "plan",
           "shift_detections", "slice_spec", "sliced_detect", "sliced_ground", "sliced_refer", "tile_boxes",
           "tile_count"]
