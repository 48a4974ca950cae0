"""The bundled nano model: ships inside the package, loads offline by name, and finds the objects of the example
synthetic image (the `make demo` image) with the right names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import groundscope as gs
from groundscope.cli import app
from groundscope.detections import box_iou
from groundscope.models.hub import BUNDLED_DIR, ModelLoadError
from groundscope.models.registry import REGISTRY

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
IMAGE = EXAMPLES / "synth_shapes.png"


@pytest.fixture(scope="module")
def example() -> dict:
    return json.loads((EXAMPLES / "synth_shapes.json").read_text())


@pytest.fixture(scope="module")
def nano():
    return gs.load_detector("nano")


def test_nano_ships_in_the_package_small_and_documented():
    entry = REGISTRY["nano"]
    folder = BUNDLED_DIR / entry.source
    assert entry.bundled
    weights = folder / "model.safetensors"
    assert weights.stat().st_size < 26_000_000
    card = (folder / "README.md").read_text()
    for must in ("groundscope train configs/nano_synth.yaml", "groundscope eval synth", "base_AP50", "novel_AP50",
                 "rec_P@1"):
        assert must in card, must
    # the model card's numbers are the ones measured (results.json next to it, written by `eval synth`)
    measured = json.loads((folder / "results.json").read_text())
    for key in ("base_AP", "base_AP50", "novel_AP50", "synonyms_AP50", "rec_P@1"):
        assert f"{measured[key]:.3f}" in card, key


def test_nano_loads_offline_by_name(nano, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    det = gs.load_detector("nano")
    assert det.image_size == nano.image_size
    assert type(det.model).__name__ == "MMGroundingDinoForObjectDetection"


def test_offline_error_for_a_hub_model_points_at_nano(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="nano ship with groundscope and run offline"):
        gs.load_detector("llmdet-tiny")


def test_nano_names_the_objects_of_the_example_image(nano, example):
    """The shipped weights on the `make demo` image, by the issue's rule: an object is right when the best-scoring
    detection overlapping it (IoU >= 0.5) carries its own name with score >= 0.3 and no detection of another name
    scores >= 0.3 on it. DEMO_RIGHT objects were right when the weights were bundled (results.json records it);
    the two absent classes are never reported."""
    classes = example["classes"]
    dets = nano.detect(IMAGE, classes, box_threshold=0.0, max_detections=300)
    right = []
    for obj in example["objects"]:
        iou = box_iou(np.asarray([obj["box"]], dtype=np.float32), dets.xyxy)[0]
        over = np.nonzero(iou >= 0.5)[0]
        if not len(over):
            continue
        best = over[np.argmax(dets.scores[over])]
        others = [i for i in over if dets.labels[i] != obj["name"] and dets.scores[i] >= 0.3]
        if dets.labels[best] == obj["name"] and dets.scores[best] >= 0.3 and not others:
            right.append(obj["name"])
    recorded = json.loads((BUNDLED_DIR / "nano" / "results.json").read_text())
    assert len(right) >= recorded["demo_objects_right"], (right, dets[dets.scores >= 0.3])
    present = {o["name"] for o in example["objects"]}
    confident = dets[dets.scores >= 0.3]
    assert all(label in present for label in confident.labels), confident


def test_demo_command_writes_png_and_json(tmp_path, example):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["detect", str(IMAGE), "--classes", ",".join(example["classes"]),
                                   "--model", "nano", "--out", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "synth_shapes.json").read_text())
    assert record["model"] == "nano" and record["detections"]
    assert (out / "synth_shapes.png").stat().st_size > 10_000


def test_make_demo_runs_nano_offline_on_the_example(example):
    """`make demo` is the README's first command: it must stay the offline nano run on this example."""
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    demo = makefile.split("\ndemo:")[1].split("\n\n")[0]
    assert "HF_HUB_OFFLINE=1" in demo and "--model nano" in demo and "examples/synth_shapes.png" in demo
    assert f'--classes "{",".join(example["classes"])}"' in demo
