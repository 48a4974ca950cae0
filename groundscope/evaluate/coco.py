"""COCO detection metrics: the 12 standard stats (box, and mask when results carry masks) and per-class AP.

Backend: faster-coco-eval: equal to pycocotools to 2.2e-16 on every fixture stat, ~4x faster (benchmarks/bench_eval.py).

Input formats are described in `groundscope.evaluate.validate`. Output of `evaluate_coco`::

    {"iou_type": "bbox", "AP": .., "AP50": .., "AP75": .., "APs": .., "APm": .., "APl": ..,
     "AR1": .., "AR10": .., "AR100": .., "ARs": .., "ARm": .., "ARl": ..,
     "per_class": [{"id": 1, "name": "person", "AP": .., "AP50": ..}, ...],
     "segm": {same keys, for masks; only when the results carry masks},
     "pr_curve": {"recall": [101 values], "AP": [...], "AP50": [...], "AP75": [...]}   # only on request}

As in the official tools a stat with nothing to average (e.g. APl when no ground-truth box is large) is -1,
and a per-class AP of a category without ground truth is None.

``max_dets`` are pycocotools' ``params.maxDets``: COCO's [1, 10, 100] by default; mmdetection's ``CocoMetric``
(the code behind the MM-Grounding-DINO and LLMDet COCO / ODinW tables) sets [100, 300, 1000]
(`MMDET_MAX_DETS`; official: iSEE-Laboratory/LLMDet mmdet/evaluation/metrics/coco_metric.py ~L74, ~L476).
pycocotools then computes AP at 100 detections per image but AP50, AP75 and APs/m/l at the last cap (1000),
and the three AR keys are named after the caps (``AR100``, ``AR300``, ``AR1000``). With caps other than the
default the metrics carry ``"max_dets"``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from groundscope.evaluate.validate import (
    DetectionGroundTruth,
    EvaluationInputError,
    JsonInput,
    load_detection_ground_truth,
    load_detection_results,
)

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
COCO_MAX_DETS = (1, 10, 100)
MMDET_MAX_DETS = (100, 300, 1000)


def pycocotools_stats(ev: COCOeval_faster) -> np.ndarray:
    """The 12 detection stats exactly as pycocotools' ``COCOeval.summarize`` computes them from the accumulated
    precision / recall, for any three caps.

    faster-coco-eval equals pycocotools for the default caps but not for others: it takes AP at the last cap,
    whereas pycocotools' ``_summarize(1)`` asks for 100 detections by default (pycocotools/cocoeval.py
    ``summarize._summarizeDets``), so with [100, 300, 1000] AP is at 100 and AP50 ... APl at 1000.
    """
    p = ev.params
    precision, recall = ev.eval["precision"], ev.eval["recall"]  # (T, R, K, A, M), (T, K, A, M)
    area = {name: i for i, name in enumerate(p.areaRngLbl)}
    caps = [int(m) for m in p.maxDets]

    def summ(ap: bool, iou: float | None = None, rng: str = "all", cap: int = 100) -> float:
        if cap not in caps:
            return -1.0
        m = caps.index(cap)
        s = precision[..., area[rng], m] if ap else recall[..., area[rng], m]
        if iou is not None:
            s = s[np.isclose(p.iouThrs, iou)]
        s = s[s > -1]
        return float(s.mean()) if s.size else -1.0

    last = caps[2]
    return np.array([
        summ(True), summ(True, 0.5, cap=last), summ(True, 0.75, cap=last),
        summ(True, rng="small", cap=last), summ(True, rng="medium", cap=last), summ(True, rng="large", cap=last),
        summ(False, cap=caps[0]), summ(False, cap=caps[1]), summ(False, cap=last),
        summ(False, rng="small", cap=last), summ(False, rng="medium", cap=last), summ(False, rng="large", cap=last),
    ])


def coco_keys(max_dets: Sequence[int] = COCO_MAX_DETS) -> tuple[str, ...]:
    """The 12 stat names for these caps: the AR keys are named after the caps (pycocotools' stats[6:9])."""
    if len(max_dets) != 3:
        raise ValueError(f"max_dets needs three caps (pycocotools' summary reads three), got {list(max_dets)}")
    return (*COCO_KEYS[:6], *(f"AR{int(m)}" for m in max_dets), *COCO_KEYS[9:])


def _quiet(*args, **kwargs) -> None:
    """faster-coco-eval prints progress through a callback; the CLI prints its own table."""


def run_cocoeval(
    gt: DetectionGroundTruth,
    records: Sequence[dict],
    iou_type: str = "bbox",
    *,
    lvis_style: bool = False,
    max_dets: Sequence[int] | None = None,
) -> COCOeval_faster:
    """Run evaluate/accumulate/summarize on checked inputs and return the evaluator.

    Args:
        gt: checked ground truth.
        records: checked COCO results (not modified).
        iou_type: "bbox" or "segm". For "segm" the boxes are dropped from the results first, as detectron2 and
            mmdetection do: with a box present pycocotools takes the box area, not the mask area, to pick the
            small/medium/large bucket of a detection.
        lvis_style: LVIS federated rules (negative / not-exhaustive categories, APr/APc/APf).
        max_dets: the per-image, per-category caps (default COCO's [1, 10, 100]).
    """
    # The libraries write into the records they are given (ids, areas, ignore flags, RLEs): give each run
    # its own shallow copies so repeated runs (bbox then segm, standard then fixed AP) start from clean input.
    data = dict(gt.data)
    data["images"] = [dict(x) for x in gt.data["images"]]
    data["annotations"] = [dict(x) for x in gt.data["annotations"]]
    data["categories"] = [dict(x) for x in gt.data["categories"]]
    dets = [dict(r) for r in records]
    if iou_type == "segm":
        for d in dets:
            d.pop("bbox", None)
    with warnings.catch_warnings():
        # Our own loader already warned about annotation id 0, naming the file.
        warnings.filterwarnings("ignore", message="Found annotation id 0")
        coco_gt = COCO(data, print_function=_quiet)
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval_faster(coco_gt, coco_dt, iou_type, lvis_style=lvis_style, print_function=_quiet)
        if max_dets is not None:
            ev.params.maxDets = [int(m) for m in max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def per_class_ap(ev: COCOeval_faster, gt: DetectionGroundTruth) -> list[dict]:
    """AP and AP50 of each category (area "all", largest max_dets); None where the category has no ground truth.

    ``precision`` is (T iou thresholds, R recall points, K categories, A area ranges, M max_dets), -1 = absent.
    """
    precision = ev.eval["precision"]
    iou50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    out = []
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        valid = p[p > -1]
        p50 = p[iou50][p[iou50] > -1]
        out.append(
            {
                "id": int(cat_id),
                "name": gt.category_name(cat_id),
                "AP": float(valid.mean()) if valid.size else None,
                "AP50": float(p50.mean()) if p50.size else None,
            }
        )
    return out


def pr_curve(ev: COCOeval_faster) -> dict | None:
    """Precision at each of the 101 recall points, averaged over categories (area "all", largest max_dets).

    Returns ``{"recall": [...], "AP": [...], "AP50": [...], "AP75": [...]}`` (AP = mean over the ten IoU
    thresholds too), or None when no category has ground truth. A recall point no category reaches is 0.
    """
    p = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    if not (p > -1).any():
        return None
    thrs = ev.params.iouThrs

    def mean_over(sel: np.ndarray) -> list[float]:  # sel: (t, R, K) -> (R,)
        valid = sel > -1
        total = np.where(valid, sel, 0.0).sum(axis=(0, 2))
        count = valid.sum(axis=(0, 2))
        return [float(v) for v in np.where(count > 0, total / np.maximum(count, 1), 0.0)]

    i50 = int(np.argmin(np.abs(thrs - 0.5)))
    i75 = int(np.argmin(np.abs(thrs - 0.75)))
    return {
        "recall": [float(r) for r in ev.params.recThrs],
        "AP": mean_over(p),
        "AP50": mean_over(p[i50 : i50 + 1]),
        "AP75": mean_over(p[i75 : i75 + 1]),
    }


def coco_metrics(
    gt: DetectionGroundTruth,
    records: Sequence[dict],
    iou_type: str = "bbox",
    *,
    per_class: bool = True,
    curve: bool = False,
    max_dets: Sequence[int] = COCO_MAX_DETS,
) -> dict:
    """The 12 COCO stats of checked inputs as a dict keyed by `coco_keys(max_dets)` (+ per_class, pr_curve)."""
    keys = coco_keys(max_dets)
    ev = run_cocoeval(gt, records, iou_type, max_dets=max_dets)
    out: dict = {"iou_type": iou_type}
    stats = ev.stats[:12] if tuple(max_dets) == COCO_MAX_DETS else pycocotools_stats(ev)
    out.update({k: float(v) for k, v in zip(keys, stats, strict=True)})
    if tuple(max_dets) != COCO_MAX_DETS:
        out["max_dets"] = [int(m) for m in max_dets]
    if per_class:
        out["per_class"] = per_class_ap(ev, gt)
    if curve:
        out["pr_curve"] = pr_curve(ev)
    return out


def evaluate_coco(
    ground_truth: JsonInput,
    results: JsonInput,
    *,
    iou_types: Sequence[str] | None = None,
    per_class: bool = True,
    pr_curve: bool = False,
    max_dets: Sequence[int] = COCO_MAX_DETS,
) -> dict:
    """Score a COCO results file against a COCO instances file, as pycocotools' COCOeval does.

    Args:
        ground_truth: path to (or dict of) the COCO instances file.
        results: path to (or list of) COCO results records.
        iou_types: "bbox" and/or "segm"; default "bbox", plus "segm" when the results carry masks.
        per_class: add ``per_class`` AP.
        pr_curve: add the ``pr_curve`` data (see `pr_curve`).
        max_dets: pycocotools' three per-image caps (`MMDET_MAX_DETS` for mmdetection's protocol).

    Returns:
        The metrics of the first IoU type at the top level; a second one ("segm") under its own key.

    Raises:
        EvaluationInputError: bad files (naming the file and record), or mask evaluation without masks.
    """
    gt = load_detection_ground_truth(ground_truth)
    records, _ = load_detection_results(results, gt, need_masks=bool(iou_types and "segm" in iou_types))
    has_masks = "segmentation" in records[0]
    types = tuple(iou_types) if iou_types else (("bbox", "segm") if has_masks else ("bbox",))
    for t in types:
        if t not in ("bbox", "segm"):
            raise ValueError(f"iou type must be 'bbox' or 'segm', not {t!r}")
    if "segm" in types and not gt.has_masks:
        raise EvaluationInputError(gt.source, "mask (segm) evaluation needs a 'segmentation' on every annotation")
    first, *rest = types
    out = coco_metrics(gt, records, first, per_class=per_class, curve=pr_curve, max_dets=max_dets)
    for t in rest:
        out[t] = coco_metrics(gt, records, t, per_class=per_class, curve=pr_curve, max_dets=max_dets)
    return out
