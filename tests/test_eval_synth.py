"""`evaluate_synth_world` / `groundscope eval synth`: the four parts run on the right files and their headline
numbers land under the right summary keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from groundscope.data.synth import generate_world
from groundscope.detections import Detections
from groundscope.evaluate import EvaluationInputError
from groundscope.cli.evaluate import eval_app
from groundscope.evaluate.synth import evaluate_synth_world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_test")
    generate_world(out, 6, seed=3, split="test")
    return out


class PartialOracle:
    """Answers base and novel class names from the ground truth, never finds a synonym-named object, and
    answers every referring expression with a box in the image corner (wrong for every synthetic target).

    So the summary must read base 1.0, novel 1.0, synonyms 0.0, referring 0.0: any mix-up of parts shows."""

    name = "partial-oracle"

    def __init__(self, world: Path):
        gt = json.loads((world / "coco_all.json").read_text())
        names = {c["id"]: c["name"] for c in gt["categories"]}
        files = {im["id"]: im["file_name"] for im in gt["images"]}
        self.boxes: dict[str, list[tuple[list[float], str]]] = {}
        for a in gt["annotations"]:
            x, y, w, h = a["bbox"]
            self.boxes.setdefault(files[a["image_id"]], []).append(([x, y, x + w, y + h], names[a["category_id"]]))
        self.loads = 0

    def _key(self, image) -> str:
        p = Path(image)
        return f"{p.parent.name}/{p.name}"

    def detect(self, images, classes, box_threshold=0.0, max_detections=300):
        out = []
        for image in images:
            found = [(b, classes.index(n)) for b, n in self.boxes.get(self._key(image), []) if n in classes]
            out.append(Detections([b for b, _ in found], [0.9] * len(found), [c for _, c in found],
                                  [classes[c] for _, c in found]))
        return out

    def refer(self, images, expressions, top_k=1):
        return [Detections([[0, 0, 4, 4]], [0.5], [0], [e]) for e in expressions]


def test_summary_takes_each_number_from_its_own_part(world, tmp_path):
    oracle = PartialOracle(world)
    result = evaluate_synth_world(oracle, world, tmp_path / "ev", progress=False)
    s = result["summary"]
    assert s["base_AP"] == pytest.approx(1.0) and s["base_AP50"] == pytest.approx(1.0)
    assert s["novel_AP50"] == pytest.approx(1.0)
    assert s["synonyms_AP50"] == pytest.approx(0.0)
    assert s["rec_P@1"] == pytest.approx(0.0)
    for part in ("base", "novel", "synonyms", "refexp"):
        assert json.loads((tmp_path / "ev" / part / "metrics.json").read_text())
    assert result["base"]["AP50"] == s["base_AP50"]


def test_model_factory_loads_once_for_all_parts(world, tmp_path):
    made = []

    def factory():
        made.append(PartialOracle(world))
        return made[-1]

    evaluate_synth_world(factory, world, tmp_path / "ev", progress=False)
    assert len(made) == 1
    evaluate_synth_world(factory, world, tmp_path / "ev", progress=False)  # everything done: resumes, no load
    assert len(made) == 1


def test_folder_that_is_not_a_test_split_is_refused(tmp_path):
    generate_world(tmp_path / "train", 2, seed=0, split="train")
    with pytest.raises(EvaluationInputError, match="coco_base.json.*--split test"):
        evaluate_synth_world(lambda: None, tmp_path / "train", tmp_path / "ev")


def test_cli_writes_summary_json(world, tmp_path, monkeypatch):
    import groundscope

    monkeypatch.setattr(groundscope, "load_detector", lambda name, device="cpu": PartialOracle(world))
    out = tmp_path / "ev"
    res = CliRunner().invoke(eval_app, ["synth", str(world), "--model", "oracle", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "oracle" and summary["novel_AP50"] == pytest.approx(1.0)
    assert "novel_AP50" in res.output and "synonyms_AP50" in res.output

    res = CliRunner().invoke(eval_app, ["synth", str(tmp_path / "nowhere"), "--model", "x", "--out", str(out)])
    assert res.exit_code == 2 and "--split test" in res.output
