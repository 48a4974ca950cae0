"""Run an exported detector graph (`groundscope export onnx`) with onnxruntime: images + prompts -> `Detections`.

    from groundscope.export.onnx_runtime import OnnxDetector
    det = OnnxDetector("model.onnx")                 # tokenizer and settings come from the file's metadata
    dets = det.detect("photo.jpg", ["cat", "remote control"], box_threshold=0.3)
    det.ground("photo.jpg", "a cat on a couch", ["a cat", "a couch"]); det.refer("photo.jpg", "the left cat")

Prompts, preprocessing and scoring are groundscope's own (`prompts`, `images.preprocess`, `postprocess`), so the
results follow the same rules as `GroundingDetector`'s. One graph run per (image, prompt chunk): the graph holds
the whole model, so unlike `GroundingDetector` the backbone runs again for every chunk of a long vocabulary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from groundscope.detections import Detections
from groundscope.export.onnx_format import METADATA_CONFIG, METADATA_TOKENIZER
from groundscope.images import ImageInput, load_image, preprocess
from groundscope.postprocess import Candidates, decoded_phrases, merge_candidates, to_detections, topk_pairs
from groundscope.prompts import Prompt, caption_prompt, chunk_classes, expression_prompt, phrase_prompt


class OnnxRuntimeError(RuntimeError):
    """The graph cannot be run on this input; the message names the input and the fix."""


def open_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for `path` (`threads`: intra-op threads, default onnxruntime's choice)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise OnnxRuntimeError(f"ONNX file '{path}' does not exist; write one with groundscope export onnx --out {path}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def text_inputs(sequences: Sequence[Sequence[int]], special_tokens: Sequence[int]) -> dict[str, np.ndarray]:
    """The graph's five text inputs for B prompts of (possibly) different lengths, padded to the longest (T).

    Each prompt's phrase-block mask and position ids are transformers' own
    (`generate_masks_with_special_tokens_and_transfer_map`, computed on the unpadded ids); a padding token
    attends only to itself and no real token attends to padding, so padding leaves the real tokens' outputs
    unchanged (as `staged.pad_text` does).

    Returns int64 arrays input_ids, attention_mask, token_type_ids, position_ids (B, T) and the bool
    text_self_attention_mask (B, T, T).
    """
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        generate_masks_with_special_tokens_and_transfer_map,
    )

    if not sequences:
        raise OnnxRuntimeError("no prompts given")
    special = torch.as_tensor(list(special_tokens), dtype=torch.long)
    t_max = max(len(s) for s in sequences)
    b = len(sequences)
    ids = np.zeros((b, t_max), np.int64)
    attention = np.zeros((b, t_max), np.int64)
    self_mask = np.repeat(np.eye(t_max, dtype=bool)[None], b, 0)
    position = np.zeros((b, t_max), np.int64)
    for i, seq in enumerate(sequences):
        row = torch.as_tensor(list(seq), dtype=torch.long)[None]
        mask, pos = generate_masks_with_special_tokens_and_transfer_map(row, special)
        n = row.shape[1]
        ids[i, :n] = row[0].numpy()
        attention[i, :n] = 1
        self_mask[i, :n, :n] = mask[0].numpy()
        position[i, :n] = pos[0].numpy()
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "token_type_ids": np.zeros_like(ids),
        "text_self_attention_mask": self_mask,
        "position_ids": position,
    }


def _tokenizer_from_json(text: str):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(text))


class OnnxDetector:
    """An exported detector graph with groundscope's prompts and scoring.

    Args:
        path: the .onnx file written by ``groundscope export onnx`` (or `export_onnx`).
        tokenizer: a tokenizer to use instead of the one stored in the file.
        threads: onnxruntime intra-op threads.
    """

    def __init__(self, path: str | os.PathLike, *, tokenizer=None, threads: int | None = None):
        self.path = Path(path)
        self.session = open_session(self.path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_CONFIG not in meta:
            raise OnnxRuntimeError(
                f"'{self.path}' has no groundscope metadata ({METADATA_CONFIG}); export it with "
                "groundscope export onnx, which stores the tokenizer and the model's text settings in the file"
            )
        self.config = json.loads(meta[METADATA_CONFIG])
        if tokenizer is None:
            if METADATA_TOKENIZER not in meta:
                raise OnnxRuntimeError(f"'{self.path}' stores no tokenizer; pass tokenizer= (the model's own)")
            tokenizer = _tokenizer_from_json(meta[METADATA_TOKENIZER])
        self.tokenizer = tokenizer
        self.max_text_len = int(self.config["max_text_len"])
        self.image_size = tuple(self.config["image_size"])
        self.min_image_side = int(self.config.get("min_image_side", 1))
        self.name = self.config.get("model", self.path.stem)

    def __repr__(self) -> str:
        return f"OnnxDetector({str(self.path)!r}, model={self.name!r})"

    # ------------------------------------------------------------------ raw graph
    def run(self, pixel_values: torch.Tensor, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """One image against B prompts in one graph run.

        Args:
            pixel_values: (3, H, W) preprocessed image (`groundscope.images.preprocess(...).pixel_values`).
            prompts: B prompts of at most max_text_len tokens each.
        Returns:
            logits (B, Q, max_text_len) and boxes (B, Q, 4) normalised cxcywh, as float32 torch tensors.
        """
        _, h, w = pixel_values.shape
        if min(h, w) < self.min_image_side:
            raise OnnxRuntimeError(
                f"preprocessed image is {h}x{w} pixels; the exported graph needs both sides >= {self.min_image_side} "
                "(Swin changes its window below that); pad or resize the image, or run it with load_detector"
            )
        b = len(prompts)
        feeds = text_inputs([p.input_ids[0].tolist() for p in prompts], self.config["special_tokens"])
        px = pixel_values.float().numpy()[None]
        feeds["pixel_values"] = np.ascontiguousarray(np.repeat(px, b, 0))
        feeds["pixel_mask"] = np.ones((b, h, w), np.int64)
        logits, boxes = self.session.run(["logits", "pred_boxes"], feeds)
        return torch.from_numpy(logits), torch.from_numpy(boxes)

    def _candidates(self, image: ImageInput, prompts: list[Prompt], reduce) -> tuple[list[Candidates], tuple[int, int]]:
        prepared = preprocess(load_image(image), *self.image_size)
        cands = []
        for p in prompts:  # one run per chunk bounds memory to one prompt's activations
            logits, boxes = self.run(prepared.pixel_values, [p])
            cands.append(reduce(logits[0], boxes[0], p))
        return cands, prepared.orig_size

    # ------------------------------------------------------------------ tasks
    def detect(
        self,
        images: ImageInput | Sequence[ImageInput],
        classes: Sequence[str],
        *,
        box_threshold: float = 0.0,
        max_detections: int = 300,
        nms_iou: float | None = None,
        score_rule: str = "mean",
    ) -> Detections | list[Detections]:
        """Open-vocabulary detection with `GroundingDetector.detect`'s rules (one class list for all images)."""
        chunks = chunk_classes(self.tokenizer, list(classes), self.max_text_len)

        def one(image):
            cands, size = self._candidates(
                image, chunks, lambda lo, bo, p: topk_pairs(lo, bo, p, max_detections, score_rule))
            d = to_detections(merge_candidates(cands), size, max_detections, box_threshold, with_spans=False)
            return d.nms(nms_iou) if nms_iou is not None else d

        return _map(one, images)

    def ground(
        self,
        images: ImageInput | Sequence[ImageInput],
        caption: str,
        phrases: Sequence | None = None,
        *,
        box_threshold: float = 0.0,
        text_threshold: float = 0.25,
        max_detections: int = 300,
        score_rule: str = "mean",
    ) -> Detections | list[Detections]:
        """Phrase grounding with `GroundingDetector.ground`'s rules (one caption for all images)."""
        if phrases is None:
            prompt = caption_prompt(self.tokenizer, caption, self.max_text_len)
        else:
            prompt = phrase_prompt(self.tokenizer, caption, phrases, self.max_text_len)

        def reduce(lo, bo, p):
            if not p.labels:
                return decoded_phrases(lo, bo, p, self.tokenizer, box_threshold, text_threshold)
            return topk_pairs(lo, bo, p, max_detections, score_rule)

        def one(image):
            cands, size = self._candidates(image, [prompt], reduce)
            return to_detections(merge_candidates(cands), size, max_detections, box_threshold, with_spans=True)

        return _map(one, images)

    def refer(
        self, images: ImageInput | Sequence[ImageInput], expression: str, *, top_k: int = 1
    ) -> Detections | list[Detections]:
        """Referring expression comprehension: the top-k boxes by the expression's mean token probability."""
        prompt = expression_prompt(self.tokenizer, expression, self.max_text_len)

        def one(image):
            cands, size = self._candidates(image, [prompt], lambda lo, bo, p: topk_pairs(lo, bo, p, top_k, "mean"))
            return to_detections(merge_candidates(cands), size, top_k, 0.0, with_spans=True)

        return _map(one, images)


def _map(fn, images):
    if isinstance(images, (list, tuple)):
        return [fn(im) for im in images]
    return fn(images)
