"""Running groundscope's own CLI from a benchmark: every arm of an ablation is a command a user can rerun."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log: Path) -> float:
    """Run a command with its output appended to `log`; returns the seconds it took."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - start


def sets(*pairs: str) -> list[str]:
    """``--set`` overrides for `groundscope train`."""
    return [x for p in pairs for x in ("--set", p)]


def results_journal(out: Path) -> tuple[dict, Callable[[], None]]:
    """``OUT/results.json`` as a dict (empty when new) and a function that writes it back: a rerun of a benchmark
    skips what the journal already holds."""
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}

    def save() -> None:
        path.write_text(json.dumps(results, indent=2) + "\n")

    return results, save


def measured_on() -> str:
    """"2026-12-03, x86_64 CPU, 2 cores, torch 2.13.0": the date and machine a results table states."""
    import torch

    return (f"{datetime.date.today().isoformat()}, {platform.machine()} CPU, {os.cpu_count()} cores, "
            f"torch {torch.__version__}")
