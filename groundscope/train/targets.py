"""`Target`: the ground truth of one (image, prompt) training pair, as the matcher and the losses read it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Target:
    """Boxes of one image and, for each box, the prompt tokens that name it.

    Attributes:
        boxes: (N, 4) float32, normalised (cx, cy, w, h) relative to the (unpadded) image.
        token_map: (N, L) bool, True at the tokens of the box's entity (class name or phrase) in the prompt;
            L = the model's max_text_len, so it lines up with the logits' last axis.
        entity: (N,) long, the box's entity index in the prompt (boxes of one class share it).
    """

    boxes: torch.Tensor
    token_map: torch.Tensor
    entity: torch.Tensor

    def __post_init__(self):
        n = self.boxes.shape[0]
        if self.boxes.shape != (n, 4) or self.token_map.shape[0] != n or self.entity.shape != (n,):
            raise ValueError(
                f"inconsistent target shapes: boxes {tuple(self.boxes.shape)}, token_map "
                f"{tuple(self.token_map.shape)}, entity {tuple(self.entity.shape)}"
            )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: torch.device | str) -> "Target":
        return Target(self.boxes.to(device), self.token_map.to(device), self.entity.to(device))
