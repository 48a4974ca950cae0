"""ODinW (Object Detection in the Wild, ODinW13 / ODinW35): COCO metrics per dataset, then their average.

Each dataset is a COCO instances file and a COCO results file, scored one by one with `evaluate_coco`; the
reported number is the plain mean over datasets (GLIP / MM-Grounding-DINO average AP this way, every dataset
weighing the same whatever its size). mmdetection reports each dataset's stats rounded to 3 decimals
(``CocoMetric``: ``float(f'{round(val, 3)}')``, mmdet/evaluation/metrics/coco_metric.py ~L588) and the
published ODinW means are means of those: ``round_to=3`` averages the rounded values (the per-dataset metrics
keep full precision). The official runs also use pycocotools' maxDets [100, 300, 1000] (``max_dets``).

`ODINW_DATASETS` holds the official ODinW13 and ODinW35 lists (`builtin_odinw`): dataset folders, annotation
files, image folders, class names in prompt order and the per-dataset ``caption_prompt``, as
iSEE-Laboratory/LLMDet ``configs/val/grounding_dino_swin-t_odinw13.py`` / ``_odinw35.py`` (and mmdetection's
``configs/mm_grounding_dino/odinw/``, which are the same) define them; ``groundscope eval run --dataset odinw
--manifest odinw13`` runs them (`groundscope.evaluate.odinw_run`).

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

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from groundscope.evaluate.coco import COCO_KEYS, COCO_MAX_DETS, coco_keys, evaluate_coco
from groundscope.evaluate.validate import EvaluationInputError, JsonInput, load_json

ODINW_DATASETS = Path(__file__).with_name("odinw_datasets.json")
BUILTIN_MANIFESTS = ("odinw13", "odinw35")


@dataclass(frozen=True)
class OdinwDataset:
    """One ODinW dataset of an official list.

    Attributes:
        name: the name the official configs give it (``AerialMaritimeDrone``, ``EgoHands_generic``).
        folder: its folder under the ODinW root (``AerialMaritimeDrone/large``).
        annotations: the COCO file inside `folder` (``valid/annotations_without_background.json``).
        images: the image folder inside `folder` (``valid/``; ``""`` when the images sit beside the file).
        classes: the category names, in the order the prompt lists them.
        caption_prompt: per class, the prefix / name / suffix the prompt uses instead of the bare name.
    """

    name: str
    folder: str
    annotations: str
    images: str
    classes: tuple[str, ...]
    caption_prompt: dict = field(default_factory=dict)


@lru_cache(maxsize=None)
def _builtin_table() -> dict:
    return json.loads(ODINW_DATASETS.read_text())


def builtin_odinw(name: str) -> list[OdinwDataset]:
    """The official dataset list ``odinw13`` or ``odinw35``."""
    if name not in BUILTIN_MANIFESTS:
        raise ValueError(f"built-in ODinW lists are {', '.join(BUILTIN_MANIFESTS)}, not {name!r}")
    return [
        OdinwDataset(d["name"], d["folder"], d["annotations"], d["images"], tuple(d["classes"]),
                     d.get("caption_prompt", {}))
        for d in _builtin_table()[name]
    ]

OdinwEntry = tuple[str, JsonInput, JsonInput]


def average_metrics(
    per_dataset: Mapping[str, Mapping[str, float]], keys: Iterable[str] = COCO_KEYS, round_to: int | None = None
) -> dict:
    """Mean of each key over datasets, leaving out the -1 ("not applicable") entries; with `round_to`, of the
    values rounded to that many decimals (mmdetection's reported numbers)."""
    out = {}
    for key in keys:
        values = [m[key] if round_to is None else round(m[key], round_to)
                  for m in per_dataset.values() if m[key] != -1]
        out[key] = sum(values) / len(values) if values else -1.0
    return out


def evaluate_odinw(
    datasets: Iterable[OdinwEntry] | Mapping[str, tuple[JsonInput, JsonInput]],
    *,
    per_class: bool = False,
    max_dets: Sequence[int] = COCO_MAX_DETS,
    round_to: int | None = None,
) -> dict:
    """Score several COCO-format datasets one by one and average them.

    Args:
        datasets: ``(name, ground_truth, results)`` triples, or a mapping name -> (ground_truth, results).
        per_class: keep each dataset's per-class AP.
        max_dets: pycocotools' caps ([100, 300, 1000] in the official runs).
        round_to: average each dataset's values rounded to this many decimals (3 in the official reports).

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
        per_dataset[name] = evaluate_coco(gt, results, iou_types=("bbox",), per_class=per_class, max_dets=max_dets)
    out = {"datasets": per_dataset, "average": average_metrics(per_dataset, coco_keys(max_dets), round_to),
           "num_datasets": len(per_dataset)}
    if round_to is not None:
        out["rounded_to"] = round_to
    if tuple(max_dets) != COCO_MAX_DETS:
        out["max_dets"] = [int(m) for m in max_dets]
    return out


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
