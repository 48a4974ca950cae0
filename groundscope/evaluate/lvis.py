"""LVIS box AP, standard and fixed, reproducing lvis-api (``LVISResults`` + ``LVISEval``) to float precision.

Two protocols, both on the federated LVIS rules (a detection of a category that is neither annotated nor in the
image's ``neg_category_ids`` is not scored; an unmatched detection of a ``not_exhaustive_category_ids``
category is not a false positive):

* **standard** (Gupta et al., lvis-api defaults): keep the 300 highest-scoring detections of each image, over all
  categories, then AP / AP50 / AP75 / APs / APm / APl, APr / APc / APf (rare / common / frequent categories) and
  AR@300.
* **fixed AP** (Dave et al., "Evaluating Large-Vocabulary Object Detectors: The Devil is in the Details"; what
  MDETR, GLIP, MM-Grounding-DINO and LLMDet report on LVIS minival): keep the 10,000 highest-scoring detections of
  each category over the whole dataset and put no cap on detections per image. As in the authors' script and
  mmdetection's ``LVISFixedAPMetric``, only the AP keys are reported.

The per-image and per-category cuts are done here, in the same order lvis-api does them (stable sort by
descending score, so ties keep file order); the matching and accumulation run on faster-coco-eval's LVIS mode,
which equals lvis-api to 2.2e-16 on the shared fixture and runs it in about half the time.

Output of `evaluate_lvis`::

    {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300",
     "per_class": [{"id", "name", "frequency", "AP", "AP50"}, ...],
     "fixed": {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "max_dets_per_cat": 10000}}
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from groundscope.evaluate.coco import per_class_ap, pr_curve, run_cocoeval
from groundscope.evaluate.validate import (
    DetectionGroundTruth,
    EvaluationInputError,
    JsonInput,
    load_detection_ground_truth,
    load_detection_results,
)

LVIS_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
# faster-coco-eval's names for the same numbers
_FCE_NAMES = {
    "AP": "AP_all",
    "AP50": "AP_50",
    "AP75": "AP_75",
    "APs": "AP_small",
    "APm": "AP_medium",
    "APl": "AP_large",
    "APr": "APr",
    "APc": "APc",
    "APf": "APf",
}


def _by_score(records: list[dict]) -> list[dict]:
    # Python's sort is stable, also with reverse=True: equal scores keep their file order, as in lvis-api.
    return sorted(records, key=lambda r: r["score"], reverse=True)


def limit_per_image(records: Sequence[dict], max_dets: int) -> list[dict]:
    """The `max_dets` best detections of each image over all its categories (lvis-api's ``LVISResults``).

    A negative `max_dets` keeps everything. Images come out in order of first appearance.
    """
    if max_dets < 0:
        return list(records)
    groups: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["image_id"]].append(r)
    return [r for g in groups.values() for r in (g if len(g) <= max_dets else _by_score(g)[:max_dets])]


def top_per_category(records: Sequence[dict], max_dets_per_cat: int) -> list[dict]:
    """The `max_dets_per_cat` best detections of each category over the whole dataset (fixed AP)."""
    groups: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["category_id"]].append(r)
    return [r for g in groups.values() for r in _by_score(g)[:max_dets_per_cat]]


def _lvis_eval(gt: DetectionGroundTruth, records: list[dict], max_dets: int):
    # faster-coco-eval caps detections per (image, category) at maxDets[-1]; the LVIS cap is per image and has
    # been applied by the caller, so the cap given here must never bite: at least the number of detections.
    cap = max_dets if max_dets > 0 else max(1, len(records))
    return run_cocoeval(gt, records, "bbox", lvis_style=True, max_dets=[cap])


def lvis_metrics(
    gt: DetectionGroundTruth,
    records: Sequence[dict],
    *,
    max_dets: int = 300,
    fixed: bool = True,
    max_dets_per_cat: int = 10_000,
    per_class: bool = True,
    curve: bool = False,
) -> dict:
    """LVIS metrics of checked inputs (see the module docstring for the keys)."""
    standard = limit_per_image(records, max_dets)
    ev = _lvis_eval(gt, standard, max_dets)
    stats = ev.stats_as_dict
    out: dict = {k: float(stats[_FCE_NAMES[k]]) for k in LVIS_AP_KEYS}
    out[f"AR@{max_dets}"] = float(stats["AR_all"])
    if per_class:
        rows = per_class_ap(ev, gt)
        for row in rows:
            row["frequency"] = gt.categories[row["id"]].get("frequency")
        out["per_class"] = rows
    if curve:
        out["pr_curve"] = pr_curve(ev)
    if fixed:
        if max_dets_per_cat <= 0:
            raise ValueError(f"max_dets_per_cat must be positive, not {max_dets_per_cat}")
        ev_fixed = _lvis_eval(gt, top_per_category(records, max_dets_per_cat), -1)
        stats = ev_fixed.stats_as_dict
        out["fixed"] = {k: float(stats[_FCE_NAMES[k]]) for k in LVIS_AP_KEYS}
        out["fixed"]["max_dets_per_cat"] = int(max_dets_per_cat)
    return out


def evaluate_lvis(
    ground_truth: JsonInput,
    results: JsonInput,
    *,
    max_dets: int = 300,
    fixed: bool = True,
    max_dets_per_cat: int = 10_000,
    per_class: bool = True,
    pr_curve: bool = False,
) -> dict:
    """Score a COCO-style box results file against an LVIS annotation file.

    Args:
        ground_truth: LVIS v0.5/v1 annotation file (path or dict).
        results: COCO results list with boxes (path or list).
        max_dets: per-image cap of the standard protocol (300 in LVIS; negative = no cap).
        fixed: also compute fixed AP (under ``"fixed"``).
        max_dets_per_cat: per-category cap of fixed AP (10,000 in the paper).
        per_class: add per-category AP.
        pr_curve: add the standard protocol's precision/recall curve data.

    Raises:
        EvaluationInputError: bad files, naming the file and the record.
    """
    gt = load_detection_ground_truth(ground_truth, lvis=True)
    records, source = load_detection_results(results, gt)
    if "bbox" not in records[0]:
        raise EvaluationInputError(source, "LVIS evaluation scores boxes and these results hold masks only")
    return lvis_metrics(
        gt,
        records,
        max_dets=max_dets,
        fixed=fixed,
        max_dets_per_cat=max_dets_per_cat,
        per_class=per_class,
        curve=pr_curve,
    )
