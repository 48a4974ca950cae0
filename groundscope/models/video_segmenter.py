"""Video object segmentation with SAM 2's memory (SAM 2 / 2.1, EdgeTAM, SAM 3's tracker), streamed frame by frame.

`load_video_segmenter(name)` -> `VideoSegmenter`; ``session = vs.start()``; ``session.add(k, frame, obj_id,
box=...)`` prompts an object on the session's current frame; ``session.step(frame)`` moves every live object onto
the next frame and returns ``{obj_id: (mask (H, W) bool, score)}``; ``session.remove(obj_id)`` drops one.

The model, its memory attention and its session state are transformers' own (``Sam2VideoModel`` and
``Sam2VideoInferenceSession``, and the EdgeTAM / SAM 3 tracker copies of them), driven through their streaming
API (``model(session, frame=pixels, frame_idx=t)``). What groundscope adds:

- pixels and prompts are prepared without torchvision: the frame through `Sam2Processing` (the port of
  ``Sam2ImageProcessor``), boxes and clicks the way ``Sam2VideoProcessor.process_new_points_or_boxes_for_video_frame``
  turns them into points (a box is two corner points labelled 2 and 3, before any clicks; x scaled by
  size / width, y by size / height), masks the way ``process_new_mask_for_video_frame`` resizes them;
- objects can be added on any frame of the stream, also after others are being tracked. transformers' session
  allows it (``Sam2VideoInferenceSession.obj_id_to_idx`` opens a slot for a new id at any time, and ``forward``
  runs each object on its own), as does the official predictor since its 12/2024 update
  (facebookresearch/sam2 ``sam2/sam2_video_predictor.py`` ``_obj_id_to_idx`` ~118-125: "We always allow adding new
  objects (including after tracking starts)"), so no re-initialisation of the session is needed (Grounded-SAM-2's
  continuous-id demo re-initialises with mask prompts because the predictor it was written for refused new ids).
  A new object is conditioned by transformers' ``forward`` on a scratch session that shares the frame and its
  cached image features, then moved into the live session, so the objects already on that frame are not run a
  second time (`VideoSession.propose` / `accept`);
- memory is bounded: after each frame the session keeps the current frame only, and of each object's past
  outputs only what the memory attention of the next frame reads: the memory features of the last
  ``num_maskmem - 1`` frames and the object pointers of the last ``max_object_pointers_in_encoder - 1`` frames
  (``Sam2VideoModel._gather_memory_frame_outputs`` and ``_get_object_pointers``, the official rule of
  ``sam2/modeling/sam2_base.py`` ``_prepare_memory_conditioned_features`` ~539 and ~612), plus every conditioning
  frame (the prompted ones, which the attention always reads). Full-resolution mask logits, which no later frame
  reads, are dropped at once. tests/test_video_segmenter.py holds the pruned session equal to the unpruned one;
- `remove` re-indexes transformers' per-object state the way the official ``remove_object`` does
  (sam2_video_predictor.py ~867-935), which transformers' session lacks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from groundscope.images import ImageInput, load_image
from groundscope.models.hub import ModelLoadError, fetch, resolve
from groundscope.models.sam2_processing import Sam2Processing
from groundscope.models.segmenter import PRECISIONS, PromptError, check_prompts

# config.json model_type -> (transformers video model class, its inference session class). SAM 3's released folder
# (model_type sam3_video) holds the detector and the tracker; Sam3TrackerVideoModel reads its tracker_config and
# skips the detector's weights (transformers modeling_sam3_tracker_video.py, Sam3TrackerVideoModel.__init__).
VIDEO_FAMILIES: dict[str, tuple[str, str]] = {
    "sam2_video": ("Sam2VideoModel", "Sam2VideoInferenceSession"),
    "edgetam_video": ("EdgeTamVideoModel", "EdgeTamVideoInferenceSession"),
    "sam3_tracker_video": ("Sam3TrackerVideoModel", "Sam3TrackerVideoInferenceSession"),
    "sam3_video": ("Sam3TrackerVideoModel", "Sam3TrackerVideoInferenceSession"),
}
# Folders saved from the image-only classes: the same prompt encoder and decoder, but no memory to track with.
IMAGE_ONLY = {"sam", "sam_hq", "sam2", "edgetam", "sam3_tracker", "sam3"}
# Parameters only the video classes have: a checkpoint without them cannot track (they would be random).
MEMORY_PARTS = ("memory_attention.", "memory_encoder.", "object_pointer_proj.", "memory_temporal_positional_encoding",
                "mask_downsample.", "spatial_perceiver.")
# Per-frame outputs no later frame reads: the mask logits at the model's input size (used once, for the memory
# encoder of their own frame) and the low-resolution logits of tracked frames (forward reuses only those of
# conditioning frames).
_READ_ONCE = ("high_res_masks",)
_POINTER_KEYS = ("object_pointer",)


@dataclass
class Proposal:
    """Objects prompted on one frame and run through the model, not yet tracked (`VideoSession.propose`).

    Attributes:
        frame_index: the frame they were prompted on.
        masks: bool (N, H, W) each object's mask on that frame, at the video's size.
        scores: float32 (N,) each object's score: the sigmoid of the model's object-score logit (whether the object
            is in the frame; its mask is empty when this is <= 0.5).
    """

    frame_index: int
    masks: np.ndarray
    scores: np.ndarray
    _state: Any = field(default=None, repr=False)  # the scratch transformers session holding their memories
    _taken: set = field(default_factory=set, repr=False)


class VideoSegmenter:
    """A SAM 2-family video model: `start` a streaming session per video.

    Attributes:
        model: the transformers video model (eval mode).
        processing: `Sam2Processing` of the folder (input size, mean / std).
        name, family: what it was loaded as and its config's model_type.
        num_maskmem: memory frames the attention reads (the current one included).
        max_pointers: object pointers the attention reads (the current one included).
    """

    def __init__(self, model, processing: Sam2Processing, session_cls, name: str, family: str, device="cpu",
                 dtype=torch.float32):
        self.model = model.eval()
        self.processing = processing
        self.session_cls = session_cls
        self.name = name
        self.family = family
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_maskmem = int(model.num_maskmem)
        self.max_pointers = int(model.config.max_object_pointers_in_encoder)

    @property
    def window(self) -> int:
        """Past frames (before the current one) whose outputs the next frame's memory attention reads."""
        return max(self.num_maskmem, self.max_pointers) - 1

    def start(self, prune: bool = True) -> "VideoSession":
        """A new streaming session. `prune` False keeps every frame and output (transformers' default; memory grows
        with the clip), for checking that pruning changes nothing."""
        return VideoSession(self, prune=prune)

    def new_state(self, height: int | None = None, width: int | None = None):
        """An empty transformers inference session on this model's device and dtype; its feature cache holds one
        frame (the current one), as transformers' default."""
        return self.session_cls(video_height=height, video_width=width, inference_device=self.device,
                                inference_state_device=self.device, video_storage_device=self.device,
                                dtype=self.dtype, max_vision_features_cache_size=1)

    def __repr__(self) -> str:
        return f"VideoSegmenter({self.name!r}, family={self.family}, device={self.device}, dtype={self.dtype})"


class VideoSession:
    """One video streamed through a `VideoSegmenter`, a frame at a time (frames are never held beyond the current one).

    Attributes:
        frame_index: the current frame (-1 before the first).
        size: (H, W) of the video, fixed by its first frame.
        state: transformers' inference session (its per-object memories).
    """

    def __init__(self, segmenter: VideoSegmenter, prune: bool = True):
        self.segmenter = segmenter
        self.prune = prune
        self.frame_index = -1
        self.size: tuple[int, int] | None = None
        self.state = segmenter.new_state()

    @property
    def object_ids(self) -> list[int]:
        """The live objects, in the model's order."""
        return list(self.state.obj_ids)

    # ------------------------------------------------------------------ frames
    @torch.no_grad()
    def _pixels(self, frame: ImageInput) -> torch.Tensor:
        """A frame -> float (1, 3, S, S) model input; the first frame fixes the video's size."""
        im = load_image(frame)
        size = (im.height, im.width)
        if self.size is None:
            self.size = size
            self.state.video_height, self.state.video_width = size
        elif size != self.size:
            raise PromptError(f"frame {self.frame_index + 1} is {im.width}x{im.height} but this video's frames are "
                              f"{self.size[1]}x{self.size[0]}; stream the frames of one video (start a new session "
                              "for another)")
        return self.segmenter.processing.pixel_values([im]).to(self.segmenter.device, self.segmenter.dtype)

    def _decode(self, pred_masks: torch.Tensor, score_logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(N, 1, h, w) low-resolution logits and (N,) object-score logits -> bool (N, H, W) masks, (N,) scores."""
        masks = self.segmenter.processing.masks(pred_masks.float().cpu(), self.size)[:, 0]
        scores = torch.sigmoid(score_logits.float().cpu().reshape(-1))
        return masks.numpy(), scores.numpy().astype(np.float32)

    def step(self, frame: ImageInput) -> dict[int, tuple[np.ndarray, float]]:
        """Move every live object onto the next frame.

        Args:
            frame: the next frame (path, PIL image or (H, W, 3) uint8 array) of the video.
        Returns:
            {obj_id: (mask bool (H, W), score)}: empty when no object is live (the frame is still kept, so objects
            can be prompted on it).
        """
        pixels = self._pixels(frame)
        t = self.frame_index + 1
        if not self.state.obj_ids:
            # transformers' forward refuses a frame without objects; keep it for a prompt on it
            self.state.add_new_frame(pixels, t)
            self.frame_index = t
            self._prune()
            return {}
        with torch.inference_mode():
            out = self.segmenter.model(self.state, frame=pixels, frame_idx=t)
        self.frame_index = t
        masks, scores = self._decode(out.pred_masks, out.object_score_logits)
        self._prune()
        return {int(i): (masks[k], float(scores[k])) for k, i in enumerate(out.object_ids)}

    # ------------------------------------------------------------------ prompts
    def _prompt_frame(self, frame_index: int, frame: ImageInput | None) -> None:
        """Make `frame_index` the frame prompts go on: the current one, or a later one while no object is live."""
        if frame_index == self.frame_index and frame_index in (self.state.processed_frames or {}):
            if frame is not None:
                self._check_size(frame)
            return
        if frame_index < self.frame_index:
            raise PromptError(f"frame {frame_index} is behind the session, which is on frame {self.frame_index}: it "
                              "streams forward and keeps no older frame; prompt objects on the current frame")
        if self.state.obj_ids:
            raise PromptError(f"frame {frame_index} is ahead of the session, which is on frame {self.frame_index} "
                              f"with live objects {self.object_ids}; session.step(frame) up to it first")
        if frame is None:
            raise PromptError(f"frame {frame_index} is new to the session: pass its image as `frame`")
        pixels = self._pixels(frame)
        self.state.add_new_frame(pixels, frame_index)
        self.frame_index = frame_index
        self._prune()

    def _check_size(self, frame: ImageInput) -> None:
        w, h = load_image(frame).size
        if self.size is not None and (h, w) != self.size:
            raise PromptError(f"the frame given is {w}x{h} but this video's frames are {self.size[1]}x{self.size[0]}")

    def _point_inputs(self, box, points, labels) -> dict[str, torch.Tensor]:
        """One object's box and / or clicks in the model's frame, as Sam2VideoProcessor stores them: point_coords
        float32 (1, 1, P, 2), point_labels (1, 1, P) (2 and 3 for a box's corners, first)."""
        h, w = self.size
        size_h, size_w = self.segmenter.processing.size
        coords, labs = [], []
        label_dtype = torch.int32  # the processor's box labels; its click labels are int64 and promote the cat
        if box is not None:
            b = torch.tensor(np.asarray(box, np.float64).reshape(1, 2, 2).tolist(), dtype=torch.float32)
            b[..., 0] = b[..., 0] * (size_w / w)
            b[..., 1] = b[..., 1] * (size_h / h)
            coords.append(b)
            labs.append(torch.tensor([[2, 3]], dtype=torch.int32))
        if points is not None:
            p = torch.tensor(np.asarray(points, np.float64).reshape(1, -1, 2).tolist(), dtype=torch.float32)
            p[..., 0] = p[..., 0] * (size_w / w)
            p[..., 1] = p[..., 1] * (size_h / h)
            coords.append(p)
            labs.append(torch.tensor(np.asarray(labels, np.int64).reshape(1, -1), dtype=torch.int64))
            label_dtype = torch.int64
        return {"point_coords": torch.cat(coords, dim=1)[None],
                "point_labels": torch.cat(labs, dim=1).to(label_dtype)[None]}

    def _mask_input(self, mask: np.ndarray) -> torch.Tensor:
        """A bool (H, W) mask -> float (1, 1, S, S), resized as Sam2VideoProcessor.process_new_mask_for_video_frame."""
        m = torch.tensor(np.asarray(mask, bool), dtype=torch.bool)[None, None].float()
        size = self.segmenter.processing.size
        if tuple(m.shape[-2:]) != size:
            m = F.interpolate(m, size=size, align_corners=False, mode="bilinear", antialias=True)
            m = (m >= 0.5).float()
        return m

    def propose(self, frame_index: int, frame: ImageInput | None = None, boxes=None, points=None,
                point_labels=None, masks=None) -> Proposal:
        """Run N prompted objects on the current frame without tracking them yet (`accept` tracks some of them).

        Args:
            frame_index: the session's current frame, or (while no object is live) a later one.
            frame: its image; needed only when the session has not seen that frame.
            boxes: (N, 4) xyxy pixels, one object each; and / or
            points: N groups of (x, y) clicks (with boxes, one group per box), point_labels N groups of 1 / 0;
            masks: bool (N, H, W), one object each (not with boxes or points).
        Returns:
            `Proposal` with each object's mask and score on the frame.
        """
        self._prompt_frame(frame_index, frame)
        prompts = self._prompts(boxes, points, point_labels, masks)
        h, w = self.size
        if not prompts:
            return Proposal(frame_index, np.zeros((0, h, w), bool), np.zeros((0,), np.float32))
        # A scratch session sharing this frame and its cached features: transformers' forward conditions the new
        # objects on it exactly as it would in the live session (each object runs on its own there too).
        scratch = self.segmenter.new_state(h, w)
        scratch.processed_frames = {frame_index: self.state.processed_frames[frame_index]}
        scratch.cache = self.state.cache
        for k, (kind, value) in enumerate(prompts):
            idx = scratch.obj_id_to_idx(k)
            if kind == "mask":
                scratch.add_mask_inputs(idx, frame_index, value)
            else:
                scratch.add_point_inputs(idx, frame_index, value)
        scratch.obj_with_new_inputs = list(range(len(prompts)))
        with torch.inference_mode():
            out = self.segmenter.model(scratch, frame_idx=frame_index)
        got, scores = self._decode(out.pred_masks, out.object_score_logits)
        return Proposal(frame_index, got, scores, scratch)

    def accept(self, proposal: Proposal, indices: Sequence[int], obj_ids: Sequence[int]) -> None:
        """Track the proposal's objects `indices` as `obj_ids` from its frame on. An id that is live already is
        restarted from the new prompt (its old memory is dropped)."""
        if proposal.frame_index != self.frame_index:
            raise PromptError(f"the proposal was made on frame {proposal.frame_index} but the session is on frame "
                              f"{self.frame_index}; accept proposals before the next step")
        indices, obj_ids = [int(i) for i in indices], [int(i) for i in obj_ids]
        if len(indices) != len(obj_ids) or len(set(obj_ids)) != len(obj_ids):
            raise PromptError(f"give one distinct obj_id per accepted object: indices {indices}, obj_ids {obj_ids}")
        for k, obj_id in zip(indices, obj_ids):
            if not 0 <= k < len(proposal.masks) or k in proposal._taken:
                raise PromptError(f"object {k} of the proposal does not exist or is tracked already")
            proposal._taken.add(k)
            if obj_id in self.state._obj_id_to_idx:
                self.remove(obj_id)
            idx = self.state.obj_id_to_idx(obj_id)
            src = proposal._state
            self.state.point_inputs_per_obj[idx] = src.point_inputs_per_obj[k]
            self.state.mask_inputs_per_obj[idx] = src.mask_inputs_per_obj[k]
            self.state.frames_tracked_per_obj[idx] = src.frames_tracked_per_obj[k]
            # clone: the scratch session's memory features are slices of one batch of all the proposed objects
            self.state.output_dict_per_obj[idx] = {
                key: {f: {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in out.items()}
                      for f, out in outs.items()}
                for key, outs in src.output_dict_per_obj[k].items()}
        self._prune()

    def add(self, frame_index: int, frame: ImageInput | None, obj_id: int | Sequence[int], box=None, points=None,
            point_labels=None, mask=None) -> dict[int, tuple[np.ndarray, float]]:
        """Prompt one object (or several: a list of ids with (N, 4) boxes, N click groups or (N, H, W) masks) on the
        current frame and track it from there.

        Args:
            frame_index: the session's current frame, or the first frame to stream (while no object is live).
            frame: that frame's image (None if the session has it: it was the last frame stepped).
            obj_id: the object's id (any int; a live id restarts that object from this prompt).
            box: (4,) xyxy pixels; points: (P, 2) clicks with point_labels (P,) 1 / 0 (default all 1);
            mask: bool (H, W). Give a box and / or clicks, or a mask.
        Returns:
            {obj_id: (mask bool (H, W), score)} of the prompted objects on this frame.
        """
        many = not isinstance(obj_id, (int, np.integer))
        ids = [int(i) for i in obj_id] if many else [int(obj_id)]
        if not many:
            box = None if box is None else [box]
            points = None if points is None else [points]
            point_labels = None if point_labels is None else [point_labels]
            mask = None if mask is None else np.asarray(mask)[None]
        proposal = self.propose(frame_index, frame, boxes=box, points=points, point_labels=point_labels, masks=mask)
        if len(proposal.masks) != len(ids):
            raise PromptError(f"{len(ids)} obj_ids for {len(proposal.masks)} prompts; give one prompt per object")
        self.accept(proposal, range(len(ids)), ids)
        return {i: (proposal.masks[k], float(proposal.scores[k])) for k, i in enumerate(ids)}

    def _prompts(self, boxes, points, point_labels, masks) -> list[tuple[str, Any]]:
        """Checked prompts -> per object ("points", point inputs) or ("mask", mask input)."""
        h, w = self.size
        if masks is not None:
            if boxes is not None or points is not None:
                raise PromptError("give an object a mask or a box / clicks, not both")
            arr = np.asarray(masks, bool)
            if arr.ndim != 3 or arr.shape[1:] != (h, w):
                raise PromptError(f"masks must be (N, {h}, {w}) for this {w}x{h} video, got shape {arr.shape}")
            empty = [i for i in range(len(arr)) if not arr[i].any()]
            if empty:
                raise PromptError(f"mask prompt(s) {empty} are empty; give each object at least one pixel")
            return [("mask", self._mask_input(m)) for m in arr]
        box_arr = None if boxes is None else np.asarray(boxes, np.float64).reshape(-1, 4)
        pts = None if points is None else [np.asarray(p, np.float64).reshape(-1, 2) for p in points]
        if pts is not None and any(len(p) == 0 for p in pts):
            raise PromptError("a click group is empty; give at least one (x, y) per object")
        if point_labels is None:
            labels = None if pts is None else [np.ones(len(p), np.int64) for p in pts]
        else:
            if pts is None:
                raise PromptError("point_labels were given without points; pass points=[[(x, y), ...], ...]")
            labels = [np.asarray(lab, np.int64).reshape(-1) for lab in point_labels]
            if len(labels) != len(pts) or any(len(a) != len(b) for a, b in zip(labels, pts)):
                raise PromptError("point_labels must give one label (1 on the object, 0 background) per click")
            if any(set(lab.tolist()) - {0, 1} for lab in labels):
                raise PromptError("point labels must be 1 (on the object) or 0 (background)")
        if box_arr is not None and pts is not None and len(pts) != len(box_arr):
            raise PromptError(f"{len(pts)} click groups for {len(box_arr)} boxes; give one group per box")
        check_prompts(w, h, box_arr, pts)
        n = len(box_arr) if box_arr is not None else (len(pts) if pts is not None else 0)
        return [("points", self._point_inputs(None if box_arr is None else box_arr[i],
                                              None if pts is None else pts[i],
                                              None if labels is None else labels[i])) for i in range(n)]

    # ------------------------------------------------------------------ objects
    def remove(self, obj_id: int) -> None:
        """Stop tracking `obj_id`; the other objects keep their ids and memories."""
        st = self.state
        if obj_id not in st._obj_id_to_idx:
            raise PromptError(f"object {obj_id} is not tracked; live objects: {self.object_ids}")
        gone = st._obj_id_to_idx[obj_id]
        kept = [i for i in st.obj_ids if i != obj_id]
        new_of_old = {old: new for new, old in enumerate(k for k in range(len(st.obj_ids)) if k != gone)}
        for name in ("point_inputs_per_obj", "mask_inputs_per_obj", "output_dict_per_obj", "frames_tracked_per_obj"):
            container = getattr(st, name)
            moved = {new_of_old[k]: v for k, v in container.items() if k != gone}
            container.clear()
            container.update(moved)
        st._obj_id_to_idx.clear()
        st._obj_idx_to_id.clear()
        for idx, i in enumerate(kept):
            st._obj_id_to_idx[i] = idx
            st._obj_idx_to_id[idx] = i
        st.obj_ids = kept
        st.obj_with_new_inputs = [i for i in st.obj_with_new_inputs if i != obj_id]

    # ------------------------------------------------------------------ memory
    def _prune(self) -> None:
        """Drop what the next frame's forward does not read (see the module docstring); no-op with prune=False."""
        if not self.prune:
            return
        st, t = self.state, self.frame_index
        for f in [f for f in (st.processed_frames or {}) if f != t]:
            del st.processed_frames[f]
        # frame t + 1 reads the memory features of frames t + 2 - num_maskmem .. t and the object pointers of
        # frames t + 2 - max_pointers .. t (transformers' _gather_memory_frame_outputs / _get_object_pointers)
        mem_from = t + 2 - self.segmenter.num_maskmem
        ptr_from = t + 2 - self.segmenter.max_pointers
        for idx, outs in st.output_dict_per_obj.items():
            tracked = outs["non_cond_frame_outputs"]
            for f in list(tracked):
                if f < mem_from and f < ptr_from:
                    del tracked[f]
                elif f < mem_from:
                    tracked[f] = {k: v for k, v in tracked[f].items() if k in _POINTER_KEYS}
                else:
                    for k in _READ_ONCE + ("pred_masks",):
                        tracked[f].pop(k, None)
            for out in outs["cond_frame_outputs"].values():
                for k in _READ_ONCE:
                    out.pop(k, None)
            # prompts and the tracked-frame marks are read only on the frame they are for (the current one)
            for per_frame in (st.point_inputs_per_obj[idx], st.mask_inputs_per_obj[idx], st.frames_tracked_per_obj[idx]):
                for f in [f for f in per_frame if f < t]:
                    del per_frame[f]

    def stored_frames(self) -> dict[str, int]:
        """What the session holds now: frames of pixels, and per-frame outputs over all objects (tracked and
        conditioning). Bounded by 1, objects x window and the prompted frames when pruning."""
        st = self.state
        return {"pixels": len(st.processed_frames or {}),
                "tracked_outputs": sum(len(o["non_cond_frame_outputs"]) for o in st.output_dict_per_obj.values()),
                "conditioning_outputs": sum(len(o["cond_frame_outputs"]) for o in st.output_dict_per_obj.values())}


def load_video_segmenter(name_or_path: str | os.PathLike = "sam2.1-hiera-tiny", device: str | torch.device = "cpu",
                         precision: str = "fp32", revision: str | None = None) -> VideoSegmenter:
    """Load a SAM 2-family model with its video memory.

    Args:
        name_or_path: a registry name of kind "segmenter" (sam2.1-hiera-tiny/small/base-plus/large, edgetam, sam3),
            a hub id, or a local folder saved from ``Sam2VideoModel`` / ``EdgeTamVideoModel`` /
            ``Sam3TrackerVideoModel`` (the released SAM 2.1, EdgeTAM and SAM 3 folders hold these) with the
            ``preprocessor_config.json`` of its processor.
        device: torch device.
        precision: "fp32", "bf16" or "fp16" (weights, activations and the session state).
    Raises:
        ModelLoadError: unknown name, not cached while offline, unreachable hub, a model without video memory.
    """
    import transformers
    from transformers import AutoConfig

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    source, display = resolve(name_or_path, kind="segmenter")
    local = fetch(source, display, revision, kind="segmenter")
    try:
        config = AutoConfig.from_pretrained(local)
    except Exception as e:
        raise ModelLoadError(f"segmenter '{display}': cannot read its config.json in {local} "
                             f"({type(e).__name__}: {e}); pass a directory saved with save_pretrained") from e
    family = VIDEO_FAMILIES.get(config.model_type)
    if family is None:
        what = ("an image-only" if config.model_type in IMAGE_ONLY else "not a SAM 2-family")
        raise ModelLoadError(f"segmenter '{display}' is {what} '{config.model_type}' model, with no video memory to "
                             f"track with; track with a {', '.join(sorted(VIDEO_FAMILIES))} checkpoint "
                             "(--segmenter sam2.1-hiera-tiny, edgetam or sam3), or drop --segmenter to track "
                             "detections by box overlap")
    model_cls = getattr(transformers, family[0])
    try:
        model, info = model_cls.from_pretrained(local, dtype=PRECISIONS[precision], output_loading_info=True)
    except Exception as e:
        raise ModelLoadError(f"segmenter '{display}': weights in {local} do not load as {family[0]} "
                             f"({type(e).__name__}: {e})") from e
    missing = [k for k in info.get("missing_keys", []) if any(part in k for part in MEMORY_PARTS)]
    if missing:
        raise ModelLoadError(f"segmenter '{display}': {local} lacks {len(missing)} of {family[0]}'s memory weights "
                             f"(e.g. {missing[0]}): it was saved from an image-only model; save the folder from "
                             f"{family[0]} (the hub's SAM 2.1 / EdgeTAM / SAM 3 folders hold them)")
    try:
        processing = Sam2Processing.from_folder(local)
    except Exception as e:
        raise ModelLoadError(f"segmenter '{display}': no usable preprocessor_config.json in {local} "
                             f"({type(e).__name__}: {e}); save the processor next to the weights") from e
    model.to(device)
    session_cls = getattr(transformers, family[1], None)
    if session_cls is None:  # not every session class is exported at the top level
        module = __import__(model_cls.__module__, fromlist=[family[1]])
        session_cls = getattr(module, family[1])
    return VideoSegmenter(model, processing, session_cls, display, config.model_type, device=device,
                          dtype=PRECISIONS[precision])
