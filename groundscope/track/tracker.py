"""`Tracker`: detect what the text names, then follow each object through the video with one id and one class.

Segmenter mode (a `VideoSegmenter` given), per frame t:

1. every live track is propagated onto frame t by SAM 2's memory (`VideoSession.step`); a track whose mask is empty
   or whose object score is under `lost_score` is lost on this frame;
2. on keyframes (frame 0 and every `every` frames after) the detector runs; its boxes (over `box_threshold`, after a
   class-agnostic NMS so two class names on one object give one box) are segmented on frame t by the same model
   (`VideoSession.propose`: box prompts, the frame's image features reused) and matched one-to-one to the tracks by
   mask IoU (Hungarian, `match_iou`); a lost track is matched by its last visible mask;
3. a matched track counts the detection's score for the detection's class; a matched track that was lost is
   re-prompted with the detection's box (its memory restarts there, as Grounded-SAM-2's continuous-id demo
   re-prompts every object from each keyframe: grounded_sam2_tracking_demo_with_continuous_id.py ~140-160);
   an unmatched detection starts a new track from its box prompt (`VideoSession.accept`); ids are never reused;
4. a track lost for `max_lost` consecutive frames ends and leaves the session.

Box-IoU fallback (no segmenter): the detector runs on every frame and its boxes are matched to the tracks' last boxes
by box IoU (Hungarian, `match_iou`), each track's box first moved on at its last velocity (a constant-velocity
prediction, as SORT's Kalman filter makes with less machinery); what is left is matched on boxes grown by half
their size (C-BIoU's buffered IoU, a second round), so an object entering the frame, whose visible sliver grows
faster than it overlaps, keeps its id; otherwise the same lifecycle (birth from an unmatched detection, end after
`max_lost` frames unseen, class vote). There is no appearance model: objects that cross while overlapping can swap ids.

Each track's class is the one with the highest accumulated detection score over its life; `finish` relabels all its
frames with it. `expression` follows the one object `detector.refer` finds on the first frame (fallback: the top
box of `refer` on every frame); `box` follows a region given on frame `frame` (segmenter mode only).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from groundscope import masks as mask_ops
from groundscope.detections import Detections, box_iou
from groundscope.images import ImageInput, load_image
from groundscope.track.errors import TrackError
from groundscope.track.frames import VideoFrames
from groundscope.track.lifecycle import Track
from groundscope.track.match import buffered, mask_iou, match
from groundscope.track.tracks import Tracks


class Tracker:
    """Feed frames in order with `update`; `finish` returns the `Tracks`.

    Args:
        detector: any groundscope detector (``detect(images, classes, box_threshold=..., max_detections=...)`` and,
            for `expression`, ``refer(images, expression, top_k=1)``, each returning `Detections`).
        classes: the class names to detect.
        segmenter: a `VideoSegmenter` to propagate masks with; None for the box-IoU fallback.
        every: detect on frame 0 and every `every` frames (segmenter mode; the fallback detects every frame).
        expression: follow the one object this referring expression names instead of `classes`.
        box: (x1, y1, x2, y2) pixels: follow this region, given on frame `frame` (needs a segmenter).
        frame: the frame `box` is on.
        label: the label of the `box` region.
        match_iou: the IoU a detection needs with a track to be matched to it (mask IoU, box IoU in the fallback).
        max_lost: consecutive frames a track may go unseen before it ends.
        box_threshold: the detection score a box needs.
        lost_score: the object score (segmenter mode) under which a track counts as unseen on a frame.
        max_detections: boxes kept per detection.
        nms_iou: class-agnostic box NMS of each frame's detections before matching (None: off).
        buffer, buffer_iou: the box-IoU fallback's second matching round: boxes grown by `buffer` of their size on
            each side must overlap by `buffer_iou` (buffer 0: one round only).
        min_hits: a track seen on fewer frames than this is dropped from the result (`finish`): a detector's
            one-frame false positive is not a track (SORT's min_hits, applied after the fact, so the first frames
            of a kept track are kept).
        interpolate: the box-IoU fallback fills a track's gaps of up to this many frames by linear interpolation
            in `finish` (0: off).
    """

    def __init__(self, detector=None, classes: Sequence[str] = (), *, segmenter=None, every: int = 10,
                 expression: str | None = None, box: Sequence[float] | None = None, frame: int = 0,
                 label: str = "object", match_iou: float = 0.5, max_lost: int = 10, box_threshold: float = 0.3,
                 lost_score: float = 0.5, max_detections: int = 100, nms_iou: float | None = 0.5,
                 buffer: float = 0.5, buffer_iou: float = 0.1, min_hits: int = 5, interpolate: int = 5):
        self.classes = [str(c).strip() for c in classes if str(c).strip()]
        if box is not None and expression is not None:
            raise TrackError("give either a box (--box) or an expression (--expression), not both")
        if box is not None:
            box = [float(v) for v in box]
            if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
                raise TrackError(f"box {box} is not x1,y1,x2,y2 with x1 < x2 and y1 < y2; give e.g. 10,20,110,90")
            if segmenter is None:
                raise TrackError("following a box needs a segmenter to propagate it (--segmenter sam2.1-hiera-tiny); "
                                 "without one there is nothing to carry the box to the next frame")
            if frame < 0:
                raise TrackError(f"frame {frame} is negative; give the 0-based index of the frame the box is on")
        elif expression is not None:
            if not expression.strip(" ."):
                raise TrackError("the expression is empty; pass the words that single out one object")
            if detector is None:
                raise TrackError("an expression needs a detector to find its object (--model)")
        else:
            if not self.classes:
                raise TrackError('no classes given; pass the class names to track, e.g. classes=["car", "person"] '
                                 '(--classes "car,person"), or an expression or a box')
            if detector is None:
                raise TrackError("tracking classes needs a detector (detector=load_detector(...), --model)")
        if every < 1 or max_lost < 1:
            raise TrackError(f"every ({every}) and max_lost ({max_lost}) must be at least 1")
        self.detector = detector
        self.segmenter = segmenter
        self.every, self.expression, self.box, self.box_frame = int(every), expression, box, int(frame)
        self.match_iou, self.max_lost, self.box_threshold = float(match_iou), int(max_lost), float(box_threshold)
        self.lost_score, self.max_detections, self.nms_iou = float(lost_score), int(max_detections), nms_iou
        self.buffer, self.buffer_iou = float(buffer), float(buffer_iou)
        self.min_hits, self.interpolate = int(min_hits), int(interpolate)
        self.names = ([expression.strip()] if expression is not None else [label] if box is not None
                      else self.classes)
        self.session = segmenter.start() if segmenter is not None else None
        self.index = -1
        self.size: tuple[int, int] | None = None
        self.tracks: dict[int, Track] = {}  # every track ever born, by id
        self.live: list[int] = []  # ids of the tracks not ended, in birth order
        self._next_id = 1
        self._seen: list[list[tuple[int, np.ndarray, float, dict | None]]] = []  # per frame: (id, box, score, rle)
        self._referred = False

    # ------------------------------------------------------------------ detection
    def _detect(self, image) -> Detections:
        """This frame's detections: class boxes over the threshold (NMS'd), or the expression's top box."""
        if self.expression is not None:
            d = self.detector.refer([image], self.expression, top_k=1)
            d = d[0] if isinstance(d, list) else d
            return Detections(d.xyxy, d.scores, np.zeros(len(d), np.int64), [self.names[0]] * len(d))
        d = self.detector.detect([image], self.classes, box_threshold=self.box_threshold,
                                 max_detections=self.max_detections)
        d = d[0] if isinstance(d, list) else d
        d = d.with_threshold(self.box_threshold)  # also for detectors that do not apply it themselves
        if self.nms_iou is not None and len(d) > 1:
            d = d.nms(self.nms_iou, class_agnostic=True)
        return d

    def _is_keyframe(self, t: int) -> bool:
        if self.box is not None:
            return t == self.box_frame
        if self.expression is not None:
            return self.session is None or not self._referred
        return self.session is None or t % self.every == 0

    def _new_track(self, t: int, box, mask=None) -> Track:
        track = Track(self._next_id, t, np.asarray(box, np.float32), mask, last_seen=t)
        self._next_id += 1
        self.tracks[track.id] = track
        self.live.append(track.id)
        return track

    def _clip(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes clipped to the frame, at least one pixel wide and high (a prompt must lie on the image)."""
        h, w = self.size
        b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, w - 1)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, h - 1)
        b[:, 2] = np.maximum(b[:, 2], b[:, 0] + 1)
        b[:, 3] = np.maximum(b[:, 3], b[:, 1] + 1)
        return b

    # ------------------------------------------------------------------ frames
    def update(self, frame: ImageInput) -> Detections:
        """Track through the next frame.

        Args:
            frame: the next frame ((H, W, 3) uint8 array, PIL image or path).
        Returns:
            the objects seen on it, with ``tracker_id``; labels are each track's class so far (`finish` settles
            them).
        """
        image = load_image(frame)
        if self.size is None:
            self.size = (image.height, image.width)
        self.index += 1
        seen = self._update_segmenter(image) if self.session is not None else self._update_boxes(image)
        for tid in [t for t in self.live if self.tracks[t].lost >= self.max_lost]:
            self.live.remove(tid)
            if self.session is not None:
                self.session.remove(tid)
        self._seen.append(seen)
        return self._detections(seen)

    def _update_segmenter(self, image) -> list:
        t, session = self.index, self.session
        current: dict[int, tuple[np.ndarray, float]] = {}
        for tid, (mask, score) in session.step(image).items():
            track = self.tracks[tid]
            if mask.any() and score >= self.lost_score:
                track.seen(t, _mask_box(mask), mask)
                current[tid] = (mask, score)
            else:
                track.lost += 1
        if self._is_keyframe(t):
            if self.box is not None:
                h, w = self.size
                x1, y1, x2, y2 = self.box
                if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
                    raise TrackError(f"box {x1:g},{y1:g},{x2:g},{y2:g} lies outside the {w}x{h} frames; give a box "
                                     "on the image (pixels, x1,y1,x2,y2)")
                dets = Detections(self._clip([self.box]), [1.0], [0], [self.names[0]])
            else:
                dets = self._detect(image)
                self._referred = self._referred or len(dets) > 0
            if len(dets):
                current.update(self._assign(t, dets))
        return [(tid, self.tracks[tid].box.copy(), score, mask_ops.encode(mask)[0])
                for tid, (mask, score) in sorted(current.items())]

    def _assign(self, t: int, dets: Detections) -> dict[int, tuple[np.ndarray, float]]:
        """Segment the keyframe's detections, match them to the live tracks by mask IoU, re-prompt matched lost
        tracks, start tracks from the rest; -> the masks those detections put on this frame."""
        session = self.session
        proposal = session.propose(t, None, boxes=self._clip(dets.xyxy))
        live = [tid for tid in self.live if self.tracks[tid].mask is not None]
        iou = (mask_iou(np.stack([self.tracks[tid].mask for tid in live]), proposal.masks) if live
               else np.zeros((0, len(dets))))
        if self.expression is not None or self.box is not None:
            pairs, fresh = [], list(range(min(1, len(dets))))  # one referred object / region, started once
        else:
            pairs, _, fresh = match(iou, self.match_iou)
        out: dict[int, tuple[np.ndarray, float]] = {}
        restart_idx, restart_ids = [], []
        for ti, di in pairs:
            track = self.tracks[live[ti]]
            track.vote(dets.class_ids[di], dets.labels[di], dets.scores[di])
            if track.last_seen != t:  # lost on this frame: restart its memory from the detection
                restart_idx.append(di)
                restart_ids.append(track.id)
        # a detection whose box the model gives no mask for cannot be tracked
        fresh = [di for di in fresh if proposal.masks[di].any()]
        new_tracks = []
        for di in fresh:
            track = self._new_track(t, dets.xyxy[di])
            track.vote(dets.class_ids[di], dets.labels[di], dets.scores[di])
            new_tracks.append((di, track))
        session.accept(proposal, restart_idx + [di for di, _ in new_tracks],
                       restart_ids + [tr.id for _, tr in new_tracks])
        for di, tid in list(zip(restart_idx, restart_ids)) + [(di, tr.id) for di, tr in new_tracks]:
            mask, score = proposal.masks[di], float(proposal.scores[di])
            if mask.any():
                self.tracks[tid].seen(t, _mask_box(mask), mask)
                out[tid] = (mask, score)
        return out

    def _update_boxes(self, image) -> list:
        """The box-IoU fallback: detect, match to the tracks' predicted boxes, birth and loss."""
        t = self.index
        dets = self._detect(image)
        live = list(self.live)
        predicted = np.stack([self.tracks[tid].predicted(t) for tid in live]) if live else np.zeros((0, 4))
        pairs = _cascade(predicted, dets.xyxy, self.match_iou, self.buffer, self.buffer_iou)
        matched_t, matched_d = {ti for ti, _ in pairs}, {di for _, di in pairs}
        unmatched = [ti for ti in range(len(live)) if ti not in matched_t]
        fresh = [di for di in range(len(dets)) if di not in matched_d]
        seen = []
        for ti, di in pairs:
            track = self.tracks[live[ti]]
            track.seen(t, dets.xyxy[di])
            track.vote(dets.class_ids[di], dets.labels[di], dets.scores[di])
            seen.append((track.id, dets.xyxy[di].copy(), float(dets.scores[di]),
                         None if dets.masks is None else dets.masks[di]))
        for ti in unmatched:
            self.tracks[live[ti]].lost += 1
        if self.expression is not None and (live or pairs):
            fresh = []  # one referred object: never a second track while the first lives
        for di in fresh[: 1 if self.expression is not None else None]:
            track = self._new_track(t, dets.xyxy[di])
            track.vote(dets.class_ids[di], dets.labels[di], dets.scores[di])
            seen.append((track.id, dets.xyxy[di].copy(), float(dets.scores[di]),
                         None if dets.masks is None else dets.masks[di]))
        return sorted(seen, key=lambda s: s[0])

    # ------------------------------------------------------------------ results
    def _detections(self, seen: list) -> Detections:
        """One frame's records -> Detections with tracker_id, classes from the votes so far."""
        if not seen:
            return Detections(tracker_id=np.zeros((0,), np.int64),
                              masks=[] if self.session is not None else None)
        tracks = [self.tracks[s[0]] for s in seen]
        rles = [s[3] for s in seen]
        return Detections(
            xyxy=np.stack([s[1] for s in seen]), scores=[s[2] for s in seen],
            class_ids=[tr.class_id for tr in tracks], labels=[tr.label for tr in tracks],
            masks=rles if all(r is not None for r in rles) else None,
            tracker_id=[tr.id for tr in tracks])

    def finish(self, video: VideoFrames | None = None) -> Tracks:
        """The `Tracks` of the frames fed so far, every frame labelled with each track's final class vote."""
        if self.box is not None and self.index < self.box_frame:
            raise TrackError(f"frame {self.box_frame} (the frame of the box, --frame) is past the end of the video "
                             f"({self.index + 1} frames); give a frame index below {self.index + 1}")
        seen = self._seen
        if self.min_hits > 1:
            hits: dict[int, int] = {}
            for frame in seen:
                for rec in frame:
                    hits[rec[0]] = hits.get(rec[0], 0) + 1
            seen = [[rec for rec in frame if hits[rec[0]] >= self.min_hits] for frame in seen]
        if self.interpolate and self.session is None:
            seen = _interpolate(seen, self.interpolate)
        return Tracks([self._detections(s) for s in seen], list(self.names), video, self.size)


def _interpolate(seen: list[list[tuple]], longest: int) -> list[list[tuple]]:
    """Fill each track's gaps of at most `longest` frames with boxes on the line between the sightings around the
    gap (the score the lower of theirs), as offline MOT post-processing does (ByteTrack's
    tools/interpolation.py). -> a new per-frame list of (id, box, score, rle) records."""
    out = [list(frame) for frame in seen]
    last: dict[int, tuple[int, np.ndarray, float]] = {}
    for t, frame in enumerate(seen):
        for tid, box, score, _ in frame:
            if tid in last:
                t0, box0, score0 = last[tid]
                if 1 < t - t0 <= longest + 1:
                    for k in range(t0 + 1, t):
                        w = (k - t0) / (t - t0)
                        out[k].append((tid, ((1 - w) * box0 + w * box).astype(np.float32), min(score0, score), None))
            last[tid] = (t, np.asarray(box, np.float32), float(score))
    return [sorted(frame, key=lambda r: r[0]) for frame in out]


def _cascade(tracks: np.ndarray, dets: np.ndarray, threshold: float, buffer: float,
             buffer_threshold: float) -> list[tuple[int, int]]:
    """Box matching in two rounds: IoU >= `threshold` (Hungarian), then, among what is left, the IoU of the boxes
    grown by `buffer` (`buffered`) >= `buffer_threshold`. The second round is C-BIoU's idea (WACV 2023, Sec. 3.2:
    a cascade from the plain box to a buffered one): it links a box that moved or changed size by more than it
    overlaps, as an object entering the frame does while its visible sliver grows, without weakening the first
    round. -> sorted (track, detection) pairs."""
    if not len(tracks) or not len(dets):
        return []
    pairs, left_t, left_d = match(box_iou(tracks, dets), threshold)
    if buffer > 0 and left_t and left_d:
        iou = box_iou(buffered(tracks[left_t], buffer), buffered(dets[left_d], buffer))
        more, _, _ = match(iou, buffer_threshold)
        pairs += [(left_t[a], left_d[b]) for a, b in more]
    return sorted(pairs)


def _mask_box(mask: np.ndarray) -> np.ndarray:
    """The tight xyxy box of a non-empty bool (H, W) mask, pixel edges included (as COCO's toBbox)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)
