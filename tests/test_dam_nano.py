"""The bundled dam-nano describer: ships inside the package, loads offline by name, describes the regions of the
demo image from their boxes (the colours right), and its card carries the numbers bench_dam.py measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import groundscope as gs
from groundscope.cli import app
from groundscope.evaluate.dlc import description_subject
from groundscope.models.hub import BUNDLED_DIR
from groundscope.models.registry import REGISTRY

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
IMAGE = EXAMPLES / "synth_shapes.png"


@pytest.fixture(scope="module")
def example() -> dict:
    return json.loads((EXAMPLES / "synth_shapes.json").read_text())


@pytest.fixture(scope="module")
def dam():
    return gs.load_describer("dam-nano", device="cpu")


def test_dam_nano_ships_small_with_its_measured_numbers():
    entry = REGISTRY["dam-nano"]
    folder = BUNDLED_DIR / entry.source
    assert entry.bundled and entry.kind == "describer"
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 30 * 2**20
    card = (folder / "README.md").read_text()
    results = json.loads((folder / "results.json").read_text())
    measured = results["arms"][results["bundled_arm"]]
    for key in ("pos", "neg", "avg"):
        assert f"{measured[key]:.3f}" in card, key
    assert "groundscope pretrain-vlm" in card and "bench_dam.py" in card


def test_dam_nano_describes_the_demo_objects_by_their_colour(dam, example, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = dam.describe(str(IMAGE), [{"box": o["box"]} for o in example["objects"]], temperature=0.0)
    assert len(out) == len(example["objects"]) and all(d.ok for d in out)
    right = sum(o["name"].split()[0] in description_subject(d.text).split() for o, d in zip(example["objects"], out))
    assert right >= 6, [d.text for d in out]


def test_describe_cli_with_the_bundled_model(tmp_path, example):
    box = ",".join(str(v) for v in example["objects"][-1]["box"])  # the yellow diamond
    res = CliRunner().invoke(app, ["describe", str(IMAGE), "--model", "dam-nano", "--box", box, "--json",
                                   "--out", str(tmp_path / "d.png"), "--temperature", "0"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["regions"][0]["text"].lower().startswith("a ") and "yellow" in record["regions"][0]["text"]
    assert (tmp_path / "d.png").stat().st_size > 10_000


def _bench_module(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_dam_resumes_an_arm_cut_off_and_reuses_a_finished_one(tmp_path):
    """bench_dam.py's train_arm: a fresh arm trains, an arm with a checkpoint but no model goes on with --resume
    (its log appended, not replaced), and an arm with a model is reused."""
    bench = _bench_module("bench_dam")
    calls = []
    bench.sh = lambda cmd, log, append=False: calls.append((cmd, log, append)) or 90.0
    out = tmp_path / "boxmix"
    assert bench.train_arm("boxmix", out, "runs/base_vlm", 10) == (1.5, False)
    cmd, log, append = calls[-1]
    assert "--resume" not in cmd and not append and log == tmp_path / "boxmix.log"
    assert "dam.box_prob=0.5" in cmd and "train.max_steps=10" in cmd
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"")
    assert bench.train_arm("boxmix", out, "runs/base_vlm", 10) == (1.5, True)
    assert calls[-1][0][-1] == "--resume" and calls[-1][2] is True
    (out / "model").mkdir()
    (out / "model" / "config.json").write_text("{}")
    assert bench.train_arm("boxmix", out, "runs/base_vlm", 10) is None and len(calls) == 2


def test_dam_nano_from_git_writes_the_committed_bundle_and_the_card_quotes_its_chain(tmp_path):
    """dam_nano_from_git.py writes the bundle of a commit byte for byte (git's own blob hashes) with source.json;
    bundle_dam_nano.py's chain stops there and the card quotes that model's card on how its tower was trained."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    if subprocess.run(git + ["rev-parse", "HEAD:groundscope/models/bundled/dam-nano/README.md"],
                      capture_output=True).returncode:
        pytest.skip("not a git checkout with a committed dam-nano")
    from_git = _bench_module("dam_nano_from_git")
    out = tmp_path / "prev"
    commit = from_git.extract("HEAD", out)
    listed = subprocess.run(git + ["ls-tree", "-r", "HEAD", from_git.BUNDLE], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert listed
    for line in listed:
        blob, name = line.split()[2], line.split("\t")[1]
        written = out / Path(name).relative_to(from_git.BUNDLE)
        assert subprocess.run(["git", "hash-object", str(written)], capture_output=True, text=True,
                              check=True).stdout.strip() == blob, name
    assert json.loads((out / "source.json").read_text())["commit"] == commit
    with pytest.raises(SystemExit, match="'no-such-rev' is not a commit"):
        from_git.extract("no-such-rev", tmp_path / "bad")

    bundle = _bench_module("bundle_dam_nano")
    bundle.ROOT = tmp_path  # the chain's folders are relative to the repository root
    vlm = tmp_path / "vlm"
    vlm.mkdir()
    (vlm / "train_log.json").write_text(json.dumps({"config": {"vision_init": "prev", "data": "d/x.jsonl"},
                                                    "summary": {}}))
    chain = bundle.vlm_chain("vlm")
    assert [c[0] for c in chain] == ["prev", "vlm"] and chain[0][1]["commit"] == commit
    assert bundle.vlm_command(chain[0][1], "prev") == f"python benchmarks/dam_nano_from_git.py {commit} prev"
    text = bundle.vision_stage_text(chain, 0.0)
    quoted = bundle.tower_sentences((out / "README.md").read_text())  # the whole wrapped sentence(s)
    assert quoted and "the tower" in quoted.lower()
    assert f"commit {commit}" in text and f'That card: "{quoted}"' in text and "keeps it frozen" in text

    # a vision stage at another input size between the committed tower and the base VLM: the card says so
    size = json.loads((out / "vision_tower" / "config.json").read_text())["image_size"]
    tower = tmp_path / "tower"
    tower.mkdir()
    (tower / "train_log.json").write_text(json.dumps({
        "config": {"vision_init": "prev", "data": "d/x.jsonl", "vision_steps": 7, "vision_batch_size": 8,
                   "image_size": size + 64, "lr": 5e-4, "vision_attributes": ["texture"]},
        "summary": {"vision_val_accuracy": [0.9, 0.5, 0.25]}}))
    (vlm / "train_log.json").write_text(json.dumps({"config": {"vision_init": "tower", "data": "d/x.jsonl"},
                                                    "summary": {}}))
    text = bundle.vision_stage_text(bundle.vlm_chain("vlm"), 0.0)
    assert f"started as the one dam-nano shipped at commit {commit}" in text
    assert (f"went on for 7 steps of 8 crops of `d/x.jsonl` at {size + 64} px, the position embedding resized "
            f"from the {size}-px tower's grid, learning rate 0.0005") in text
    assert "colour 0.90, shape 0.50, texture 0.25" in text

    # one more vision stage on the first 3 images of a larger world, half of its crops mirrored
    tower2 = tmp_path / "tower2"
    tower2.mkdir()
    world = tmp_path / "data" / "w12"
    world.mkdir(parents=True)
    (world / "meta.json").write_text(json.dumps({"images": 5, "seed": 0, "split": "train"}))
    (world / "groundingcap.jsonl").write_text("".join(f'{{"i": {i}}}\n' for i in range(5)))
    (world / "groundingcap_first3.jsonl").write_text("".join(f'{{"i": {i}}}\n' for i in range(3)))
    first3 = "data/w12/groundingcap_first3.jsonl"
    settings = {"vision_init": "tower", "data": first3, "lm": "lm", "steps": 1, "captions": False,
                "vision_steps": 5, "vision_batch_size": 8, "image_size": size + 64, "vision_flip": True}
    (tower2 / "train_log.json").write_text(json.dumps({"config": settings, "summary": {}}))
    (vlm / "train_log.json").write_text(json.dumps({"config": {"vision_init": "tower2", "data": "d/x.jsonl"},
                                                    "summary": {}}))
    text = bundle.vision_stage_text(bundle.vlm_chain("vlm"), 0.0)
    assert (f"learning rate 0.0005, then 5 steps of 8 crops of `{first3}`, half of the crops mirrored "
            "left-right") in text
    assert "--vision-flip" in bundle.vlm_command(settings, "tower2")
    assert "--crop-mode" not in bundle.vlm_command(settings, "tower2")
    assert " --crop-mode square" in bundle.vlm_command({**settings, "crop_mode": "square"}, "tower2")
    assert bundle.vision_runs_text([("tower2", {**settings, "crop_mode": "square"}, {})], size + 64) == (
        f"5 steps of 8 crops of `{first3}`, half of the crops mirrored left-right, square focal crops")
    assert bundle.synth_command(first3) == ("groundscope synth --out data/w12 --n 5 --seed 0 --split train --regions\n"
                                            f"head -3 data/w12/groundingcap.jsonl > {first3}")
    assert bundle.synth_command("data/w12/groundingcap.jsonl").endswith("--regions")
