"""Run a detector over a dataset, write its results, score them: ``groundscope eval run``.

What the detector is asked, per dataset kind:

========  =============================================================  ===========================================
kind      annotations                                                    call (one image per item)
========  =============================================================  ===========================================
coco      COCO instances file                                            ``detect(images, class names)``
lvis      LVIS file (``file_name``, else the ``coco_url`` path)          ``detect(images, class names)``
odvg      ODVG detection JSON-lines (+ optional label map)               ``detect(images, class names)``
refexp    MDETR RefCOCO/+/g file (one expression per ``images`` entry)   ``refer(images, expressions, top_k=10)``
phrase    phrase grounding file (see `groundscope.evaluate.phrase`)      ``ground(images, captions, phrases=spans)``
========  =============================================================  ===========================================

Class names are passed the way MM-Grounding-DINO prompts LVIS: ``_`` becomes a space and a parenthesised
qualifier is dropped (``bow_(weapon)`` -> ``bow``). How the detector is asked and how the results are scored
(prompt chunks, duplicate names, pycocotools' maxDets, the referring rule) follows the official evaluation of each
dataset kind unless `settings` says otherwise (`groundscope.evaluate.protocols`).

Files in the output folder:

* ``results.jsonl``: the journal. Line 1 describes the run (dataset, annotation file, model, settings); then
  one line ``{"image_id": .., "results": [...]}`` per finished image, appended and flushed as soon as the image
  is done. A rerun with the same settings skips the images already there, so an interrupted evaluation
  loses nothing; a journal from a different run is refused rather than mixed in.
* ``results.json``: all results as one list, in the format the matching ``groundscope eval <metric>`` reads
  (COCO results; refexp ``{image_id, bbox, score}``, the `top_k` best; phrase ``{image_id, phrase_id, bbox,
  score}``, every box of the phrase among the image's `max_detections`, for R@-1).
* ``metrics.json``: the metrics (keys as in `evaluate_coco`, `evaluate_lvis`, `evaluate_refexp`,
  `evaluate_phrase`), computed from ``results.json`` as written.
* ``ground_truth.json``: for odvg, the COCO conversion the results refer to.
* ``pr_curve.png``: with ``plot=True``, for the detection kinds (``metrics.json`` then also holds the curve data
  under ``pr_curve``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from groundscope.evaluate.coco import coco_metrics
from groundscope.evaluate.lvis import lvis_metrics
from groundscope.evaluate.odvg import odvg_to_coco
from groundscope.evaluate.phrase import Phrase, evaluate_phrase, load_phrase_ground_truth
from groundscope.evaluate.plot import draw_pr_curve
from groundscope.evaluate.protocols import PLAIN, EvalSettings, official_settings
from groundscope.evaluate.refexp import evaluate_refexp, load_refexp_ground_truth
from groundscope.evaluate.report import write_json
from groundscope.evaluate.validate import (
    DetectionGroundTruth,
    EvaluationInputError,
    load_detection_ground_truth,
    load_detection_results,
)
from groundscope.slicing.tiles import SliceSpec

DETECTION_KINDS = ("coco", "lvis", "odvg")
DATASET_KINDS = (*DETECTION_KINDS, "refexp", "phrase")
JOURNAL = "results.jsonl"


def prompt_name(name: str) -> str:
    """Category name -> the text the detector is prompted with (mmdetection's ``clean_label_name``: everything from
    the first "(" to the last ")" goes, "_" becomes a space; official: iSEE-Laboratory/LLMDet
    mmdet/models/detectors/grounding_dino.py ~L330-334). Spaces are collapsed and stripped, which gives the same
    tokens."""
    name = re.sub(r"\(.*\)", "", name).replace("_", " ")
    return re.sub(r"\s+", " ", name).strip()


@dataclass
class WorkItem:
    """One unit of detector work: an image (detection), an expression (refexp) or a caption (phrase).

    Attributes:
        key: the ``image_id`` results are written under.
        file_name: image path relative to the images folder.
        text: expression or caption.
        phrases: the caption's phrases (phrase grounding).
    """

    key: int
    file_name: str
    text: str | None = None
    phrases: list[Phrase] = field(default_factory=list)


@dataclass
class EvalDataset:
    """A dataset ready to run: the work items, and for detection the classes and their category ids."""

    kind: str
    source: str
    items: list[WorkItem]
    classes: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    gt: DetectionGroundTruth | None = None


def _file_name(image: dict, source: str, where: str) -> str:
    if isinstance(image.get("file_name"), str) and image["file_name"]:
        return image["file_name"]
    if isinstance(image.get("coco_url"), str):  # LVIS v1 gives only the URL: "val2017/000000397133.jpg" under COCO
        return urlparse(image["coco_url"]).path.lstrip("/")
    raise EvaluationInputError(source, "an image needs a 'file_name' to be run", where, image)


def load_eval_dataset(
    kind: str, annotations: str | Path, out_dir: Path, label_map: str | Path | None = None
) -> EvalDataset:
    """Read the annotation file of `kind` into work items (and, for detection, the checked ground truth)."""
    if kind not in DATASET_KINDS:
        raise ValueError(f"dataset kind must be one of {DATASET_KINDS}, not {kind!r}")
    annotations = Path(annotations)
    if kind in DETECTION_KINDS:
        if kind == "odvg":
            # Keep the conversion next to the results so `groundscope eval coco` can rescore them later.
            gt_path = write_json(out_dir / "ground_truth.json", odvg_to_coco(annotations, label_map))
            gt = load_detection_ground_truth(gt_path)
        else:
            gt = load_detection_ground_truth(annotations, lvis=kind == "lvis")
        items = [
            WorkItem(img["id"], _file_name(img, gt.source, f"images[{i}]")) for i, img in enumerate(gt.data["images"])
        ]
        classes = [prompt_name(gt.category_name(c)) for c in gt.category_ids]
        return EvalDataset(kind, gt.source, items, classes, gt.category_ids, gt)
    if kind == "refexp":
        expressions, source = load_refexp_ground_truth(annotations)
        items = [
            WorkItem(e.image_id, _file_name(e.image, source, f"image {e.image_id}"), e.expression) for e in expressions
        ]
        return EvalDataset(kind, source, items)
    captions, source = load_phrase_ground_truth(annotations)
    items = []
    for c in captions:
        if not c.phrases:  # nothing to evaluate on this caption
            continue
        for p in c.phrases:
            if not p.spans:
                raise EvaluationInputError(
                    source,
                    f"phrase {p.phrase_id} has no 'tokens_positive' spans to prompt the model with",
                    f"image {c.image_id}",
                )
        items.append(WorkItem(c.image_id, _file_name(c.image, source, f"image {c.image_id}"), c.caption, c.phrases))
    return EvalDataset(kind, source, items)


# ---------------------------------------------------------------------------------------------- journal
# Run-description fields added after the first journals were written, with the value those runs used.
HEADER_FIELDS_ADDED_LATER = {"precision": "fp32", "settings": PLAIN.record()}


class ResultJournal:
    """``results.jsonl``: a header line describing the run, then one line of results per finished item."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        self.header = header

    def load(self) -> dict[int, list[dict]]:
        """Items already done -> their results. Creates the file (with its header) when absent.

        A last line cut short by a crash is dropped (and removed from the file, so appends stay line-aligned).
        """
        if not self.path.exists():
            self._rewrite([json.dumps({"run": self.header})])
            return {}
        lines = self.path.read_text().split("\n")
        tail = lines.pop()  # "" when the file ends with a newline, else a line a crash may have cut short
        if tail:
            try:
                json.loads(tail)
                lines.append(tail)
            except json.JSONDecodeError:
                pass
            self._rewrite(lines)  # newline-terminated again, so the next append starts a fresh line
        if not lines:
            self._rewrite([json.dumps({"run": self.header})])
            return {}
        complete = lines
        try:
            header = json.loads(complete[0]).get("run")
        except (json.JSONDecodeError, AttributeError):
            header = None
        if isinstance(header, dict):
            # A journal from before a field existed ran with that field's default.
            later = dict(HEADER_FIELDS_ADDED_LATER)
            if header.get("dataset") == "phrase":
                later["phrase_boxes"] = "top_k"  # phrase journals kept the top_k boxes of a phrase, not all
            header = {**later, **header}
        if header != self.header:
            differs = (
                ", ".join(
                    f"{k}: {header.get(k)!r} here, {v!r} now" for k, v in self.header.items() if header.get(k) != v
                )
                if isinstance(header, dict)
                else "its first line is not a run description"
            )
            raise EvaluationInputError(
                str(self.path),
                f"holds results of a different run ({differs}); use another --out folder or delete the file",
            )
        done: dict[int, list[dict]] = {}
        for n, line in enumerate(complete[1:], start=2):
            try:
                rec = json.loads(line)
                done[int(rec["image_id"])] = list(rec["results"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise EvaluationInputError(
                    str(self.path), f"line {n} is not a results line; delete the file to start over"
                ) from None
        return done

    def append(self, key: int, results: list[dict]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"image_id": key, "results": results}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _rewrite(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(self.path)


# ---------------------------------------------------------------------------------------------- detector calls
def _boxes(det) -> list[tuple[list[float], float, int]]:
    """(xywh, score, class_id) of a `Detections`; a degenerate box (x2 < x1) becomes zero-size, a sure miss."""
    out = []
    for (x1, y1, x2, y2), score, cid in zip(
        det.xyxy.tolist(), det.scores.tolist(), det.class_ids.tolist(), strict=True
    ):
        out.append(([x1, y1, max(x2 - x1, 0.0), max(y2 - y1, 0.0)], float(score), int(cid)))
    return out


def _records(ds: EvalDataset, item: WorkItem, det, top_k: int) -> list[dict]:
    boxes = _boxes(det)
    if ds.kind in DETECTION_KINDS:
        out = []
        masks = getattr(det, "masks", None)
        for k, (bbox, score, cid) in enumerate(boxes):
            if not 0 <= cid < len(ds.category_ids):
                raise RuntimeError(f"detector returned class id {cid} for a list of {len(ds.classes)} classes")
            rec = {"image_id": item.key, "category_id": ds.category_ids[cid], "bbox": bbox, "score": score}
            if masks is not None:
                rec["segmentation"] = masks[k]
            out.append(rec)
        return out
    if ds.kind == "refexp":
        ranked = sorted(boxes, key=lambda b: b[1], reverse=True)[:top_k]
        return [{"image_id": item.key, "bbox": bbox, "score": score} for bbox, score, _ in ranked]
    out = []
    for index, phrase in enumerate(item.phrases):  # phrase grounding: class id = phrase index
        # every box of the phrase among the image's top max_detections (official R@-1 is over all of them)
        ranked = sorted((b for b in boxes if b[2] == index), key=lambda b: b[1], reverse=True)
        out += [
            {"image_id": item.key, "phrase_id": phrase.phrase_id, "bbox": bbox, "score": score}
            for bbox, score, _ in ranked
        ]
    return out


def _phrase_arg(p: Phrase):
    """One span -> (start, end); several -> the list of spans (the detector API takes both)."""
    return p.spans[0] if len(p.spans) == 1 else list(p.spans)


def _call(
    detector,
    ds: EvalDataset,
    paths: list[str],
    batch: list[WorkItem],
    box_threshold: float,
    max_detections: int,
    top_k: int,
    settings: EvalSettings,
    masks: dict | None = None,
    slicing: SliceSpec | None = None,
):
    if slicing is not None:  # each image's tiles and the whole image through the same calls, merged
        from groundscope.slicing import sliced_detect, sliced_ground, sliced_refer
    if ds.kind in DETECTION_KINDS:
        kwargs = dict(box_threshold=box_threshold, max_detections=max_detections, **settings.detect_kwargs(),
                      **(masks or {}))
        out = (detector.detect(paths, ds.classes, **kwargs) if slicing is None
               else sliced_detect(detector, paths, ds.classes, slicing, **kwargs))
    elif ds.kind == "refexp":
        exprs = [it.text for it in batch]
        out = (detector.refer(paths, exprs, top_k=top_k, **settings.refer_kwargs()) if slicing is None
               else sliced_refer(detector, paths, exprs, slicing, top_k=top_k, **settings.refer_kwargs()))
    else:
        captions = [it.text for it in batch]
        phrases = [[_phrase_arg(p) for p in it.phrases] for it in batch]
        if slicing is None:
            out = detector.ground(paths, captions, phrases=phrases, box_threshold=box_threshold,
                                  max_detections=max_detections)
        else:
            out = sliced_ground(detector, paths, captions, phrases, slicing, box_threshold=box_threshold,
                                max_detections=max_detections)
    out = [out] if hasattr(out, "xyxy") else list(out)
    if len(out) != len(batch):
        raise RuntimeError(f"detector returned {len(out)} results for {len(batch)} images")
    return out


# ---------------------------------------------------------------------------------------------- entry point
def is_detector(obj: Any) -> bool:
    """A detector (anything with ``detect`` / ``refer`` / ``ground``), as opposed to a function that loads one."""
    return any(hasattr(obj, m) for m in ("detect", "refer", "ground"))


def run_evaluation(
    detector: Any,
    dataset: str,
    annotations: str | Path,
    images: str | Path,
    out_dir: str | Path,
    *,
    label_map: str | Path | None = None,
    batch_size: int = 1,
    box_threshold: float = 0.0,
    max_detections: int = 300,
    top_k: int = 10,
    plot: bool = False,
    progress: bool = True,
    model_name: str | None = None,
    console: Console | None = None,
    precision: str = "fp32",
    settings: EvalSettings | None = None,
    categories: list[tuple[int, str]] | None = None,
    masks: bool = False,
    segmenter: Any = None,
    slicing: SliceSpec | None = None,
) -> dict:
    """Run `detector` over a dataset, write ``results.json`` and ``metrics.json`` to `out_dir`, return the metrics.

    Args:
        detector: anything with the detector API (``detect`` / ``refer`` / ``ground`` returning `Detections`),
            e.g. ``groundscope.load_detector(name)``; or a function without arguments that returns one. The
            function is called only once the annotations and image files have been checked and if images are
            left to run, so a bad file or an already finished run never waits for a model to load.
        dataset: one of `DATASET_KINDS`.
        annotations: the annotation file (see the module docstring).
        images: folder the annotations' file names are relative to.
        out_dir: output folder (created; an earlier partial run in it is resumed).
        label_map: ODVG label map file.
        batch_size: items per detector call.
        box_threshold, max_detections: passed to ``detect`` / ``ground`` (300 = the COCO/LVIS protocol).
        top_k: boxes kept per expression / phrase (P@10 and R@10 need 10).
        plot: also draw ``pr_curve.png`` (detection kinds).
        progress: show a progress bar.
        model_name: recorded in the journal (defaults to the detector's ``name`` or class name).
        console: where the progress bar goes (default: stderr).
        precision: the precision the detector runs at (`load_detector`'s), recorded in the journal so that a
            resumed run does not mix fp32 and bf16 results.
        settings: how the detector is asked and the results scored; None = the official evaluation of
            `dataset` (`groundscope.evaluate.protocols.official_settings`), `protocols.PLAIN` = `detect`'s defaults.
        categories: detection kinds: ``(category id, name)`` pairs to prompt with, in prompt order (default:
            every category of the file, its cleaned name, in id order).
        masks: coco datasets: also segment every box (``detect(..., masks=True)``) and report mask AP (segm, as
            pycocotools computes it) under ``metrics["segm"]``, next to the box AP; the ground truth needs a
            ``segmentation`` on every annotation.
        segmenter: the segmenter for `masks` (a `Segmenter` or a name; default: the detector's pairing).
        slicing: sliced inference (`groundscope.slicing.SliceSpec`) for small objects in large images: every item
            runs on its image's tiles and the whole image, merged (`sliced_detect` / `sliced_refer` /
            `sliced_ground`); recorded in the journal and in metrics.json under ``slicing``.

    Raises:
        EvaluationInputError: bad annotation file, missing images, or a journal of a different run in `out_dir`.
        groundscope.images.ImageLoadError: an unreadable image (the results so far are kept).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = Path(images)
    ds = load_eval_dataset(dataset, annotations, out_dir, label_map)
    if settings is None:
        settings = official_settings(dataset, model_name or getattr(detector, "name", None))
    if categories is not None:
        known_ids = set(ds.category_ids)
        unknown = [c for c, _ in categories if c not in known_ids]
        if ds.kind not in DETECTION_KINDS or unknown or not categories:
            raise EvaluationInputError(ds.source, f"has no category ids {unknown} to prompt for" if unknown
                                       else "categories are for non-empty detection datasets only")
        ds.category_ids = [int(c) for c, _ in categories]
        ds.classes = [name for _, name in categories]
    if masks and ds.kind != "coco":
        raise EvaluationInputError(ds.source, f"mask evaluation runs on coco datasets (masks in the ground truth); "
                                   f"{dataset} has none")
    if masks and not ds.gt.has_masks:
        raise EvaluationInputError(ds.source, "mask (segm) evaluation needs a 'segmentation' on every annotation; "
                                   "drop --masks to score boxes only")
    mask_args = {"masks": True, "segmenter": segmenter} if masks else None
    header = {
        "dataset": dataset,
        "annotations": str(Path(annotations).resolve()),
        "model": model_name
        or getattr(detector, "name", None)
        or getattr(detector, "__name__", type(detector).__name__),
        "box_threshold": box_threshold,
        "max_detections": max_detections,
        "top_k": top_k,
        "precision": precision,
        "settings": settings.record(),
    }
    if dataset == "phrase":
        header["phrase_boxes"] = "all"
    if slicing is not None:  # a resumed run must slice the same way
        header["slicing"] = slicing.record()
    if masks:  # a resumed run must segment with the same segmenter
        header["masks"] = getattr(segmenter, "name", None) or (str(segmenter) if segmenter is not None else "default")
    journal = ResultJournal(out_dir / JOURNAL, header)
    done = journal.load()
    known = {it.key for it in ds.items}
    stray = set(done) - known
    if stray:
        raise EvaluationInputError(
            str(journal.path), f"has results for image ids not in {ds.source}: {sorted(stray)[:5]}"
        )
    pending = [it for it in ds.items if it.key not in done]
    for it in pending:  # fail before loading a model or spending an hour, not at image 4,000
        if not (images / it.file_name).is_file():
            raise EvaluationInputError(ds.source, f"image file {images / it.file_name} not found", f"image {it.key}")

    if pending and not is_detector(detector):
        detector = detector()  # a factory: load the model now that there is work for it
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console or Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task(
            f"{dataset} {Path(annotations).name}", total=len(ds.items), completed=len(ds.items) - len(pending)
        )
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            paths = [str(images / it.file_name) for it in batch]
            for it, det in zip(
                batch, _call(detector, ds, paths, batch, box_threshold, max_detections, top_k, settings, mask_args,
                             slicing),
                strict=True
            ):
                recs = _records(ds, it, det, top_k)
                journal.append(it.key, recs)
                done[it.key] = recs
            bar.advance(task, len(batch))

    results_path = write_json(out_dir / "results.json", [r for it in ds.items for r in done[it.key]])
    if ds.kind in DETECTION_KINDS:
        records, _ = load_detection_results(results_path, ds.gt, allow_empty=True)
        if ds.kind == "lvis":
            metrics = lvis_metrics(ds.gt, records, curve=plot)
        else:
            metrics = coco_metrics(ds.gt, records, "bbox", curve=plot, max_dets=settings.max_dets)
            if masks:
                metrics["segm"] = coco_metrics(ds.gt, records, "segm", max_dets=settings.max_dets)
        if plot and metrics.get("pr_curve"):
            draw_pr_curve(metrics["pr_curve"], out_dir / "pr_curve.png", f"{dataset}: {Path(annotations).name}")
    elif ds.kind == "refexp":
        metrics = evaluate_refexp(annotations, results_path, overlap=settings.overlap)
    else:
        metrics = evaluate_phrase(annotations, results_path)
    metrics["settings"] = settings.record()
    if slicing is not None:
        metrics["slicing"] = slicing.record()
    write_json(out_dir / "metrics.json", metrics)
    return metrics
