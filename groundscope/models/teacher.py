"""The RKD teacher: any transformers CLIP-like model (CLIP, SigLIP, ...: a model with ``get_image_features`` and
``get_text_features``), loaded from a hub id or a folder, embedding image crops and class names.

Loading goes through `groundscope.models.hub.resolve`-style rules: a local folder loads as is; a hub id loads
from the cache (offline) or the hub. The image processor and tokenizer are loaded separately (AutoImageProcessor,
AutoTokenizer) so a teacher saved with any tokenizer class works.

Text follows the reference (hanoonaR/object-centric-ovd): class names are embedded as "a photo of a {}"
(docs/DATASETS.md ~L263, tools/dump_clip_features.py ~L28-29, no full stop). CLIP text is padded to the batch's
longest (its EOS pooling ignores padding); SigLIP was trained on text padded to its full length (64 tokens) and
pools the last position, so SigLIP teachers are tokenised with ``padding="max_length"`` as its model card says
(and, for SigLIP v1, without an attention mask, as its tokenizer returns none).
Regions are cropped as the reference crops them (PIL's ``crop`` of the box, no margin, `crop_regions`) and go
through the teacher's own image processor (CLIP: resize of the short side + centre crop, what the reference's
``clip.load`` preprocess does, tools/get_rkd_clip_feat.py ~L140).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from groundscope.models.hub import ModelLoadError

DEFAULT_TEXT_TEMPLATE = "a photo of a {}"  # official: docs/DATASETS.md ~L263
MAX_LENGTH_PADDED = ("siglip", "siglip2")  # model types whose text tower expects padding="max_length"


class Teacher:
    """A CLIP-like model in eval mode.

    Args:
        source: hub id or local folder.
        device: torch device.
        text_template: format string turning a class name into the text that is embedded (the reference's
            "a photo of a {}" by default).
    """

    def __init__(self, source: str | os.PathLike, device: str | torch.device = "cpu",
                 text_template: str = DEFAULT_TEXT_TEMPLATE):
        if "{}" not in text_template:
            raise ValueError(f"text_template '{text_template}' must contain {{}} where the class name goes")
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        self.source = str(source)
        self.device = torch.device(device)
        self.text_template = text_template
        try:
            self.model = AutoModel.from_pretrained(self.source).to(self.device).eval()
            self.processor = AutoImageProcessor.from_pretrained(self.source)
            self.tokenizer = AutoTokenizer.from_pretrained(self.source)
        except (OSError, ValueError) as e:
            local = Path(self.source).exists()
            hint = ("the folder must hold a transformers CLIP-like model with its image processor and tokenizer"
                    if local else "check the hub id, or pass a local folder (offline machines need one)")
            raise ModelLoadError(f"cannot load the teacher '{self.source}': {e}; {hint}") from e
        for name in ("get_image_features", "get_text_features"):
            if not hasattr(self.model, name):
                raise ModelLoadError(f"teacher '{self.source}' ({type(self.model).__name__}) has no {name}(); "
                                     "RKD needs a CLIP-like image-text model (CLIPModel, SiglipModel, ...)")

    @property
    def padding(self) -> str | bool:
        """The tokenizer's padding for this teacher: "max_length" for SigLIP, the batch's longest otherwise."""
        return "max_length" if self._model_type in MAX_LENGTH_PADDED else True

    @property
    def _model_type(self) -> str:
        return str(getattr(self.model.config, "model_type", ""))

    @property
    def dim(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "projection_dim", None) or cfg.text_config.hidden_size)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """Images (crops) -> (N, D) float32, L2-normalised."""
        out = []
        for s in range(0, len(images), batch_size):
            px = self.processor(images=list(images[s : s + batch_size]), return_tensors="pt")["pixel_values"]
            feats = self.model.get_image_features(pixel_values=px.to(self.device))
            feats = getattr(feats, "pooler_output", feats)
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        if not out:
            return torch.zeros((0, self.dim))
        return torch.cat(out)

    @torch.inference_mode()
    def embed_texts(self, names: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Class names -> (N, D) float32, L2-normalised (each name through `text_template`)."""
        out = []
        for s in range(0, len(names), batch_size):
            texts = [self.text_template.format(n) for n in names[s : s + batch_size]]
            tok = self.tokenizer(texts, padding=self.padding, truncation=True, return_tensors="pt")
            # SigLIP (v1) was trained on full-length padded text without an attention mask (its tokenizer returns
            # input_ids only); other teachers take the mask
            keys = ("input_ids",) if self._model_type == "siglip" else ("input_ids", "attention_mask")
            inputs = {k: v.to(self.device) for k, v in tok.items() if k in keys}
            feats = self.model.get_text_features(**inputs)
            feats = getattr(feats, "pooler_output", feats)
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        if not out:
            return torch.zeros((0, self.dim))
        return torch.cat(out)


def crop_regions(image: Image.Image, boxes_xyxy: np.ndarray, min_side: int = 2) -> list[Image.Image]:
    """Tight crops of `boxes_xyxy` (K, 4) absolute pixels, as the reference crops (``image.crop(box)`` on the
    float box, tools/get_rkd_clip_feat.py ~L67-69: PIL rounds each coordinate to the nearest pixel).

    Departures, only where the reference's crop would be empty or reach outside the image: coordinates are
    clamped to the image (PIL would pad with black), and a box under `min_side` pixels on a side is widened
    around its centre (the reference's CLIP preprocess fails on an empty crop and its ``except: pass`` then
    drops all the image's regions).
    """
    w, h = image.size
    crops = []
    for x0, y0, x1, y1 in np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4):
        a, b, c, d = (int(round(v)) for v in (x0, y0, x1, y1))  # PIL's Image.crop rounding
        a, c = _fit(a, c, w, min_side)
        b, d = _fit(b, d, h, min_side)
        crops.append(image.crop((a, b, c, d)))
    return crops


def _fit(lo: int, hi: int, size: int, min_side: int) -> tuple[int, int]:
    """An integer span [lo, hi) inside [0, size), at least min(min_side, size) wide (widened around its centre)."""
    lo, hi = max(0, min(lo, size)), max(0, min(hi, size))
    want = min(min_side, size)
    if hi - lo < want:
        centre = (lo + hi) / 2
        lo = int(np.clip(np.floor(centre - want / 2), 0, size - want))
        hi = lo + want
    return lo, hi
