"""kill -9 at a random moment of `label`, `eval run`, `train` (also in the middle of a checkpoint write),
`groundingcap` and `distill embed-regions`: rerunning the same command finishes the work, and what it leaves is
what an uninterrupted run leaves (the same bytes for files; the same losses and parameters, exactly, for
training).

The killed run is the real command line in a subprocess, killed with SIGKILL once it has finished some work (its
resume log, journal or cache has grown), after a random delay drawn from a seeded generator (the seed is in the
test's name, so a failure replays). The uninterrupted reference and the rerun are the same command in this
process. Both sides run torch on one thread, so their arithmetic is the same.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from typer.testing import CliRunner

from groundscope.cli import app

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
CLASSES = "red circle,cyan star,blue diamond,green square"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from groundscope.data import generate_world

    out = tmp_path_factory.mktemp("crash_world")
    generate_world(out, 10, seed=3, split="train")
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from conftest import TINY_NANO

    from groundscope.train.nano import build_nano

    return build_nano(tmp_path_factory.mktemp("crash_tiny"), **TINY_NANO)


def cli(args: list[str]) -> str:
    """The command in this process; it must succeed."""
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, f"{args[0]} exited {res.exit_code}: {res.output[-3000:]}"
    return res.output


def kill_when(args: list[str], ready: Callable[[], bool], seed: int, max_delay: float, *,
              prelude: str = "", timeout: float = 240) -> float:
    """Run `groundscope ARGS` in a subprocess, wait for `ready()`, sleep a random time in [0, max_delay), SIGKILL
    it. -> the delay. Fails the test when the command ends before it is killed (the moment was never reached)."""
    code = f"{prelude}\nimport sys\nfrom groundscope.cli import app\nsys.argv = ['groundscope', *{args!r}]\napp()"
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"{args[0]} ended (exit {proc.returncode}) before the moment to kill it: "
                            f"{proc.stderr.read().decode(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{args[0]} never reached the moment to kill it in {timeout:.0f} s")
            time.sleep(0.002)
        delay = random.Random(seed).uniform(0, max_delay)
        time.sleep(delay)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert not finished and proc.returncode == -signal.SIGKILL, f"{args[0]} finished before the kill"
    return delay


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative name -> bytes), temporary files of an interrupted write excluded."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".tmp" not in p.name}


# ----------------------------------------------------------------------------------------------- label
@pytest.mark.parametrize("seed", [11])
def test_label_killed_then_rerun_writes_the_uninterrupted_file(world, tmp_path, seed):
    images = str(world / "images")
    args = lambda out: ["label", images, "--classes", CLASSES, "--model", "nano", "--batch-size", "1",  # noqa: E731
                        "--out", str(out)]
    cli(args(tmp_path / "ref" / "labels.json"))
    out = tmp_path / "run" / "labels.json"
    log = out.with_name(out.name + ".partial.jsonl")
    kill_when(args(out), lambda: lines(log) >= 3, seed, max_delay=0.5)
    assert not out.exists() and lines(log) >= 3  # killed mid-run: chunks logged, no dataset file yet
    cli(args(out))
    assert out.read_bytes() == (tmp_path / "ref" / "labels.json").read_bytes()
    assert not log.exists()


# ----------------------------------------------------------------------------------------------- eval run
@pytest.mark.parametrize("seed", [12])
def test_eval_run_killed_then_rerun_writes_the_uninterrupted_results(world, tmp_path, seed):
    args = lambda out: ["eval", "run", str(world / "coco.json"), "--model", "nano", "--dataset", "coco",  # noqa: E731
                        "--images", str(world), "--out", str(out), "--no-progress"]
    cli(args(tmp_path / "ref"))
    out = tmp_path / "run"
    kill_when(args(out), lambda: lines(out / "results.jsonl") >= 3, seed, max_delay=0.5)
    assert not (out / "metrics.json").exists()
    cli(args(out))
    for name in ("results.json", "metrics.json"):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


# ----------------------------------------------------------------------------------------------- train
def _train_config(tiny_dir: Path, world: Path, tmp_path: Path) -> Path:
    import yaml

    cfg = {
        "model": {"path": str(tiny_dir), "device": "cpu"},
        "data": {"train": {"path": str(world / "odvg_det.jsonl"), "label_map": str(world / "label_map.json")},
                 "scales": [112, 128], "max_size": 192, "flip_prob": 0.5, "num_negatives": 10},
        "optim": {"lr": 1e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "train": {"max_steps": 10, "batch_size": 2, "checkpoint_every": 1, "keep_checkpoints": 1,
                  "progress": False},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
            if "loss" in r}


def _params(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (weights,) = sorted((run / "model").glob("*.safetensors"))
    return load_file(weights)


@pytest.mark.parametrize("moment, seed", [("random", 13), ("checkpoint-write", 14)])
def test_train_killed_then_rerun_computes_the_uninterrupted_run(tiny_dir, world, tmp_path, moment, seed):
    config = _train_config(tiny_dir, world, tmp_path)
    args = lambda out: ["train", str(config), "--out", str(out), "--resume"]  # noqa: E731
    cli(args(tmp_path / "ref"))
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    if moment == "random":
        ready = lambda: lines(out / "log.jsonl") >= 3  # noqa: E731
        kill_when(args(out), ready, seed, max_delay=1.0)
    else:  # the moment a checkpoint's temporary file exists: killed while torch.save writes it
        ready = lambda: lines(out / "log.jsonl") >= 2 and any(p.name.startswith(".") for p in  # noqa: E731
                                                              (ckpts.iterdir() if ckpts.is_dir() else []))
        kill_when(args(out), ready, seed, max_delay=0.0)
    assert not (out / "model").exists()  # the run did not finish
    cli(args(out))
    ref, run = _losses(tmp_path / "ref"), _losses(out)
    assert sorted(run) == list(range(1, 11)) and run == ref  # every step's loss, exactly
    want, got = _params(tmp_path / "ref"), _params(out)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert not [p.name for p in ckpts.iterdir() if ".tmp-" in p.name]  # the killed write's file is cleaned up


# ----------------------------------------------------------------------------------------------- groundingcap
PARSER = ("import sys; sys.path.insert(0, {tests!r}); import test_groundingcap_build as t; t._make_nlp()")


@pytest.mark.parametrize("seed", [15])
def test_groundingcap_killed_then_rerun_writes_the_uninterrupted_file(world, tiny_mm_dir, tmp_path, seed):
    pytest.importorskip("spacy", reason="the nlp extra (spaCy) is needed for noun phrases")
    import test_groundingcap_build as t

    nlp_dir = tmp_path / "en_test_parser"
    t._make_nlp().to_disk(nlp_dir)
    captions = tmp_path / "captions.jsonl"
    records = [json.loads(x) for x in (world / "groundingcap.jsonl").read_text().splitlines()]
    with captions.open("w") as f:
        for r in records * 3:  # 30 entries
            f.write(json.dumps({"image": r["filename"], "caption": r["conversations"][1]["value"]}) + "\n")
    args = lambda out: ["groundingcap", "--images", str(world), "--captions", str(captions), "--model",  # noqa: E731
                        str(tiny_mm_dir), "--out", str(out), "--spacy-model", str(nlp_dir), "--batch-size", "1"]
    cli(args(tmp_path / "ref" / "gc.jsonl"))
    out = tmp_path / "run" / "gc.jsonl"
    log = out.with_name(out.name + ".partial.jsonl")
    kill_when(args(out), lambda: lines(log) >= 3, seed, max_delay=0.3,
              prelude=PARSER.format(tests=str(ROOT / "tests")))
    assert not out.exists()
    cli(args(out))
    assert out.read_bytes() == (tmp_path / "ref" / "gc.jsonl").read_bytes()
    assert not log.exists()


# ----------------------------------------------------------------------------------------------- distill
@pytest.mark.parametrize("seed", [16])
def test_embed_regions_killed_then_rerun_writes_the_uninterrupted_cache(world, tiny_dir, tmp_path, seed):
    from conftest import tokenizer_dir

    from groundscope.distill.synth_teacher import build_clip

    model, proc, tok = build_clip(tokenizer_dir(), image_size=32, patch=8, width=32, layers=1, dim=16)
    teacher = tmp_path / "teacher"
    for part in (model, proc, tok):
        part.save_pretrained(teacher)
    args = lambda out: ["distill", "embed-regions", str(world / "coco.json"), "--teacher", str(teacher),  # noqa: E731
                        "--model", str(tiny_dir), "--out", str(out), "--k", "3"]
    cli(args(tmp_path / "ref"))
    out = tmp_path / "run"
    cached = lambda: out.is_dir() and sum(1 for p in out.rglob("*") if p.is_file()) >= 3  # noqa: E731
    kill_when(args(out), cached, seed, max_delay=0.3)
    assert tree(out) != tree(tmp_path / "ref")  # killed before the end
    cli(args(out))
    assert tree(out) == tree(tmp_path / "ref")
