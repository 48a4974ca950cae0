"""A region given on one frame of a video, carried through it by a SAM 2-family video model, and the frames DAM
reads picked as Describe Anything's video demo picks them.

The official video pipeline (NVlabs/describe-anything ``demo_video.py`` ``apply_sam2`` ~57-106 and
``describe_video`` ~176-190): the region is prompted on one frame, SAM 2 propagates it forward through the video
(``propagate_in_video``; a mask is its logits > 0), the frames whose mask is not empty are kept, and 8 of them are
taken uniformly, ``np.linspace(0, len(non_empty) - 1, 8, dtype=int)``; each taken frame's focal prompt is made from
its own mask. Prompts as the official code gives them: a box is SAM 2's box prompt, points are positive clicks, a
scribble gives 8 of its pixels drawn with seed 0 (``describe.regions.scribble_points``), and a mask is SAM 2's mask
prompt (the demo turns a drawn mask into 8 clicks; a mask given whole is used as SAM 2's own mask input).

Two departures, both listed in docs/fidelity.md: with 8 or fewer non-empty frames the demo passes them all (fewer
frames than the prompt's 8 image tokens); here they are repeated by the same linspace to the model's frame count,
as ``examples/dam_video_with_sam2.py`` samples a short video. And the frames before the prompted one are not
propagated (the demo always prompts frame 0; SAM 2 propagates forward by default), so they are never described.

Memory: the video is streamed twice, never held (the first pass propagates and keeps each frame's mask as RLE,
the second reads back only the frames picked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from groundscope import masks as mask_ops
from groundscope.describe.focal import RegionError
from groundscope.describe.regions import region_mask
from groundscope.describe.video import sample_indices
from groundscope.track.frames import open_video

OBJ = 1  # the one object's id in the video session


@dataclass
class Propagated:
    """A region carried through a video.

    Attributes:
        frames: the picked frames, (H, W, 3) uint8, in time order.
        indices: their indices in the source video.
        masks: bool (H, W) the region's mask on each picked frame.
        boxes: float (len(indices), 4) each picked mask's tight xyxy box (ends exclusive, as COCO's toBbox).
        total: the video's frame count.
        visible: the indices of every frame on which the mask is not empty.
    """

    frames: list[np.ndarray]
    indices: list[int]
    masks: list[np.ndarray]
    boxes: np.ndarray
    total: int
    visible: list[int]


def propagate_region(video: Any, region: Any, segmenter, frame: int = 0, num_frames: int = 8,
                     name: str = "region", min_crop: int = 48,
                     progress: Callable[[int], None] | None = None) -> Propagated:
    """Prompt `region` on frame `frame` of `video`, propagate it with `segmenter`, pick `num_frames` frames.

    Args:
        video: a video file, a folder of frames, a list of frames or a (T, H, W, 3) array (`track.frames`).
        region: one region (dict / `Region`: mask, box, points or scribble) on frame `frame`.
        segmenter: a `VideoSegmenter` (`load_video_segmenter`).
        frame: the 0-based frame the region is on.
        num_frames: frames to pick (the DAM model's, 8).
        name: the region's name in errors; min_crop: the focal crop's minimum (checks the prompt frame's mask).
        progress: called with the frame index after each propagated frame.
    Returns:
        `Propagated`.
    Raises:
        RegionError: a bad region, a frame past the end of the video, or a mask that is empty on every frame.
        VideoReadError (a TrackError): an unreadable video.
    """
    if frame < 0:
        raise RegionError(f"{name}: frame {frame} is negative; give the 0-based index of the frame the region is on")
    frames = open_video(video)
    session = segmenter.start()
    rles: dict[int, dict] = {}
    total = 0
    for t, image in enumerate(frames):
        total = t + 1
        if t < frame:
            continue  # nothing is tracked yet: the session starts on the prompted frame
        if t == frame:
            mask = _prompt(session, t, image, region, name, min_crop)
        else:
            mask = session.step(image).get(OBJ, (None, 0.0))[0]
        if mask is not None and mask.any():
            rles[t] = mask_ops.encode(mask)[0]
        if progress is not None:
            progress(t)
    if frame >= total:
        raise RegionError(f"{name}: frame {frame} is past the end of the video ({total} frames); give a frame index "
                          f"below {total}")
    visible = sorted(rles)
    picked = [visible[i] for i in sample_indices(len(visible), num_frames)]
    wanted = set(picked)
    kept: dict[int, np.ndarray] = {}
    for t, image in enumerate(frames):
        if t in wanted:
            kept[t] = np.asarray(image)
        if t >= picked[-1]:
            break
    chosen = [rles[t] for t in picked]
    return Propagated([kept[t] for t in picked], picked, list(mask_ops.decode(chosen)), mask_ops.to_boxes(chosen),
                      total, visible)


def _prompt(session, t: int, image: np.ndarray, region: Any, name: str, min_crop: int) -> np.ndarray:
    """The region's mask on its own frame, from SAM 2 prompted with it (box, clicks or mask)."""
    hw = image.shape[:2]

    def segment(box=None, points=None):
        out = session.add(t, image, OBJ, box=box, points=points)
        return out[OBJ][0]

    given = region.get("mask") if isinstance(region, dict) else getattr(region, "mask", None)
    if given is None:
        mask, _, _ = region_mask(hw, region, name, min_crop, segment)  # box / points / scribble -> SAM 2's mask
        return mask
    mask, _, _ = region_mask(hw, region, name, min_crop)  # reads and checks the given mask
    out = session.add(t, image, OBJ, mask=mask)[OBJ][0]
    if not out.any():
        raise RegionError(f"{name}: the segmenter gives an empty mask for the mask given on frame {t}; give a larger "
                          "mask or a box")
    return out
