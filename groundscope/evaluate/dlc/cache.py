"""The judge reply cache: ``{"judge": name, "regions": {"<region id>": {"pred", "responses"}}}``, saved as regions
finish so that an interrupted run with the same judge resumes where it stopped (`evaluate_dlc`'s ``cache``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path


def load_cache(path: Path, judge_name: str) -> dict[str, dict]:
    """Replies saved by an earlier run with the same judge (``{}`` when there are none or the judge differs)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("judge") != judge_name or not isinstance(data.get("regions"), dict):
        return {}
    return data["regions"]


def save_cache(path: Path, judge_name: str, cache: Mapping[str, dict]) -> None:
    from groundscope.evaluate.report import write_json

    write_json(path, {"judge": judge_name, "regions": dict(cache)})
