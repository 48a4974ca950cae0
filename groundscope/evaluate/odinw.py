"""ODinW (Object Detection in the Wild, ODinW13 / ODinW35): COCO metrics per dataset, then their average.

Each dataset is a COCO instances file and a COCO results file, scored one by one with `evaluate_coco`; the
reported number is the plain mean over datasets (GLIP / MM-Grounding-DINO average AP this way, every dataset
weighing the same whatever its size).

A manifest names the datasets, for the CLI and for `load_odinw_manifest`; relative paths are resolved from the
manifest's folder::

    [{"name": "AerialMaritimeDrone", "annotations": "aerial/test/annotations.json", "results": "aerial.json"},
     ...]                                       # or {"AerialMaritimeDrone": {"annotations": .., "results": ..}}

Output of `evaluate_odinw`::

    {"datasets": {"AerialMaritimeDrone": {"AP": .., ... 12 COCO keys}, ...},
     "average": {"AP": .., ... 12 COCO keys}, "num_datasets": N}

In the average a key skips the datasets where the official tool gives -1 for it (e.g. APl when a dataset has no
large objects); it is -1 only when every dataset has -1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from groundscope.evaluate.coco import COCO_KEYS, evaluate_coco
from groundscope.evaluate.validate import EvaluationInputError, JsonInput, load_json

OdinwEntry = tuple[str, JsonInput, JsonInput]


def average_metrics(per_dataset: Mapping[str, Mapping[str, float]], keys: Iterable[str] = COCO_KEYS) -> dict:
    """Mean of each key over datasets, leaving out the -1 ("not applicable") entries."""
    out = {}
    for key in keys:
        values = [m[key] for m in per_dataset.values() if m[key] != -1]
        out[key] = sum(values) / len(values) if values else -1.0
    return out


def evaluate_odinw(
    datasets: Iterable[OdinwEntry] | Mapping[str, tuple[JsonInput, JsonInput]], *, per_class: bool = False
) -> dict:
    """Score several COCO-format datasets one by one and average them.

    Args:
        datasets: ``(name, ground_truth, results)`` triples, or a mapping name -> (ground_truth, results).
        per_class: keep each dataset's per-class AP.

    Raises:
        EvaluationInputError: a bad file in any dataset (the message names it); ValueError for no datasets or a
        repeated name.
    """
    entries = [(n, g, r) for n, (g, r) in datasets.items()] if isinstance(datasets, Mapping) else list(datasets)
    if not entries:
        raise ValueError("evaluate_odinw needs at least one dataset")
    per_dataset: dict[str, dict] = {}
    for name, gt, results in entries:
        if name in per_dataset:
            raise ValueError(f"dataset name {name!r} appears twice")
        per_dataset[name] = evaluate_coco(gt, results, iou_types=("bbox",), per_class=per_class)
    return {"datasets": per_dataset, "average": average_metrics(per_dataset), "num_datasets": len(per_dataset)}


def load_odinw_manifest(path: str | Path) -> list[OdinwEntry]:
    """Read a manifest (see the module docstring) -> ``(name, annotations path, results path)`` triples."""
    data, source = load_json(path, str(path))
    root = Path(path).resolve().parent
    if isinstance(data, dict):
        data = [{"name": name, **spec} if isinstance(spec, dict) else spec for name, spec in data.items()]
    if not isinstance(data, list) or not data:
        raise EvaluationInputError(source, "an ODinW manifest is a non-empty list of {name, annotations, results}")
    out = []
    for i, item in enumerate(data):
        if not (
            isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("name", "annotations", "results"))
        ):
            raise EvaluationInputError(
                source, "each dataset needs 'name', 'annotations' and 'results' strings", f"datasets[{i}]", item
            )
        out.append((item["name"], root / item["annotations"], root / item["results"]))
    return out
