"""Sliced inference for small objects in large images (SAHI's method): tiles, merge rules, the sliced tasks.

    tiles.py   `SliceSpec` (the settings, checked), `tile_boxes` (where the tiles lie), `parse_slices` ("640x640")
    merge.py   `shift_detections` (tile pixels -> image pixels, masks too), `merge_detections` (NMS / greedy NMM)
    api.py     `sliced_detect`, `sliced_ground`, `sliced_refer` over any detector

The package knows no model: it sits in the ground layer (detections, images, masks below it), so the detector's
methods (``detect(..., slices=(640, 640))``) and every entry point can use it. docs/sliced.md describes it.
"""

from importlib import import_module

# Names load from their module on first use, so `from groundscope.slicing.tiles import ...` (the CLI's option
# texts) does not pull in images / torch.
_EXPORTS = {
    **dict.fromkeys(("plan", "sliced_detect", "sliced_ground", "sliced_refer", "tile_count"), "groundscope.slicing.api"),
    **dict.fromkeys(("match_matrix", "merge_detections", "shift_detections"), "groundscope.slicing.merge"),
    **dict.fromkeys(("MERGES", "OPTION_HELP", "SliceError", "SliceSpec", "parse_slices", "slice_spec",
                     "spec_from_options", "tile_boxes"), "groundscope.slicing.tiles"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'groundscope.slicing' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
