"""SAM 2's input and output processing (SAM 2 / 2.1, EdgeTAM, SAM 3's tracker) without torchvision.

transformers' `Sam2ImageProcessor` is a torchvision backend (it imports torchvision at load time,
transformers models/sam2/image_processing_sam2.py), and groundscope does not depend on torchvision. This module
computes what it and `Sam2Processor` compute, from the folder's ``preprocessor_config.json``:

- pixels: the RGB image as uint8 (3, h, w), resized to the square ``size`` by bilinear interpolation with
  antialiasing on uint8 (torchvision's tensor resize calls the same torch kernel), then ``* rescale_factor`` and
  normalised by ``image_mean`` / ``image_std``; no padding (SAM 2 resizes without keeping the aspect ratio);
- prompts: x scaled by ``size / width`` and y by ``size / height`` (processing_sam2.py ``_normalize_coordinates``),
  ragged click groups padded with points and labels of -10, which the prompt encoder ignores;
- masks: the low-resolution logits resized bilinearly (align_corners=False) to the image's size and thresholded
  (``post_process_masks`` with no hole filling).

tests/test_segmenter.py holds these to transformers' own processor on a fixture made where torchvision loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PAD = -10  # Sam2Processor's point_pad_value


class Sam2Processing:
    """SAM 2-family pre- and post-processing for one model folder.

    Attributes:
        size: (H, W) the model's input size (1024 x 1024 for the released models).
        mean, std: per-channel normalisation (ImageNet's by default).
        rescale: the factor that maps uint8 to [0, 1].
    """

    def __init__(self, size=(1024, 1024), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 rescale: float = 1 / 255):
        self.size = (int(size[0]), int(size[1]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.rescale = float(rescale)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Sam2Processing":
        """Read ``preprocessor_config.json`` (or the processor file that nests it) of a saved model."""
        folder = Path(folder)
        cfg: dict = {}
        for name in ("preprocessor_config.json", "processor_config.json"):
            path = folder / name
            if path.exists():
                data = json.loads(path.read_text())
                cfg = data.get("image_processor", data)
                break
        size = cfg.get("size") or {"height": 1024, "width": 1024}
        if "longest_edge" in size:
            size = {"height": size["longest_edge"], "width": size["longest_edge"]}
        return cls((size["height"], size["width"]), cfg.get("image_mean", (0.485, 0.456, 0.406)),
                   cfg.get("image_std", (0.229, 0.224, 0.225)), cfg.get("rescale_factor", 1 / 255))

    # ------------------------------------------------------------------ images
    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB images -> float32 (B, 3, H, W) model input."""
        out = []
        for im in images:
            arr = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
            resized = F.interpolate(arr[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]
            out.append((resized.float() * self.rescale - self.mean) / self.std)
        return torch.stack(out)

    # ------------------------------------------------------------------ prompts
    def prompts(self, original_size: tuple[int, int], boxes: list | None = None, points: list | None = None,
                labels: list | None = None) -> dict[str, torch.Tensor]:
        """One image's prompts in the model's frame: input_boxes (1, N, 4), input_points (1, N, P, 2),
        input_labels (1, N, P); `points` / `labels` are N groups (ragged groups are padded with -10)."""
        h, w = original_size
        sx, sy = self.size[1] / w, self.size[0] / h
        enc: dict[str, torch.Tensor] = {}
        if boxes is not None:
            b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            enc["input_boxes"] = (b * torch.tensor([sx, sy, sx, sy]))[None]
        if points is not None:
            most = max(len(g) for g in points)
            p = torch.full((len(points), most, 2), float(PAD))
            lab = torch.full((len(points), most), PAD, dtype=torch.int64)
            for i, (g, gl) in enumerate(zip(points, labels)):
                p[i, : len(g)] = torch.tensor(g, dtype=torch.float32).reshape(-1, 2) * torch.tensor([sx, sy])
                lab[i, : len(gl)] = torch.tensor(gl, dtype=torch.int64)
            enc["input_points"] = p[None]
            enc["input_labels"] = lab[None]
        return enc

    # ------------------------------------------------------------------ masks
    @staticmethod
    def masks(logits: torch.Tensor, original_size: tuple[int, int], threshold: float = 0.0) -> torch.Tensor:
        """(N, M, h', w') mask logits -> bool (N, M, H, W) at the image's size."""
        up = F.interpolate(logits.float(), size=tuple(original_size), mode="bilinear", align_corners=False)
        return up > threshold
