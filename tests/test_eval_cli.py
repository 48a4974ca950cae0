"""`groundscope eval <metric>` commands, driven through typer's CliRunner on the eval sub-app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from groundscope.evaluate import COCO_KEYS
from groundscope.cli.evaluate import eval_app

runner = CliRunner()


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def gt_dict(lvis: bool = False) -> dict:
    images = [
        {"id": 1, "file_name": "1.png", "width": 640, "height": 480},
        {"id": 2, "file_name": "2.png", "width": 640, "height": 480},
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [100, 100, 120, 80], "area": 9600, "iscrowd": 0},
    ]
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "remote control"}]
    if lvis:
        for img in images:
            img["neg_category_ids"], img["not_exhaustive_category_ids"] = [], []
        for c in cats:
            c["frequency"] = "c"
    return {"images": images, "annotations": anns, "categories": cats}


RESULTS = [
    {"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9},
    {"image_id": 2, "category_id": 2, "bbox": [300, 300, 20, 20], "score": 0.8},  # false positive above the hit
    {"image_id": 2, "category_id": 2, "bbox": [100, 100, 120, 80], "score": 0.6},
]


@pytest.fixture()
def files(tmp_path):
    return {
        "gt": write(tmp_path / "instances.json", gt_dict()),
        "lvis": write(tmp_path / "lvis.json", gt_dict(lvis=True)),
        "res": write(tmp_path / "results.json", RESULTS),
        "tmp": tmp_path,
    }


def invoke(*args) -> object:
    return runner.invoke(eval_app, [str(a) for a in args])


def test_coco_command_prints_table_and_writes_json(files):
    out = files["tmp"] / "metrics.json"
    plot = files["tmp"] / "pr.png"
    result = invoke("coco", files["gt"], files["res"], "--out", out, "--per-class", "--plot", plot)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert set(COCO_KEYS) <= set(metrics)
    # class 1 perfect, class 2 has precision 1/2 at its only recall level
    assert metrics["AP"] == pytest.approx(0.75)
    assert [r["AP"] for r in metrics["per_class"]] == pytest.approx([1.0, 0.5])
    assert "AP50" in result.stdout and "remote control" in result.stdout and "0.7500" in result.stdout
    with Image.open(plot) as png:
        assert png.format == "PNG"


def test_lvis_command_standard_and_fixed(files):
    out = files["tmp"] / "lvis_metrics.json"
    result = invoke("lvis", files["lvis"], files["res"], "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300"):
        assert key in metrics
    assert metrics["APc"] == pytest.approx(0.75) and metrics["APr"] == -1.0
    assert metrics["fixed"]["AP"] == pytest.approx(0.75) and metrics["fixed"]["max_dets_per_cat"] == 10000
    assert "fixed AP" in result.stdout
    result = invoke("lvis", files["lvis"], files["res"], "--out", out, "--no-fixed", "--dets-per-cat", 5)
    assert result.exit_code == 0 and "fixed" not in json.loads(out.read_text())


def test_odinw_command_triples_and_manifest(files):
    tmp = files["tmp"]
    write(tmp / "perfect.json", [RESULTS[0], RESULTS[2]])
    manifest = write(
        tmp / "odinw.json", [{"name": "Aquarium", "annotations": "instances.json", "results": "perfect.json"}]
    )
    out = tmp / "odinw_metrics.json"
    result = invoke("odinw", "--manifest", manifest, "Pothole", files["gt"], files["res"], "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert list(metrics["datasets"]) == ["Aquarium", "Pothole"]
    assert metrics["datasets"]["Aquarium"]["AP"] == pytest.approx(1.0)
    assert metrics["average"]["AP"] == pytest.approx((1.0 + 0.75) / 2)
    assert "average" in result.stdout and "Pothole" in result.stdout
    bad = invoke("odinw", "Pothole", files["gt"])
    assert bad.exit_code == 2 and "triples" in bad.stderr


def test_refexp_and_phrase_commands(files):
    tmp = files["tmp"]
    ref_gt = write(
        tmp / "refcoco.json",
        {
            "images": [{"id": 0, "file_name": "1.png", "caption": "the cat"}],
            "annotations": [{"id": 1, "image_id": 0, "bbox": [10, 10, 50, 50]}],
        },
    )
    ref_res = write(
        tmp / "ref_res.json",
        [
            {"image_id": 0, "bbox": [200, 200, 5, 5], "score": 0.9},
            {"image_id": 0, "bbox": [10, 10, 50, 50], "score": 0.5},
        ],
    )
    out = tmp / "ref.json"
    result = invoke("refexp", ref_gt, ref_res, "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == {"P@1": 0.0, "P@5": 1.0, "P@10": 1.0, "num_expressions": 1}

    caption = "a cat and a remote"
    ph_gt = write(
        tmp / "flickr.json",
        {
            "images": [{"id": 3, "file_name": "1.png", "caption": caption}],
            "annotations": [
                {"id": 1, "image_id": 3, "bbox": [0, 0, 10, 10], "phrase_ids": 0, "tokens_positive": [[0, 5]]},
                {"id": 2, "image_id": 3, "bbox": [90, 90, 10, 10], "phrase_ids": 0, "tokens_positive": [[0, 5]]},
            ],
        },
    )
    ph_res = write(tmp / "ph_res.json", [{"image_id": 3, "phrase_id": 0, "bbox": [90, 90, 10, 10], "score": 0.9}])
    result = invoke("phrase", ph_gt, ph_res, "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["R@1"] == 1.0
    result = invoke("phrase", ph_gt, ph_res, "--out", out, "--protocol", "merged")
    assert result.exit_code == 0 and json.loads(out.read_text())["R@1"] == 0.0
    assert invoke("phrase", ph_gt, ph_res, "--protocol", "best").exit_code == 2


@pytest.mark.parametrize(
    "results, expected",
    [
        (
            [RESULTS[0], {"image_id": 12, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5}],
            ["results[1]", "image_id 12"],
        ),
        ([{"image_id": 1, "category_id": 1, "bbox": [1, 1, -2, 2], "score": 0.5}], ["results[0]", "negative size"]),
        ([], ["no results"]),
    ],
)
def test_bad_results_exit_2_with_one_line(files, results, expected):
    bad = write(files["tmp"] / ("a_rather_long_directory_name_" * 3 + "bad_results.json"), results)
    result = invoke("coco", files["gt"], bad)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line even when longer than the terminal
    assert lines[0].startswith("error:") and str(bad) in lines[0]
    for text in expected:
        assert text in lines[0]
    assert "Traceback" not in result.output


def test_unknown_category_and_bad_option(files):
    bad = write(files["tmp"] / "r.json", [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2], "score": 0.5}])
    result = invoke("lvis", files["lvis"], bad)
    assert result.exit_code == 2 and "category_id 3" in result.stderr
    assert invoke("coco", files["gt"], files["res"], "--iou-type", "keypoints").exit_code == 2
    assert invoke("coco", files["gt"], files["res"], "--iou-type", "segm").exit_code == 2  # no masks anywhere
