"""Same weights, image and prompt -> the same raw outputs as transformers' own forward, and detections equal to
the documented rule applied to those outputs (implemented here independently, with char_to_token)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import groundscope as gs
from groundscope.images import preprocess
from groundscope.models import staged
from groundscope.prompts import chunk_classes

CLASSES = ["cat", "remote control", "couch", "bed"]


def reference_forward(det, image: Image.Image, text: str):
    """transformers' full forward on our inputs (pixel values checked separately against its processor)."""
    enc = det.tokenizer(text, return_tensors="pt")
    px = preprocess(image).pixel_values[None]
    with torch.no_grad():
        out = det.model(pixel_values=px, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return enc, out


def rule_detections(tokenizer, text, names, logits, boxes, size, k, ids=None):
    """The documented rule: mean sigmoid over each name's tokens, top-k (query, class) pairs, pixel xyxy."""
    enc = tokenizer(text)
    probs = torch.sigmoid(logits[0, :, : len(enc["input_ids"])])
    cols, pos = [], 0
    for name in names:
        toks = sorted({enc.char_to_token(c) for c in range(pos, pos + len(name)) if enc.char_to_token(c) is not None})
        cols.append(probs[:, toks].mean(-1))
        pos += len(name) + 2
    scores = torch.stack(cols, -1)
    top = torch.topk(scores.flatten(), min(k, scores.numel()))
    q, c = top.indices // len(names), top.indices % len(names)
    h, w = size
    b = boxes[0, q].double()
    xyxy = torch.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], -1)
    xyxy = xyxy * torch.tensor([w, h, w, h], dtype=torch.float64)
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
    ids = list(range(len(names))) if ids is None else ids
    return top.values.numpy(), xyxy.numpy(), np.array([ids[i] for i in c.tolist()])


def test_preprocessing_matches_transformers_processor(coco_photo):
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    im = gs.load_image(coco_photo)
    ours = preprocess(im).pixel_values
    ref = GroundingDinoImageProcessorPil()(images=im, return_tensors="pt")["pixel_values"][0]
    assert tuple(ours.shape) == (3, 800, 1066)
    # The values asserted by transformers' own Grounding DINO image processor tests for this photo.
    assert torch.allclose(ours[0, 0, :3], torch.tensor([0.2796, 0.3138, 0.3481]), atol=1e-4)
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("size", [(480, 640), (1000, 300), (333, 2000), (800, 800)])
def test_preprocessing_sizes_match_processor(size):
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    ref = GroundingDinoImageProcessorPil()(images=im, return_tensors="pt")["pixel_values"][0]
    ours = preprocess(im).pixel_values
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-5)


def test_raw_outputs_equal_transformers_forward(tiny_model_dir, example_photo):
    det = gs.load_detector(tiny_model_dir)
    im = gs.load_image(example_photo)
    text = "cat. remote control. couch. bed."
    enc, ref = reference_forward(det, im, text)
    with torch.no_grad():
        feats = staged.encode_images(det.model, preprocess(im).pixel_values[None])
        raw = staged.fuse_and_decode(det.model, feats, [staged.encode_text(det.model, enc["input_ids"])])
    n = enc["input_ids"].shape[1]
    assert torch.allclose(raw.logits[..., :n], ref.logits[..., :n], atol=1e-4)
    assert torch.isinf(raw.logits[..., n:]).all() and torch.isinf(ref.logits[..., n:]).all()
    assert torch.allclose(raw.boxes, ref.pred_boxes, atol=1e-5)
    assert torch.allclose(raw.enc_boxes, ref.encoder_pred_boxes, atol=1e-5)


def test_detections_follow_the_documented_rule(tiny_model_dir, example_photo):
    det = gs.load_detector(tiny_model_dir)
    im = gs.load_image(example_photo)
    text = "cat. remote control. couch. bed."
    _, ref = reference_forward(det, im, text)
    dets = det.detect(im, CLASSES, max_detections=25)
    scores, xyxy, ids = rule_detections(det.tokenizer, text, CLASSES, ref.logits, ref.pred_boxes, (im.height, im.width), 25)
    assert len(dets) == 25
    np.testing.assert_allclose(dets.scores, scores, atol=1e-4)
    np.testing.assert_allclose(dets.xyxy, xyxy, atol=1e-3)
    np.testing.assert_array_equal(dets.class_ids, ids)
    assert dets.labels == [CLASSES[i] for i in ids]


def test_parity_on_the_coco_photo(tiny_mm_dir, coco_photo):
    det = gs.load_detector(tiny_mm_dir)
    im = gs.load_image(coco_photo)
    text = "cat. remote control. couch. bed."
    _, ref = reference_forward(det, im, text)
    dets = det.detect(coco_photo, CLASSES, max_detections=10)
    scores, xyxy, ids = rule_detections(det.tokenizer, text, CLASSES, ref.logits, ref.pred_boxes, (480, 640), 10)
    np.testing.assert_allclose(dets.scores, scores, atol=1e-4)
    np.testing.assert_allclose(dets.xyxy, xyxy, atol=1e-3)
    np.testing.assert_array_equal(dets.class_ids, ids)


def test_max_rule_and_threshold(tiny_mm_dir, example_photo):
    det = gs.load_detector(tiny_mm_dir)
    mean = det.detect(example_photo, CLASSES, max_detections=50)
    mx = det.detect(example_photo, CLASSES, max_detections=50, score_rule="max")
    assert mx.scores.max() >= mean.scores.max() - 1e-6  # max over tokens >= mean over tokens
    cut = float(np.median(mean.scores))
    thr = det.detect(example_photo, CLASSES, max_detections=50, box_threshold=cut)
    assert len(thr) == int((mean.scores >= cut).sum()) and (thr.scores >= cut).all()


@pytest.fixture(scope="module")
def short_text_model(tmp_path_factory):
    """A tiny model with a 16-token text limit, so a dozen classes need several chunks."""
    from conftest import build_tiny

    return build_tiny("mm-gdino", tmp_path_factory.mktemp("short"), max_text_len=16)


VOCAB = ["cat", "dog", "remote control", "couch", "bed", "television set", "potted plant", "traffic light",
         "fire hydrant", "cell phone", "dog", "hair drier", "st. bernard", "teddy bear", "wine glass"]


def test_chunked_inference_equals_each_chunk_alone(short_text_model, example_photo):
    det = gs.load_detector(short_text_model)
    im = gs.load_image(example_photo)
    with pytest.warns(UserWarning, match="repeats"):
        chunks = chunk_classes(det.tokenizer, VOCAB, det.max_text_len)
    assert len(chunks) >= 3
    k = 40
    with pytest.warns(UserWarning):
        dets = det.detect(im, VOCAB, max_detections=k)
    all_scores, all_boxes, all_ids = [], [], []
    for ch in chunks:
        assert ch.num_tokens <= 16
        _, ref = reference_forward(det, im, ch.text)
        texts = [ch.text[sp[0][0] : sp[0][1]] for sp in ch.entity_spans]
        s, b, i = rule_detections(det.tokenizer, ch.text, texts, ref.logits, ref.pred_boxes,
                                  (im.height, im.width), k, ids=ch.entity_ids)
        all_scores.append(s), all_boxes.append(b), all_ids.append(i)
    s, b, i = np.concatenate(all_scores), np.concatenate(all_boxes), np.concatenate(all_ids)
    order = np.argsort(-s, kind="stable")[:k]
    np.testing.assert_allclose(dets.scores, s[order], atol=1e-4)
    np.testing.assert_allclose(dets.xyxy, b[order], atol=1e-3)
    np.testing.assert_array_equal(dets.class_ids, i[order])
    # Global ids: every label is the user's name at that index ("st. bernard" keeps its dot in the label).
    assert all(VOCAB[c] == lab for c, lab in zip(dets.class_ids, dets.labels))
    assert 10 not in set(dets.class_ids.tolist())  # the duplicate "dog" maps to index 1


def test_batches_equal_one_image_at_a_time(tiny_mm_dir, example_photo, coco_photo, monkeypatch):
    from groundscope.models import detector as detector_module

    # These photos resize to ~800x1200: one per pass on a CPU by default (next test); lift the cap to batch them.
    monkeypatch.setattr(detector_module, "CPU_TOKENS_PER_PASS", 10**9)
    det = gs.load_detector(tiny_mm_dir)
    a = gs.load_image(example_photo)
    b = a.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # same size: fused in one padded-text batch
    c = gs.load_image(coco_photo)  # another size: its own group
    lists = [["cat", "couch"], ["remote control", "bed", "a very long name for a lamp"], ["cat"]]
    batched = det.detect([a, b, c], lists, max_detections=20, batch_size=3)
    for im, cl, got in zip([a, b, c], lists, batched):
        alone = det.detect(im, cl, max_detections=20, batch_size=1)
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-4)
        np.testing.assert_allclose(got.xyxy, alone.xyxy, atol=1e-3)
        assert got.labels == alone.labels
    # Captions of different lengths per image, grounding and referring, too.
    g = det.ground([a, b], ["a cat on a couch", "a remote control next to a big bed"], [["a cat"], ["a big bed", "remote"]])
    for im, cap, ph, got in zip([a, b], ["a cat on a couch", "a remote control next to a big bed"], [["a cat"], ["a big bed", "remote"]], g):
        alone = det.ground(im, cap, ph)
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-4)
    r = det.refer([a, b], ["the cat", "the remote on the left of the bed"], top_k=3)
    for im, e, got in zip([a, b], ["the cat", "the remote on the left of the bed"], r):
        np.testing.assert_allclose(got.scores, det.refer(im, e, top_k=3).scores, atol=1e-4)


def test_cpu_passes_hold_at_most_one_large_image(tiny_mm_dir, example_photo, monkeypatch):
    """On a CPU, batch_size is capped by image tokens: 800x1333-size inputs go one per forward pass, small ones
    still batch."""
    from groundscope.models import detector as detector_module
    from groundscope.models.detector import _image_tokens

    assert _image_tokens(800, 1333) == 100 * 167 + 50 * 84 + 25 * 42 + 13 * 21 == 22223
    det = gs.load_detector(tiny_mm_dir)
    assert det._pairs_per_pass(4, 800, 1333) == 1 and det._pairs_per_pass(4, 256, 416) == 4
    seen = []
    real = staged.encode_images
    monkeypatch.setattr(staged, "encode_images", lambda m, px, *a: seen.append(px.shape[0]) or real(m, px, *a))
    det.detect([example_photo, example_photo], ["cat"], batch_size=4)
    assert seen == [1, 1]
    monkeypatch.setattr(detector_module, "CPU_TOKENS_PER_PASS", 10**9)
    seen.clear()
    det.detect([example_photo, example_photo], ["cat"], batch_size=4)
    assert seen == [2]


def test_text_encoding_is_cached_across_images(tiny_mm_dir, example_photo, monkeypatch):
    det = gs.load_detector(tiny_mm_dir)
    calls = []
    real = staged.encode_text
    monkeypatch.setattr(staged, "encode_text", lambda m, ids: calls.append(ids.shape) or real(m, ids))
    det.detect([example_photo] * 3, ["cat", "couch"])
    det.detect(example_photo, ["cat", "couch"])
    assert len(calls) == 1


def test_backbone_runs_once_per_image_for_all_chunks(short_text_model, example_photo, monkeypatch):
    det = gs.load_detector(short_text_model)
    seen = []
    real = staged.encode_images
    monkeypatch.setattr(staged, "encode_images", lambda m, px, *a: seen.append(px.shape[0]) or real(m, px, *a))
    vocab = [v for v in VOCAB if v != "dog"]
    assert len(chunk_classes(det.tokenizer, vocab, det.max_text_len)) >= 3
    det.detect([example_photo, example_photo], vocab, batch_size=4)
    assert sum(seen) == 2


def test_clear_cache_drops_stale_text_encodings(tiny_mm_dir, example_photo):
    det = gs.load_detector(tiny_mm_dir)
    before = det.detect(example_photo, ["cat"], max_detections=5)
    with torch.no_grad():
        det.model.model.text_projection.weight.mul_(-1.0)  # new weights: the cached encoding is stale now
    stale = det.detect(example_photo, ["cat"], max_detections=5)
    det.clear_cache()
    fresh = det.detect(example_photo, ["cat"], max_detections=5)
    np.testing.assert_allclose(stale.scores, before.scores)
    assert not np.allclose(fresh.scores, before.scores)
