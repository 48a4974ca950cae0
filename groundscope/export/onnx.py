"""The whole detector (Swin, BERT, fusion encoder, decoder, heads) as one ONNX graph.

Graph inputs (B images, each with one prompt of T tokens; H and W any size, T up to the model's max_text_len):

    pixel_values              (B, 3, H, W) float32   normalised as `groundscope.images.preprocess` does
    pixel_mask                (B, H, W)    int64     1 on real pixels, 0 on padding
    input_ids                 (B, T)       int64     BERT token ids, [CLS] ... [SEP], padded with 0
    attention_mask            (B, T)       int64     1 on real tokens, 0 on padding
    token_type_ids            (B, T)       int64     zeros
    text_self_attention_mask  (B, T, T)    bool      token i may attend to token j (same phrase; padding: itself)
    position_ids              (B, T)       int64     positions restarting after each "." delimiter

Graph outputs:

    logits      (B, Q, max_text_len) float32  token logits of each query (-inf beyond T and at padding)
    pred_boxes  (B, Q, 4)            float32  normalised (cx, cy, w, h)

The text masks are inputs (not computed inside the graph) because transformers builds them with cummax /
cummin, which ONNX lacks; `groundscope.export.onnx_runtime.text_inputs` computes them from the token ids.
Batch, H, W and T are dynamic axes. The graph is valid for images whose sides are both at least
`min_image_side(config)` pixels (225 for the Swin-T/B/L checkpoints): below that transformers' Swin shrinks its
window, a branch the graph cannot hold. Preprocessed images (shortest edge 800) are far above it.

How it is exported (measured on the tiny test models, torch 2.13, onnx 1.23, onnxruntime 1.32):
- TorchScript exporter (``dynamo=False``) with ``dynamic_axes``: what we use; ~4 s for the tiny model. Tracing
  records the shape arithmetic but freezes Python ``if``s on sizes at the example's values, and transformers'
  Swin has three (patch padding, odd-size padding at patch merging, the crop after window padding).
  `_traceable_swin` swaps them for branch-free equivalents during the export (identical results: padding by
  zero and slicing to the full size are no-ops), and `staged.spatial_shapes_tensor` keeps the levels' sizes
  symbolic. The graph then matches PyTorch to ~1e-5 at every size and text length tried.
- dynamo exporter (``dynamo=True``) with ``dynamic_shapes``: not usable. Unpatched, it needs
  TRANSFORMERS_DISABLE_TORCH_CHECK=1 and Swin's eager attention, takes ~3 minutes for the *tiny* model
  (symbolic reasoning over Swin's nested padding arithmetic), and the graph it writes keeps the example's
  padding branches (onnxruntime fails on an image with odd feature sizes) and specialises a batch axis whose
  example size is 1. With the branch-free Swin, torch.export itself fails (a sympy assertion in
  symbolic_shapes, "False != True").
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from groundscope.export.onnx_format import (DYNAMIC_AXES, INPUT_NAMES, METADATA_CONFIG, METADATA_TOKENIZER,
                                           OUTPUT_NAMES)
from groundscope.models import staged

DEFAULT_OPSET = 17
EXAMPLE_TEXT = "cat. remote control. couch."
# Odd, non-multiple-of-4 / -7 sizes, so every padding path of Swin runs while tracing.
EXAMPLE_SIZE = (449, 601)


class OnnxExportError(RuntimeError):
    """The detector cannot be exported; the message says why and what to do."""


class DetectorGraph(nn.Module):
    """What the ONNX graph computes: `staged.encode_images` + the text backbone + `staged.fuse_and_decode_padded`,
    i.e. the arithmetic tests/test_parity.py holds equal to transformers' forward, on already-padded text."""

    def __init__(self, detector_model: nn.Module):
        super().__init__()
        self.detector_model = detector_model

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        text_self_attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shapes as in the module docstring; returns (logits (B, Q, max_text_len), pred_boxes (B, Q, 4))."""
        m = self.detector_model.model
        self_mask = text_self_attention_mask.bool()
        text = m.text_backbone(input_ids, self_mask[:, None], token_type_ids, position_ids, return_dict=True)
        text_features = m.text_projection(text.last_hidden_state)
        images = staged.encode_images(self.detector_model, pixel_values, pixel_mask)
        raw = staged.fuse_and_decode_padded(
            self.detector_model, images, text_features, attention_mask.bool(), self_mask, position_ids
        )
        return raw.logits, raw.boxes


def min_image_side(config) -> int:
    """Smallest image side (pixels) the graph is valid for: Swin's last stage must stay wider than its window."""
    bc = getattr(config, "backbone_config", None)
    if bc is None or getattr(bc, "model_type", "") != "swin":
        return 1
    return int(bc.window_size * bc.patch_size * 2 ** (len(bc.depths) - 1) + 1)


@contextmanager
def _traceable_swin():
    """Swap transformers' Swin size branches for branch-free equivalents while tracing.

    A tracer keeps only the branch the example takes, so an image of another size would run the wrong one.
    Padding by zero and slicing to the full size are no-ops, so the branch-free forms give identical outputs.
    """
    from transformers.models.swin import modeling_swin as sw

    saved = (sw.SwinPatchEmbeddings.maybe_pad, sw.SwinPatchMerging.maybe_pad, sw.SwinLayer.maybe_pad)
    layer_pad = saved[2]

    def embeddings_pad(self, pixel_values, height, width):
        ph, pw = self.patch_size
        return nn.functional.pad(pixel_values, (0, (pw - width % pw) % pw, 0, (ph - height % ph) % ph))

    def merging_pad(self, input_feature, height, width):
        return nn.functional.pad(input_feature, (0, 0, 0, width % 2, 0, height % 2))

    def window_pad(self, hidden_states, height, width):
        hidden_states, _ = layer_pad(self, hidden_states, height, width)
        # SwinLayer.forward crops the window padding off only `if pad_values[3] > 0 or pad_values[5] > 0`;
        # reporting padding always makes it crop always (a no-op slice when nothing was padded).
        return hidden_states, (0, 0, 0, 1, 0, 1)

    sw.SwinPatchEmbeddings.maybe_pad, sw.SwinPatchMerging.maybe_pad, sw.SwinLayer.maybe_pad = (
        embeddings_pad, merging_pad, window_pad)
    try:
        yield
    finally:
        sw.SwinPatchEmbeddings.maybe_pad, sw.SwinPatchMerging.maybe_pad, sw.SwinLayer.maybe_pad = saved


@contextmanager
def _env(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def example_inputs(detector, size: tuple[int, int] = EXAMPLE_SIZE, text: str = EXAMPLE_TEXT, batch: int = 2):
    """Graph inputs (a dict in INPUT_NAMES order) for `batch` random images of `size` and one prompt."""
    from groundscope.export.onnx_runtime import text_inputs

    h, w = size
    g = torch.Generator().manual_seed(0)
    ids = detector.tokenizer(text)["input_ids"]
    feeds = {
        "pixel_values": torch.randn((batch, 3, h, w), generator=g),
        "pixel_mask": torch.ones((batch, h, w), dtype=torch.long),
    }
    text = text_inputs([ids] * batch, detector.model.model.special_tokens.tolist())
    feeds.update({k: torch.from_numpy(v) for k, v in text.items()})
    return {k: feeds[k] for k in INPUT_NAMES}


def export_onnx(
    detector,
    out: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    example_size: tuple[int, int] = EXAMPLE_SIZE,
) -> Path:
    """Write `detector` (a `GroundingDetector`, fp32) as one ONNX graph to `out`; returns the path.

    The tokenizer and the settings `OnnxDetector` needs (max_text_len, preprocessing size, delimiter token ids)
    are stored in the file's metadata, so the .onnx file alone is enough to run it.
    """
    if detector.dtype != torch.float32:
        raise OnnxExportError(
            f"model '{detector.name}' is loaded in {detector.dtype}; export an fp32 model "
            "(load_detector(name, precision='fp32'))"
        )
    side = min_image_side(detector.model.config)
    if min(example_size) < side:
        raise OnnxExportError(f"example_size {example_size} is below the graph's minimum image side {side}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = DetectorGraph(detector.model).eval()
    args = tuple(example_inputs(detector, example_size).values())
    with torch.no_grad(), _traceable_swin(), _env(TRANSFORMERS_DISABLE_TORCH_CHECK="1"), warnings.catch_warnings():
        # The tracer warns at every Python branch on a size; the ones left after _traceable_swin test static
        # facts (coordinate counts, consistency checks), and verify_onnx checks the graph at other sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph, args, str(out), dynamo=False, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            dynamic_axes=DYNAMIC_AXES, opset_version=opset, do_constant_folding=True,
        )
    _write_metadata(out, detector)
    return out


def _write_metadata(path: Path, detector) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    config = {
        "model": detector.name,
        "max_text_len": int(detector.max_text_len),
        "num_queries": int(detector.model.config.num_queries),
        "image_size": list(detector.image_size),
        "special_tokens": detector.model.model.special_tokens.tolist(),
        "min_image_side": min_image_side(detector.model.config),
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
    }
    entries = {METADATA_CONFIG: json.dumps(config)}
    backend = getattr(detector.tokenizer, "backend_tokenizer", None)
    if backend is not None:
        entries[METADATA_TOKENIZER] = backend.to_str()
    del model.metadata_props[:]
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(path))


def verify_onnx(detector, path: str | os.PathLike, size: tuple[int, int], text: str) -> dict[str, float]:
    """Run the graph with onnxruntime and the PyTorch model on one random image of `size` and `text`.

    Returns the largest absolute differences of the finite logits and of the boxes, {"logits": .., "boxes": ..}.
    """
    import numpy as np

    from groundscope.export.onnx_runtime import open_session

    feeds = example_inputs(detector, size, text, batch=1)
    session = open_session(path)
    logits, boxes = session.run(list(OUTPUT_NAMES), {k: v.numpy() for k, v in feeds.items()})
    with torch.no_grad():
        ref_logits, ref_boxes = DetectorGraph(detector.model).eval()(*feeds.values())
    n = feeds["input_ids"].shape[1]
    return {
        "logits": float(np.abs(logits[..., :n] - ref_logits[..., :n].numpy()).max()),
        "boxes": float(np.abs(boxes - ref_boxes.numpy()).max()),
    }
