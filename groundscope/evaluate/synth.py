"""The synthetic world's open-vocabulary benchmark: one call runs the four evaluations of a ``--split test`` folder.

``groundscope synth --split test`` writes, for the same images:

==================  ==========================================  ===========================================
file                prompt                                      measures
==================  ==========================================  ===========================================
coco_base.json      the 56 base class names                     AP, AP50 on combinations seen in training
coco_novel.json     the 8 held-out names ("red star", ...)      AP50 on colour-shape pairs never trained on
coco_synonyms.json  base names with test-only colour words      AP50 when the colour is a word never trained
                    ("crimson circle", ...)                     on
refexp.json         one referring expression per call           Precision@1 (IoU >= 0.5)
==================  ==========================================  ===========================================

Each is a `run_evaluation` in its own sub-folder of the output, so an interrupted benchmark resumes, and the
summary (``summary.json``) holds the five headline numbers the nano model card reports.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from groundscope.evaluate.protocols import PLAIN
from groundscope.evaluate.run import is_detector, run_evaluation
from groundscope.evaluate.validate import EvaluationInputError

# (sub-folder of the output, annotation file, dataset kind, ((metric of that part, its summary key), ...))
SYNTH_PARTS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...] = (
    ("base", "coco_base.json", "coco", (("AP", "base_AP"), ("AP50", "base_AP50"))),
    ("novel", "coco_novel.json", "coco", (("AP50", "novel_AP50"),)),
    ("synonyms", "coco_synonyms.json", "coco", (("AP50", "synonyms_AP50"),)),
    ("refexp", "refexp.json", "refexp", (("P@1", "rec_P@1"),)),
)


def evaluate_synth_world(
    detector: Any | Callable[[], Any],
    test_dir: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int = 1,
    max_detections: int = 100,
    progress: bool = True,
    model_name: str | None = None,
    console: Console | None = None,
    precision: str = "fp32",
) -> dict:
    """Run the four evaluations of a synthetic test folder and return ``{"summary": {...}, "base": metrics, ...}``.

    Args:
        detector: a detector, or a function without arguments that returns one (called at most once, and only
            if some part still has images to run).
        test_dir: a folder written by ``groundscope synth --split test`` (annotation files + ``images/``).
        out_dir: one sub-folder per part (results.json, metrics.json, resumable journal) + ``summary.json``.
        max_detections: boxes per image for the detection parts (the images hold at most 8 objects).
        precision: the detector's precision, recorded in each part's journal (`run_evaluation`).

    Raises:
        EvaluationInputError: `test_dir` lacks one of the four annotation files.
    """
    test_dir, out_dir = Path(test_dir), Path(out_dir)
    missing = [name for _, name, _, _ in SYNTH_PARTS if not (test_dir / name).is_file()]
    if missing:
        raise EvaluationInputError(
            str(test_dir),
            f"lacks {', '.join(missing)}; give a folder written by `groundscope synth --out DIR --split test`",
        )
    loaded: list[Any] = []

    def load() -> Any:
        if not loaded:
            loaded.append(detector if is_detector(detector) else detector())
        return loaded[0]

    result: dict = {"summary": {}}
    for folder, name, kind, keys in SYNTH_PARTS:
        metrics = run_evaluation(
            load, kind, test_dir / name, test_dir, out_dir / folder,
            batch_size=batch_size, max_detections=max_detections, progress=progress,
            model_name=model_name, console=console, precision=precision, settings=PLAIN,
        )
        result[folder] = metrics
        for metric, summary_key in keys:
            result["summary"][summary_key] = float(metrics[metric])
    return result
