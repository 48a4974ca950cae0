"""`groundscope train` with ``task: sam``: SAM's losses on hand-made cases, the prompt draws, exact resume, the
exported folder loading as a segmenter, and config errors."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from groundscope.train.checkpoint import load_checkpoint
from groundscope.train.config import ConfigError, config_from_dict

TINY = {
    "vision_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 16,
                      "output_channels": 16, "mlp_dim": 64, "window_size": 4, "global_attn_indexes": [1],
                      "num_pos_feats": 8},
    "prompt_encoder_config": {"hidden_size": 16, "patch_size": 16, "mask_input_channels": 4},
    "mask_decoder_config": {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_dim": 32,
                            "iou_head_hidden_dim": 16},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from groundscope.data import generate_world

    out = tmp_path_factory.mktemp("samworld")
    generate_world(out, 4, seed=4, split="test", regions=True)
    return out


def _cfg(world, out, **sections):
    raw = {"task": "sam", "model": {"path": "scratch", "device": "cpu"},
           "sam": {"image_size": 128, "architecture": TINY, **sections.pop("sam", {})},
           "data": {"train": [{"path": str(world / "regions.json"), "format": "regions"}]},
           "optim": {"lr": 3e-3}, "schedule": {"kind": "cosine", "warmup_steps": 1},
           "train": {"max_steps": 4, "batch_size": 2, "out_dir": str(out), "checkpoint_every": 0,
                     "keep_checkpoints": 0, "progress": False}}
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return config_from_dict(raw)


def test_losses_on_hand_made_cases():
    from groundscope.train.sam import dice_loss, focal_loss

    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    perfect = (target * 2 - 1) * 50  # logits far on the right side everywhere
    assert float(dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(focal_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    # all-zero logits: p = 0.5 everywhere; dice = 1 - (2 * 8 + 1) / (32 + 16 + 1)
    zero = torch.zeros(1, 8, 8)
    assert float(dice_loss(zero, target)) == pytest.approx(1 - 17 / 49)
    # focal at p = 0.5: alpha_t * ln 2 * 0.25 averaged over 16 object and 48 background pixels
    want = (16 * 0.25 + 48 * 0.75) * np.log(2) * 0.25 / 64
    assert float(focal_loss(zero, target)) == pytest.approx(want)


def test_prompts_fall_on_the_object_and_inside_the_image():
    from groundscope.train.sam import clicks_in, jitter_box, mask_box

    rng = np.random.default_rng(0)
    m = np.zeros((30, 40), bool)
    m[5:20, 10:25] = True
    assert mask_box(m) == [10, 5, 25, 20]
    for _ in range(50):
        for x, y in clicks_in(m, 3, rng):
            assert m[int(y), int(x)]
        x1, y1, x2, y2 = jitter_box(mask_box(m), rng, 0.1, 40, 30)
        assert 0 <= x1 < x2 <= 40 and 0 <= y1 < y2 <= 30
        assert abs(x1 - 10) <= 1.5 + 1e-9 and abs(y2 - 20) <= 1.5 + 1e-9  # at most 10 % of the 15 px side
    edge = jitter_box([0, 0, 2, 2], rng, 0.5, 2, 2)
    assert edge[2] - edge[0] >= 1 and edge[3] - edge[1] >= 1


def test_resume_equals_an_uninterrupted_run_and_the_model_segments(world, tmp_path):
    from groundscope.models.segmenter import load_segmenter
    from groundscope.train.trainers import build_trainer

    straight = build_trainer(_cfg(world, tmp_path / "a")).fit()
    assert straight["step"] == 4

    def interrupt_at_2(trainer, record):
        if record["step"] == 2:
            trainer._on_sigint(signal.SIGINT, None)

    first = build_trainer(_cfg(world, tmp_path / "b")).fit(on_step=interrupt_at_2)
    assert first["interrupted"] and first["step"] == 2
    resumed = build_trainer(_cfg(world, tmp_path / "b")).fit(resume=True)
    assert resumed["step"] == 4

    def losses(path):
        return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines()) if r["type"] == "train"}

    a, b = losses(tmp_path / "a" / "log.jsonl"), losses(tmp_path / "b" / "log.jsonl")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    sa = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    sb = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    for k, v in sa["model"].items():
        assert torch.allclose(v, sb["model"][k], atol=1e-6), k
    assert (tmp_path / "a" / "loss.png").exists()

    seg = load_segmenter(tmp_path / "a" / "model")  # the exported folder is a segmenter
    image = sorted((world / "images").iterdir())[0]
    res = seg.segment(image, boxes=[[10, 10, 80, 60]])
    assert res.masks.shape[0] == 1


def test_each_prompt_kind_is_drawn_and_trains(world):
    from groundscope.train.sam import SamImageDataset, build_sam
    from groundscope.train.dam import read_region_sources

    cfg = _cfg(world, "unused", sam={"box_prob": 0.5, "click_prob": 0.25})
    _, proc = build_sam(TINY, 128)
    ds = SamImageDataset(read_region_sources(cfg.data.train), proc, cfg.sam, seed=0)
    kinds = [k for i in range(len(ds)) for k in ds[i].kinds]
    assert set(kinds) == {"box", "jitter", "click", "clicks"}
    item = ds[0]
    assert item.masks.shape[1:] == (128, 128) and item.pixel_values.shape == (3, 128, 128)
    for kind, p, m in zip(item.kinds, item.prompts, item.masks):
        if kind in ("click", "clicks"):  # every click lands on its object's mask (in the input frame)
            for x, y in p:
                assert m[int(y), int(x)] or m[max(0, int(y) - 1):int(y) + 2, max(0, int(x) - 1):int(x) + 2].any()
    before = [ds[i].kinds for i in range(len(ds))]
    ds.set_epoch(1)
    assert [ds[i].kinds for i in range(len(ds))] != before  # prompts are drawn again each epoch


def test_config_errors(world, tmp_path):
    with pytest.raises(ConfigError, match="sam.architecture"):
        config_from_dict({"task": "sam", "model": {"path": "scratch"},
                          "data": {"train": [{"path": str(world / "regions.json")}]}, "train": {"max_steps": 1}})
    with pytest.raises(ConfigError, match="add up to 1.2"):
        _cfg(world, tmp_path, sam={"box_prob": 0.7, "click_prob": 0.5})
    with pytest.raises(ConfigError, match="only applies to task: sam"):
        config_from_dict({"model": {"path": "x"}, "data": {"train": [{"path": "a.json"}]},
                          "train": {"max_steps": 1}, "sam": {"max_objects": 3}})
