"""Run a detector over an official ODinW list: ``groundscope eval run ROOT --dataset odinw --manifest odinw13``.

ROOT is the ODinW folder the official configs call ``data/odinw/`` (as GLIP's download script lays it out); each
dataset of the list (`groundscope.evaluate.odinw.builtin_odinw`) is one `run_evaluation` in ``OUT/<name>/``, so an
interrupted run resumes, with the official settings (`protocols.official_settings("odinw")`: every class in one
prompt, top 300, maxDets [100, 300, 1000]) and the dataset's ``caption_prompt``. The classes are prompted in the
config's order and mapped to the file's categories as mmdetection's ``CocoDataset`` maps them (the i-th class
name -> the i-th category of the file whose name is in the list). ``OUT/odinw.json`` holds every dataset's
metrics and the mean of their 3-decimal values, which is how the published ODinW numbers are averaged.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from groundscope.evaluate.odinw import OdinwDataset, builtin_odinw, evaluate_odinw
from groundscope.evaluate.protocols import EvalSettings, official_settings
from groundscope.evaluate.report import write_json
from groundscope.evaluate.run import is_detector, prompt_name, run_evaluation
from groundscope.evaluate.validate import EvaluationInputError

ROUND_TO = 3


def dataset_categories(ds: OdinwDataset, annotations: Path) -> list[tuple[int, str]]:
    """(category id, prompt name) pairs in the config's class order, mapped as mmdetection's ``CocoDataset``:
    ``cat_ids = coco.get_cat_ids(cat_names=classes)`` (file order), label i -> ``cat_ids[i]``."""
    try:
        cats = json.loads(annotations.read_text())["categories"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvaluationInputError(str(annotations), f"cannot read its categories ({e})") from None
    ids = [int(c["id"]) for c in cats if c.get("name") in ds.classes]
    if len(ids) != len(ds.classes):
        names = [c.get("name") for c in cats]
        missing = [n for n in ds.classes if n not in names]
        raise EvaluationInputError(
            str(annotations), f"lacks the categories {missing} that the official {ds.name} list prompts for; "
            "is this the dataset's official annotation file?"
        )
    return [(cid, prompt_name(name)) for cid, name in zip(ids, ds.classes)]


def dataset_settings(ds: OdinwDataset, base: EvalSettings) -> EvalSettings:
    """`base` with the dataset's caption prompt (keys cleaned as the prompt names are)."""
    return dataclasses.replace(base, caption_prompt={prompt_name(k): v for k, v in ds.caption_prompt.items()})


def run_odinw(
    detector: Any,
    manifest: str,
    root: str | Path,
    out_dir: str | Path,
    *,
    settings: EvalSettings | None = None,
    console: Console | None = None,
    **run_kwargs,
) -> dict:
    """Run every dataset of the official list `manifest` under `root`; returns `evaluate_odinw`'s dict.

    `run_kwargs` go to `run_evaluation` (batch_size, box_threshold, max_detections, progress, model_name,
    precision). Every annotation file is checked before a model is loaded.
    """
    root, out_dir = Path(root), Path(out_dir)
    base = settings or official_settings("odinw")
    entries = builtin_odinw(manifest)
    plan = []
    for ds in entries:
        ann = root / ds.folder / ds.annotations
        if not ann.is_file():
            raise EvaluationInputError(
                str(ann), f"not found: {manifest} needs every ODinW dataset under {root} as the official configs "
                f"lay them out ({ds.name}: {ds.folder}/{ds.annotations})"
            )
        plan.append((ds, ann, root / ds.folder / ds.images, dataset_categories(ds, ann)))
    loaded: list[Any] = []

    def load() -> Any:
        if not loaded:
            loaded.append(detector if is_detector(detector) else detector())
        return loaded[0]

    triples = []
    for ds, ann, images, categories in plan:
        if console is not None:
            console.print(f"{ds.name} ({len(categories)} classes)", highlight=False)
        run_evaluation(load, "coco", ann, images, out_dir / ds.name, settings=dataset_settings(ds, base),
                       categories=categories, console=console, **run_kwargs)
        triples.append((ds.name, ann, out_dir / ds.name / "results.json"))
    result = evaluate_odinw(triples, max_dets=base.max_dets, round_to=ROUND_TO)
    result["manifest"] = manifest
    write_json(out_dir / "odinw.json", result)
    return result
