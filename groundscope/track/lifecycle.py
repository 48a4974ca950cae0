"""One track's life: its id, its class vote, how long it has been lost, where it was last seen."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Track:
    """An object followed across frames.

    Attributes:
        id: the track id (1, 2, ... in order of birth; never reused).
        start: the frame it was born on.
        box: float32 (4,) xyxy where it was last seen.
        mask: bool (H, W) its last non-empty mask (segmenter mode), for matching it while it is lost.
        lost: consecutive frames it has not been seen.
        last_seen: the last frame it was seen on.
        velocity: float32 (4,) the box's change per frame between its last two sightings (zeros until then), for
            the box-IoU fallback's constant-velocity prediction.
        votes: class_id -> the detection scores it was matched with, summed; names: class_id -> label.
    """

    id: int
    start: int
    box: np.ndarray
    mask: np.ndarray | None = None
    lost: int = 0
    last_seen: int = 0
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))
    votes: dict[int, float] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)

    def vote(self, class_id: int, label: str, score: float) -> None:
        """Count one detection of this object as `label` (class `class_id`) with confidence `score`."""
        self.votes[int(class_id)] = self.votes.get(int(class_id), 0.0) + float(score)
        self.names.setdefault(int(class_id), str(label))

    @property
    def class_id(self) -> int:
        """The class with the highest accumulated detection score (ties: the lower class id)."""
        if not self.votes:
            return 0
        return min(self.votes, key=lambda c: (-self.votes[c], c))

    @property
    def label(self) -> str:
        return self.names.get(self.class_id, "object")

    def predicted(self, frame: int) -> np.ndarray:
        """float32 (4,) where the box should be on `frame` if it keeps moving (and growing) as it last did."""
        return self.box + self.velocity * float(frame - self.last_seen)

    def seen(self, frame: int, box: np.ndarray, mask: np.ndarray | None = None) -> None:
        box = np.asarray(box, np.float32).reshape(4)
        if frame > self.last_seen and frame > self.start:
            self.velocity = (box - self.box) / float(frame - self.last_seen)
        self.box = box
        if mask is not None:
            self.mask = mask
        self.lost = 0
        self.last_seen = frame
