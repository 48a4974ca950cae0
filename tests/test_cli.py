"""The `groundscope` CLI: files per image, bad images skipped and reported, clear exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from groundscope.cli import app

runner = CliRunner()


def test_detect_writes_json_and_png_and_reports_bad_images(tiny_mm_dir, example_photo, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(example_photo, imgs / "a.jpg")
    Image.open(example_photo).rotate(90, expand=True).save(imgs / "b.png")
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    out = tmp_path / "out"
    res = runner.invoke(app, ["detect", str(imgs), "--classes", "cat, remote control,couch", "--model", str(tiny_mm_dir),
                              "--box-threshold", "0.0", "--max-detections", "5", "--batch-size", "2", "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "broken.jpg" in res.output and "1 image(s) failed" in res.output
    for stem, size in [("a", Image.open(example_photo).size), ("b", Image.open(imgs / "b.png").size)]:
        rec = json.loads((out / f"{stem}.json").read_text())
        assert set(rec) == {"image", "width", "height", "model", "task", "detections"}
        assert (rec["width"], rec["height"]) == size and rec["task"] == "detect" and len(rec["detections"]) == 5
        d = rec["detections"][0]
        assert set(d) == {"box", "score", "label", "class_id"} and d["label"] in ("cat", "remote control", "couch")
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1]
        assert Image.open(out / f"{stem}.png").size == size
    assert not (out / "broken.json").exists()


def test_classes_file_ground_and_refer(tiny_mm_dir, example_photo, tmp_path):
    cf = tmp_path / "classes.txt"
    cf.write_text("# my classes\ncat\n\nteddy bear\n")
    res = runner.invoke(app, ["detect", str(example_photo), "--classes-file", str(cf), "-m", str(tiny_mm_dir),
                              "-t", "0", "-k", "3", "-o", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    labels = {d["label"] for d in json.loads((tmp_path / "d" / "chelsea.json").read_text())["detections"]}
    assert labels <= {"cat", "teddy bear"}

    res = runner.invoke(app, ["ground", str(example_photo), "--caption", "a cat lying on a sofa", "--phrase", "a cat",
                              "--phrase", "a sofa", "-m", str(tiny_mm_dir), "-t", "0", "-k", "4", "-o", str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "g" / "chelsea.json").read_text())
    assert rec["task"] == "ground" and len(rec["detections"]) == 4
    for d in rec["detections"]:
        (s, e), = d["span"]
        assert "a cat lying on a sofa."[s:e] == d["label"] and d["label"] in ("a cat", "a sofa")

    res = runner.invoke(app, ["refer", str(example_photo), "-e", "the cat", "--top-k", "2", "-m", str(tiny_mm_dir),
                              "-o", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "r" / "chelsea.json").read_text())
    assert [d["label"] for d in rec["detections"]] == ["the cat", "the cat"]


def test_detect_chunk_size_per_chunk_and_refer_rule(tiny_mm_dir, example_photo, tmp_path):
    """--chunk-size 1 --per-chunk keeps --max-detections boxes for each class (one prompt a class); --rec-rule
    mmgdino scores the expression by its best token, so the scores differ from the default mean rule."""
    res = runner.invoke(app, ["detect", str(example_photo), "-c", "cat,sofa,lamp", "-m", str(tiny_mm_dir), "-t", "0",
                              "-k", "2", "--chunk-size", "1", "--per-chunk", "-o", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    dets = json.loads((tmp_path / "d" / "chelsea.json").read_text())["detections"]
    assert [d["label"] for d in dets] == ["cat", "cat", "sofa", "sofa", "lamp", "lamp"]
    scores = {}
    for rule in ("mean", "mmgdino"):
        res = runner.invoke(app, ["refer", str(example_photo), "-e", "the cat", "-m", str(tiny_mm_dir),
                                  "--rec-rule", rule, "-o", str(tmp_path / rule)])
        assert res.exit_code == 0, res.output
        scores[rule] = json.loads((tmp_path / rule / "chelsea.json").read_text())["detections"][0]["score"]
    assert scores["mmgdino"] > scores["mean"]  # the best token is at least the mean, and random tokens differ
    res = runner.invoke(app, ["refer", str(example_photo), "-e", "the cat", "-m", str(tiny_mm_dir), "--rec-rule", "x"])
    assert res.exit_code == 2 and "--rec-rule" in res.output


def test_argument_errors_exit_2(tiny_mm_dir, example_photo, tmp_path):
    res = runner.invoke(app, ["detect", str(example_photo), "-m", str(tiny_mm_dir), "-o", str(tmp_path)])
    assert res.exit_code == 2 and "no classes given" in res.output
    res = runner.invoke(app, ["ground", str(example_photo), "--caption", "a cat", "--phrase", "a dog", "-m", str(tiny_mm_dir)])
    assert res.exit_code == 2 and "'a dog' does not occur" in res.output
    res = runner.invoke(app, ["detect", str(example_photo), "-c", "cat", "-m", "not-a-model", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "'not-a-model'" in res.output
    res = runner.invoke(app, ["detect", str(example_photo), "-c", "cat", "--classes-file", str(tmp_path / "missing.txt")])
    assert res.exit_code == 2 and "missing.txt" in res.output


def test_models_lists_the_registry():
    res = runner.invoke(app, ["models", "--json"])
    names = {e["name"] for e in json.loads(res.output)}
    assert {"gdino-tiny", "mm-gdino-large", "llmdet-tiny", "llmdet-large"} <= names


def test_missing_model_from_the_shell_is_one_line_exit_2_within_seconds(example_photo, tmp_path):
    exe = Path(sys.executable).with_name("groundscope")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    t = time.monotonic()
    proc = subprocess.run([str(exe), "detect", str(example_photo), "-c", "cat", "--model", "llmdet-tiny", "-o", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "llmdet-tiny" in lines[0] and "--model" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t < 60
