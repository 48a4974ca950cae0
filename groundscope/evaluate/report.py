"""Terminal tables (rich) and JSON output for the metric dicts of `groundscope.evaluate`.

Tables round to 4 decimals for reading; the JSON keeps every digit the evaluator computed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from rich.table import Table

from groundscope.evaluate.coco import COCO_KEYS, coco_keys
from groundscope.evaluate.lvis import LVIS_AP_KEYS


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# What each key means, in the words of the official summaries.
MEANING = {
    "AP": "AP @ IoU 0.50:0.95",
    "AP50": "AP @ IoU 0.50",
    "AP75": "AP @ IoU 0.75",
    "APs": "AP, small objects (area < 32²)",
    "APm": "AP, medium objects (32² to 96²)",
    "APl": "AP, large objects (area > 96²)",
    "APr": "AP, rare categories",
    "APc": "AP, common categories",
    "APf": "AP, frequent categories",
    "AR1": "AR, 1 detection per image",
    "AR10": "AR, 10 detections per image",
    "AR100": "AR, 100 detections per image",
    "ARs": "AR, small objects",
    "ARm": "AR, medium objects",
    "ARl": "AR, large objects",
    # the synthetic world's benchmark (groundscope.evaluate.synth)
    "base_AP": "AP @ IoU 0.50:0.95, the 56 base colour-shape classes",
    "base_AP50": "AP @ IoU 0.50, base classes",
    "novel_AP50": "AP @ IoU 0.50, the 8 colour-shape pairs never trained on",
    "synonyms_AP50": "AP @ IoU 0.50, base classes named with test-only colour words",
    "rec_P@1": "referring expressions: top box at IoU >= 0.5",
}


def _meaning(key: str) -> str:
    if key in MEANING:
        return MEANING[key]
    if key.startswith("AR@"):
        return f"AR, {key[3:]} detections per image"
    if key[:2] == "AR" and key[2:].isdigit():
        return f"AR, {key[2:]} detections per image"
    if key == "R@-1":
        return "recall of all the phrase's boxes at IoU >= 0.5 (upper bound)"
    if key[:2] in ("P@", "R@"):
        kind = "precision" if key[0] == "P" else "recall"
        return f"{kind} of the top {key[2:]} boxes at IoU >= 0.5"
    return ""


def metrics_table(
    title: str, metrics: Mapping, keys: Iterable[str] | None = None, extra: Mapping | None = None
) -> Table:
    """One row per scalar metric (all scalar entries of `metrics`, or `keys`): name, value, meaning.

    With `extra` (e.g. LVIS fixed AP), a second value column shows its entries for the same keys.
    """
    keys = [k for k in (keys or metrics) if k in metrics and isinstance(metrics[k], (int, float))]
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value" if extra is None else "standard", justify="right")
    if extra is not None:
        table.add_column("fixed", justify="right")
    table.add_column("", style="dim")
    for k in keys:
        values = [fmt(metrics[k])] + ([] if extra is None else [fmt(extra.get(k)) if k in extra else ""])
        table.add_row(k, *values, _meaning(k))
    return table


def per_class_table(rows: Sequence[Mapping], title: str = "per-class AP") -> Table:
    table = Table(title=title, title_justify="left")
    extra = ["frequency"] if rows and "frequency" in rows[0] else []
    for col in ["id", "name", *extra, "AP", "AP50"]:
        table.add_column(col, justify="right" if col in ("id", "AP", "AP50") else "left")
    for r in rows:
        table.add_row(str(r["id"]), str(r["name"]), *(str(r[c]) for c in extra), fmt(r["AP"]), fmt(r["AP50"]))
    return table


def coco_tables(metrics: Mapping, *, per_class: bool = False) -> list[Table]:
    caps = metrics.get("max_dets")
    keys = coco_keys(caps) if caps else COCO_KEYS
    title = f"COCO {metrics.get('iou_type', 'bbox')}" + (f" (maxDets {caps})" if caps else "")
    tables = [metrics_table(title, metrics, keys)]
    if per_class and metrics.get("per_class"):
        tables.append(per_class_table(metrics["per_class"]))
    if isinstance(metrics.get("segm"), Mapping):
        tables += coco_tables(metrics["segm"], per_class=per_class)
    return tables


def lvis_tables(metrics: Mapping, *, per_class: bool = False) -> list[Table]:
    ar = [k for k in metrics if k.startswith("AR@")]
    fixed = metrics.get("fixed") if isinstance(metrics.get("fixed"), Mapping) else None
    title = "LVIS" + (f" (fixed AP: {fixed.get('max_dets_per_cat')} detections per category)" if fixed else "")
    tables = [metrics_table(title, metrics, [*LVIS_AP_KEYS, *ar], extra=fixed)]
    if per_class and metrics.get("per_class"):
        tables.append(per_class_table(metrics["per_class"]))
    return tables


def odinw_table(result: Mapping, keys: Sequence[str] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")) -> Table:
    table = Table(title=f"ODinW ({result['num_datasets']} datasets)", title_justify="left")
    table.add_column("dataset")
    for k in keys:
        table.add_column(k, justify="right")
    for name, m in result["datasets"].items():
        table.add_row(name, *(fmt(m[k]) for k in keys))
    table.add_section()
    table.add_row("average", *(fmt(result["average"][k]) for k in keys), style="bold")
    return table


def write_json(path: str | Path, payload) -> Path:
    """Write JSON atomically (temp file + rename): a crash never leaves half a metrics file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path
