"""Metrics of `groundscope.evaluate`: parity with the official tools and hand-computed cases.

Parity tests read ../shared/fixtures/metrics (skipped when absent); the hand-computed cases and the pycocotools /
lvis-api cross-checks on generated data run on a fresh clone too.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest

from groundscope.evaluate import (
    COCO_KEYS,
    EvaluationInputError,
    evaluate_coco,
    evaluate_lvis,
    evaluate_odinw,
    evaluate_phrase,
    evaluate_refexp,
)
from groundscope.evaluate.lvis import limit_per_image, top_per_category

METRICS = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "metrics"


def fixture(*parts: str) -> Path:
    path = METRICS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared metric fixture {path} is absent (../shared/fixtures is not beside the repo)")
    return path


def load(path: Path):
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ builders
def coco_gt(boxes_by_image: dict[int, list[tuple[int, list[float]]]], categories=(1,), size=(640, 480)) -> dict:
    """COCO GT from {image_id: [(category_id, xywh), ...]}; areas are box areas."""
    images = [{"id": i, "file_name": f"{i}.png", "width": size[0], "height": size[1]} for i in boxes_by_image]
    anns = []
    for image_id, boxes in boxes_by_image.items():
        for cat, b in boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": b,
                    "area": b[2] * b[3],
                    "iscrowd": 0,
                }
            )
    cats = [{"id": c, "name": f"class{c}"} for c in categories]
    return {"images": images, "annotations": anns, "categories": cats}


def det(image_id: int, bbox: list[float], score: float, cat: int = 1) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def lvis_gt(boxes_by_image, frequencies: dict[int, str], neg=None, not_exhaustive=None) -> dict:
    gt = coco_gt(boxes_by_image, categories=tuple(frequencies))
    for img in gt["images"]:
        img["neg_category_ids"] = list((neg or {}).get(img["id"], []))
        img["not_exhaustive_category_ids"] = list((not_exhaustive or {}).get(img["id"], []))
    for cat in gt["categories"]:
        cat["frequency"] = frequencies[cat["id"]]
    return gt


# ------------------------------------------------------------------------------------------------ COCO parity
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_cocoapi_val2014_100_matches_official_demo(iou_type):
    folder = fixture("cocoapi_val2014_100")
    expected = load(folder / "expected_metrics.json")
    dt = folder / expected[iou_type]["dt"]
    got = evaluate_coco(folder / expected["gt"], dt, iou_types=(iou_type,))
    assert got["iou_type"] == iou_type
    for key, value in zip(expected["order"], expected[iou_type]["expected"], strict=True):
        assert got[key] == pytest.approx(value, abs=1e-9), key
    if iou_type == "bbox":
        assert got["AP"] == pytest.approx(0.50458, abs=5e-6)


def test_detectron2_persons_box_and_mask():
    folder = fixture("detectron2_img139_persons")
    expected = load(folder / "expected_metrics.json")
    got = evaluate_coco(folder / "gt_annotations.json", folder / "detections.json")
    # results carry masks -> both box (top level) and mask (under "segm") metrics
    for key, b, s in zip(expected["order"], expected["expected"]["bbox"], expected["expected"]["segm"], strict=True):
        assert got[key] == pytest.approx(b, abs=1e-9), key
        assert got["segm"][key] == pytest.approx(s, abs=1e-9), key
    assert got["APl"] == -1.0  # no large person: the official "not applicable" value, not 0
    by_name = {row["name"]: row for row in got["per_class"]}
    assert by_name["person"]["AP"] == pytest.approx(expected["expected"]["bbox"][0], abs=1e-12)
    assert by_name["bed"]["AP"] is None  # no ground truth for that category


def test_torchmetrics_inputs4():
    folder = fixture("torchmetrics_inputs4")
    expected = load(folder / "expected_metrics_pycocotools.json")["stats"]
    got = evaluate_coco(folder / "gt.json", folder / "dt.json")
    for key in COCO_KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def _pycocotools_stats(gt: dict, dets: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_matches_pycocotools_on_generated_data_with_ties_and_crowds():
    rng = random.Random(3)
    boxes = {}
    for image_id in range(1, 21):
        boxes[image_id] = []
        for _ in range(rng.randint(0, 6)):
            w, h = rng.uniform(4, 200), rng.uniform(4, 200)
            boxes[image_id].append((rng.choice([1, 2, 3]), [rng.uniform(0, 400), rng.uniform(0, 250), w, h]))
    gt = coco_gt(boxes, categories=(1, 2, 3))
    gt["annotations"][0]["iscrowd"] = 1
    gt["annotations"][5]["iscrowd"] = 1
    dets = []
    for ann in gt["annotations"]:
        for _ in range(rng.randint(0, 3)):
            x, y, w, h = ann["bbox"]
            jitter = [
                x + rng.gauss(0, w * 0.1),
                y + rng.gauss(0, h * 0.1),
                w * rng.uniform(0.8, 1.2),
                h * rng.uniform(0.8, 1.2),
            ]
            # scores on a coarse grid so that ties happen and their order must match
            dets.append(
                det(ann["image_id"], jitter, round(rng.random(), 1), rng.choice([ann["category_id"]] * 3 + [1]))
            )
    for image_id in range(1, 21):
        dets.append(det(image_id, [rng.uniform(0, 400), rng.uniform(0, 300), 30.0, 30.0], round(rng.random(), 1), 2))
    got = evaluate_coco(gt, dets)
    ref = _pycocotools_stats(gt, dets)
    assert [got[k] for k in COCO_KEYS] == pytest.approx(list(ref), abs=1e-12)


# ------------------------------------------------------------------------------------------------ COCO by hand
def test_perfect_predictions_score_one_in_every_stat():
    boxes = {1: [(1, [10, 10, 20, 20]), (2, [100, 100, 60, 60])], 2: [(1, [50, 40, 200, 150])]}
    gt = coco_gt(boxes, categories=(1, 2))
    dets = [det(i, b, 0.9, c) for i, bs in boxes.items() for c, b in bs]
    got = evaluate_coco(gt, dets)
    for key in COCO_KEYS:  # one small, one medium and one large box: every bucket is defined
        assert got[key] == pytest.approx(1.0), key
    assert [row["AP"] for row in got["per_class"]] == [pytest.approx(1.0)] * 2


def test_false_positive_ranked_above_the_true_positive_halves_ap():
    gt = coco_gt({1: [(1, [10, 10, 50, 50])]})
    dets = [det(1, [300, 300, 50, 50], 0.9), det(1, [10, 10, 50, 50], 0.8)]
    got = evaluate_coco(gt, dets)
    # precision 1/2 at recall 1, interpolated to every recall point, at every IoU threshold
    assert got["AP"] == pytest.approx(0.5)
    assert got["AP50"] == pytest.approx(0.5)
    assert got["AR1"] == 0.0  # with one detection per image only the false positive is seen
    assert got["AR10"] == 1.0
    # swapping the scores makes it perfect
    dets[0]["score"], dets[1]["score"] = 0.8, 0.9
    assert evaluate_coco(gt, dets)["AP"] == pytest.approx(1.0)


def test_interpolated_precision_by_hand():
    gt = coco_gt({1: [(1, [0, 0, 40, 40])], 2: [(1, [0, 0, 40, 40])]})
    dets = [det(1, [0, 0, 40, 40], 0.9), det(1, [200, 200, 40, 40], 0.8), det(2, [0, 0, 40, 40], 0.7)]
    got = evaluate_coco(gt, dets)
    # TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1. Interpolated: 1.0 for the 51 recall points
    # 0.00..0.50, 2/3 for the 50 points 0.51..1.00.
    assert got["AP"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101, abs=1e-12)


def test_pr_curve_mean_equals_ap():
    gt = coco_gt({1: [(1, [0, 0, 40, 40])], 2: [(1, [0, 0, 40, 40])]})
    dets = [det(1, [0, 0, 40, 40], 0.9), det(1, [200, 200, 40, 40], 0.8), det(2, [0, 0, 40, 40], 0.7)]
    got = evaluate_coco(gt, dets, pr_curve=True)
    curve = got["pr_curve"]
    assert len(curve["recall"]) == len(curve["AP50"]) == 101
    assert np.mean(curve["AP50"]) == pytest.approx(got["AP50"], abs=1e-12)
    assert np.mean(curve["AP"]) == pytest.approx(got["AP"], abs=1e-12)


def test_mask_ap_buckets_detections_by_mask_area_not_box_area():
    mask_utils = pytest.importorskip("pycocotools.mask")

    def rle(y0, y1, x0, x1) -> dict:
        m = np.zeros((300, 300), np.uint8, order="F")
        m[y0:y1, x0:x1] = 1
        r = mask_utils.encode(m)
        return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()}

    gt = {
        "images": [{"id": 1, "width": 300, "height": 300}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 10, 50, 50],
                "area": 2500,
                "iscrowd": 0,
                "segmentation": rle(10, 60, 10, 60),
            }
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    dets = [
        # a false positive whose mask is medium (50x50) but whose box claims to be large (150x150)
        {
            "image_id": 1,
            "category_id": 1,
            "score": 0.9,
            "segmentation": rle(200, 250, 200, 250),
            "bbox": [100, 100, 150, 150],
        },
        {"image_id": 1, "category_id": 1, "score": 0.8, "segmentation": rle(10, 60, 10, 60), "bbox": [10, 10, 50, 50]},
    ]
    got = evaluate_coco(gt, dets)
    # masks: the false positive counts among medium objects, as detectron2 / mmdetection score it (box dropped)
    assert got["segm"]["APm"] == pytest.approx(0.5)
    # boxes: the same false positive is large, so it is ignored among medium objects
    assert got["APm"] == pytest.approx(1.0) and got["AP"] == pytest.approx(0.5)


def test_input_is_not_modified():
    gt = coco_gt({1: [(1, [10, 10, 50, 50])]})
    dets = [det(1, [10, 10, 50, 50], 0.8)]
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    evaluate_coco(gt, dets)
    assert gt == gt_before and dets == dets_before


# ------------------------------------------------------------------------------------------------ LVIS
def test_lvis_val_100_matches_lvis_api():
    folder = fixture("lvis_val_100")
    expected = load(folder / "expected_metrics.json")["lvis_api_results"]
    got = evaluate_lvis(folder / "lvis_val_100.json", folder / "lvis_results_synth_seed0.json", fixed=False)
    assert got["AP"] == pytest.approx(0.427896, abs=1e-6)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300"):
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
    assert "fixed" not in got


@pytest.fixture()
def lvis_api(monkeypatch):
    """The official lvis-api; numpy 2 removed ``np.float``, which its accumulate() still uses."""
    lvis = pytest.importorskip("lvis", reason="the official lvis-api is the reference")
    monkeypatch.setattr(np, "float", float, raising=False)
    return lvis


def _lvis_api_results(lvis, gt_path: Path, records: list[dict], max_dets: int) -> dict:
    gt = lvis.LVIS(str(gt_path))
    dt = lvis.LVISResults(gt, copy.deepcopy(records), max_dets=max_dets)
    ev = lvis.LVISEval(gt, dt, iou_type="bbox")
    ev.params.max_dets = max_dets
    ev.run()
    return dict(ev.results)


@pytest.mark.parametrize("max_dets_per_cat", [3, 10_000])
def test_lvis_fixed_ap_matches_lvis_api_on_top_k_per_category(lvis_api, max_dets_per_cat):
    folder = fixture("lvis_val_100")
    records = load(folder / "lvis_results_synth_seed0.json")
    got = evaluate_lvis(folder / "lvis_val_100.json", records, max_dets_per_cat=max_dets_per_cat, per_class=False)
    # the protocol of Dave et al.'s evaluate_ap_fixed.py: top-k per category, then no per-image cap
    by_cat: dict[int, list] = {}
    for r in records:
        by_cat.setdefault(r["category_id"], []).append(r)
    kept = [r for rs in by_cat.values() for r in sorted(rs, key=lambda r: r["score"], reverse=True)[:max_dets_per_cat]]
    ref = _lvis_api_results(lvis_api, folder / "lvis_val_100.json", kept, max_dets=-1)
    assert got["fixed"]["max_dets_per_cat"] == max_dets_per_cat
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
        assert got["fixed"][key] == pytest.approx(ref[key], abs=1e-9), key


def test_lvis_per_image_cap_matches_lvis_api(lvis_api):
    folder = fixture("lvis_val_100")
    records = load(folder / "lvis_results_synth_seed0.json")
    got = evaluate_lvis(folder / "lvis_val_100.json", records, max_dets=20, fixed=False, per_class=False)
    ref = _lvis_api_results(lvis_api, folder / "lvis_val_100.json", records, max_dets=20)
    for key in ("AP", "AP50", "APr", "APc", "APf", "AR@20"):
        assert got[key] == pytest.approx(ref[key], abs=1e-9), key


def test_lvis_federated_rules_by_hand():
    boxes = {1: [(1, [10, 10, 50, 50])], 2: [(1, [10, 10, 50, 50])]}
    gt = lvis_gt(boxes, {1: "f", 2: "c", 3: "r"}, neg={1: [2]}, not_exhaustive={2: [1]})
    perfect = [det(1, [10, 10, 50, 50], 0.9), det(2, [10, 10, 50, 50], 0.9)]
    # category 3 is neither annotated nor negative on image 1: its detection is not scored at all
    got = evaluate_lvis(gt, [*perfect, det(1, [300, 300, 40, 40], 0.99, cat=3)])
    assert got["AP"] == pytest.approx(1.0) and got["APf"] == pytest.approx(1.0)
    assert got["APr"] == -1.0 and got["APc"] == -1.0  # no ground truth in those groups
    # an unmatched detection of a not-exhaustively annotated category (1 on image 2) is not a false positive
    assert evaluate_lvis(gt, [*perfect, det(2, [300, 300, 40, 40], 0.99)])["AP"] == pytest.approx(1.0)
    # but on image 1, where category 1 is exhaustive, the same box is a false positive above both true ones
    assert evaluate_lvis(gt, [*perfect, det(1, [300, 300, 40, 40], 0.99)])["AP"] < 1.0


def test_lvis_fixed_ap_by_hand():
    boxes = {i: [(1, [10, 10, 50, 50])] for i in (1, 2, 3)}
    gt = lvis_gt(boxes, {1: "f"})
    dets = [
        det(1, [300, 300, 40, 40], 0.95),
        det(1, [10, 10, 50, 50], 0.9),
        det(2, [10, 10, 50, 50], 0.8),
        det(3, [10, 10, 50, 50], 0.7),
    ]
    # top 3 of the category: FP, TP, TP -> precision 0, 1/2, 2/3 at recall 0, 1/3, 2/3; interpolated 2/3 for
    # the 67 recall points 0.00..0.66 and 0 above
    got = evaluate_lvis(gt, dets, max_dets_per_cat=3)
    assert got["fixed"]["AP"] == pytest.approx(67 * (2 / 3) / 101, abs=1e-12)
    # all four: precision 3/4 at recall 1, interpolated everywhere
    assert evaluate_lvis(gt, dets, max_dets_per_cat=4)["fixed"]["AP"] == pytest.approx(0.75, abs=1e-12)
    # the standard protocol with one detection per image keeps only the false positive on image 1
    assert evaluate_lvis(gt, dets, max_dets=1, fixed=False)["AR@1"] == pytest.approx(2 / 3)


def test_lvis_caps_keep_file_order_for_equal_scores():
    recs = [det(1, [0, 0, 1, 1], 0.5, cat=c) for c in (1, 2, 3)] + [det(1, [0, 0, 1, 1], 0.7, cat=4)]
    assert [r["category_id"] for r in limit_per_image(recs, 2)] == [4, 1]
    recs = [det(i, [0, 0, 1, 1], 0.5) for i in (1, 2, 3)]
    assert [r["image_id"] for r in top_per_category(recs, 2)] == [1, 2]


# ------------------------------------------------------------------------------------------------ ODinW
def test_odinw_scores_each_dataset_and_averages():
    gt = coco_gt({1: [(1, [10, 10, 50, 50])]})
    perfect = [det(1, [10, 10, 50, 50], 0.8)]
    half = [det(1, [300, 300, 50, 50], 0.9), det(1, [10, 10, 50, 50], 0.8)]
    got = evaluate_odinw([("a", gt, perfect), ("b", gt, half)])
    assert got["num_datasets"] == 2
    assert got["datasets"]["a"]["AP"] == pytest.approx(1.0)
    assert got["datasets"]["b"]["AP"] == pytest.approx(0.5)
    assert got["average"]["AP"] == pytest.approx(0.75)
    assert got["average"]["APl"] == -1.0  # no large box in any dataset
    with pytest.raises(ValueError, match="twice"):
        evaluate_odinw([("a", gt, perfect), ("a", gt, half)])


# ------------------------------------------------------------------------------------------------ RefCOCO
def refexp_gt(targets: dict[int, list[float]]) -> dict:
    images = [{"id": i, "file_name": "COCO_1.jpg", "caption": f"thing {i}", "original_img_id": 1} for i in targets]
    anns = [{"id": n + 1, "image_id": i, "bbox": b, "category_id": 1} for n, (i, b) in enumerate(targets.items())]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}


def test_refexp_precision_at_k_by_hand():
    target = [100, 100, 50, 50]
    miss = [400, 400, 30, 30]
    gt = refexp_gt({1: target, 2: target, 3: target, 4: target})
    preds = [{"image_id": 1, "bbox": target, "score": 0.9}]
    # expression 2: the target is 3rd by score (listed first in the file: ranking is by score, not order)
    preds += [{"image_id": 2, "bbox": target, "score": 0.5}] + [
        {"image_id": 2, "bbox": miss, "score": s} for s in (0.9, 0.8, 0.1)
    ]
    # expression 3: the target is 7th
    preds += [{"image_id": 3, "bbox": miss, "score": 0.9 - i / 100} for i in range(6)] + [
        {"image_id": 3, "bbox": target, "score": 0.5}
    ]
    # expression 4: no prediction at all
    got = evaluate_refexp(gt, preds)
    assert got == {"P@1": 0.25, "P@5": 0.5, "P@10": 0.75, "num_expressions": 4}


def test_refexp_iou_threshold_is_inclusive_and_continuous():
    gt = refexp_gt({1: [0, 0, 10, 10], 2: [0, 0, 10, 10]})
    preds = [
        {"image_id": 1, "bbox": [0, 0, 10, 5], "score": 1.0},  # IoU exactly 50/100 = 0.5 -> correct
        {"image_id": 2, "bbox": [0, 0, 10, 4.9], "score": 1.0},  # 0.49 -> wrong (a +1 convention would pass it)
    ]
    assert evaluate_refexp(gt, preds)["P@1"] == 0.5


# ------------------------------------------------------------------------------------------------ phrases
def phrase_gt() -> dict:
    caption = "Two dogs chase a red ball"
    return {
        "images": [{"id": 7, "file_name": "dogs.jpg", "caption": caption, "width": 640, "height": 480}],
        "annotations": [
            {"id": 1, "image_id": 7, "bbox": [0, 0, 100, 100], "phrase_ids": 0, "tokens_positive": [[0, 8]]},
            {"id": 2, "image_id": 7, "bbox": [300, 300, 100, 100], "phrase_ids": 0, "tokens_positive": [[0, 8]]},
            {"id": 3, "image_id": 7, "bbox": [200, 0, 20, 20], "phrase_ids": [1], "tokens_positive": [[15, 25]]},
        ],
    }


def test_phrase_recall_any_box_and_merged():
    preds = [
        # "Two dogs": the top box overlaps the second dog only
        {"image_id": 7, "phrase_id": 0, "bbox": [300, 300, 100, 100], "score": 0.9},
        # "a red ball": right box at rank 2
        {"image_id": 7, "phrase_id": 1, "bbox": [500, 400, 20, 20], "score": 0.8},
        {"image_id": 7, "phrase_id": 1, "bbox": [200, 0, 20, 20], "score": 0.7},
    ]
    any_box = evaluate_phrase(phrase_gt(), preds)
    assert any_box == {"R@1": 0.5, "R@5": 1.0, "R@10": 1.0, "R@-1": 1.0, "num_phrases": 2}
    # merged: the dogs' target is the box enclosing both (0,0)-(400,400); one dog's box has IoU 1/16 with it
    merged = evaluate_phrase(phrase_gt(), preds, protocol="merged")
    assert merged == {"R@1": 0.0, "R@5": 0.5, "R@10": 0.5, "R@-1": 0.5, "num_phrases": 2}


# ------------------------------------------------------------------------------------------------ bad input
def write(tmp_path: Path, name: str, obj) -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


GOOD_GT = coco_gt({1: [(1, [10, 10, 50, 50])]})


@pytest.mark.parametrize(
    "results, where, reason",
    [
        ([], None, "no results"),
        ({"image_id": 1}, None, "JSON list"),
        ([det(1, [10, 10, 50, 50], 0.9), det(99, [10, 10, 50, 50], 0.8)], "results[1]", "image_id 99"),
        ([det(1, [10, 10, 50, 50], 0.9, cat=5)], "results[0]", "category_id 5"),
        ([det(1, [10, 10, -5, 50], 0.9)], "results[0]", "negative size"),
        ([det(1, [10, 10, 50], 0.9)], "results[0]", "4 numbers"),
        ([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50]}], "results[0]", "'score'"),
        ([det(1, [10, 10, 50, 50], float("nan"))], "results[0]", "'score'"),
    ],
)
def test_bad_results_name_file_and_record(tmp_path, results, where, reason):
    gt_path = write(tmp_path, "gt.json", GOOD_GT)
    res_path = write(tmp_path, "bad_results.json", json.dumps(results, allow_nan=True))
    with pytest.raises(EvaluationInputError) as err:
        evaluate_coco(gt_path, res_path)
    message = str(err.value)
    assert str(res_path) in message and reason in message
    if where:
        assert where in message and err.value.where == where


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda g: g["annotations"][0].update(image_id=42), "image_id 42"),
        (lambda g: g["annotations"][0].update(category_id=9), "category_id 9"),
        (lambda g: g["annotations"][0].update(bbox=[0, 0, 10, -1]), "negative size"),
        (lambda g: g.pop("categories"), "'categories'"),
        (lambda g: g["images"].append(dict(g["images"][0])), "duplicate image id 1"),
    ],
)
def test_bad_ground_truth_names_file_and_record(tmp_path, mutate, reason):
    gt = copy.deepcopy(GOOD_GT)
    mutate(gt)
    gt_path = write(tmp_path, "bad_gt.json", gt)
    with pytest.raises(EvaluationInputError, match=reason) as err:
        evaluate_coco(gt_path, [det(1, [10, 10, 50, 50], 0.9)])
    assert str(gt_path) in str(err.value)


def test_malformed_json_names_file_and_position(tmp_path):
    gt_path = write(tmp_path, "gt.json", GOOD_GT)
    res_path = write(tmp_path, "broken.json", '[{"image_id": 1,\n "bbox": [1, 2, 3, 4]')
    with pytest.raises(EvaluationInputError, match=r"broken\.json: not valid JSON: .* line 2"):
        evaluate_coco(gt_path, res_path)
    with pytest.raises(EvaluationInputError, match="file not found"):
        evaluate_coco(tmp_path / "missing.json", res_path)


def test_lvis_ground_truth_needs_federated_fields():
    gt = coco_gt({1: [(1, [10, 10, 50, 50])]})  # plain COCO: no frequency, no neg_category_ids
    with pytest.raises(EvaluationInputError, match="frequency"):
        evaluate_lvis(gt, [det(1, [10, 10, 50, 50], 0.9)])


def test_refexp_and_phrase_bad_input():
    gt = refexp_gt({1: [0, 0, 10, 10]})
    two_targets = copy.deepcopy(gt)
    two_targets["annotations"].append({"id": 9, "image_id": 1, "bbox": [1, 1, 2, 2]})
    with pytest.raises(EvaluationInputError, match=r"annotations\[1\].*exactly one target"):
        evaluate_refexp(two_targets, [{"image_id": 1, "bbox": [0, 0, 10, 10], "score": 1.0}])
    with pytest.raises(EvaluationInputError, match=r"results\[0\].*image_id 5"):
        evaluate_refexp(gt, [{"image_id": 5, "bbox": [0, 0, 10, 10], "score": 1.0}])
    with pytest.raises(EvaluationInputError, match="no results"):
        evaluate_refexp(gt, [])
    with pytest.raises(EvaluationInputError, match=r"results\[0\].*phrase_id 3"):
        evaluate_phrase(phrase_gt(), [{"image_id": 7, "phrase_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}])
    bad_spans = phrase_gt()
    bad_spans["annotations"][0]["tokens_positive"] = [[0, 99]]
    with pytest.raises(EvaluationInputError, match=r"annotations\[0\].*tokens_positive"):
        evaluate_phrase(bad_spans, [{"image_id": 7, "phrase_id": 0, "bbox": [0, 0, 1, 1], "score": 1.0}])
