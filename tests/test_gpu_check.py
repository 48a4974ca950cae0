"""benchmarks/gpu_check.py, the prepared GPU check: without CUDA it says so and exits 0; with --device cpu its
whole comparison logic runs (the CPU against itself: the fast path against transformers' modules) and writes the
table it would write on a GPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


def test_without_cuda_it_says_so_and_exits_0(gpu_check, monkeypatch, capsys, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "gpu.md")]) == 0
    assert "no CUDA device: nothing to check" in capsys.readouterr().out
    assert not (tmp_path / "gpu.md").exists()


def test_cpu_quick_detect_writes_a_table_that_parses(gpu_check, tmp_path, capsys):
    out = tmp_path / "gpu_cpu.md"
    rc = gpu_check.main(["--device", "cpu", "--quick", "--only", "detect", "--precisions", "fp32", "--batches", "1",
                         "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    text = out.read_text()
    assert "benchmarks/gpu_check.py --device cpu --quick --only detect" in text and "Date: 20" in text
    rows = gpu_check.parse_table(text)
    assert [tuple(r) for r in rows][:1] == [gpu_check.COLUMNS]
    (row,) = rows
    assert (row["task"], row["precision"], row["batch"], row["check"]) == ("detect nano", "fp32", "1", "pass")
    assert float(row["images/s"]) > 0 and row["peak GPU MiB"] == "-"
    assert row["match vs CPU"].startswith("100/100 CPU top-100 twins")
    assert "| detect nano | fp32 | 1 |" in printed  # the progress line and the final table


def test_comparison_rules(gpu_check):
    import numpy as np

    from groundscope.detections import Detections

    def dets(xyxy, scores, ids):
        return Detections(xyxy=np.asarray(xyxy, np.float32), scores=np.asarray(scores, np.float32),
                          class_ids=np.asarray(ids), labels=[str(i) for i in ids])

    ref = dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.5], [0, 1])
    near = dets([[20.2, 20, 40, 40.3], [0, 0, 10.4, 10]], [0.5004, 0.8995], [1, 0])  # reordered, within tolerance
    assert gpu_check.twins(ref, near, 100, 1e-3, px_tol=0.5)[:2] == (2, 2)
    moved = dets([[0, 0, 10, 11], [20, 20, 40, 40]], [0.9, 0.5], [0, 0])  # a box 1 px off, a class changed
    assert gpu_check.twins(ref, moved, 100, 1e-3, px_tol=0.5)[:2] == (0, 2)
    assert gpu_check.twins(ref, moved, 100, 0.1, iou_min=0.85)[:2] == (1, 2)
    assert gpu_check.finite(ref) and not gpu_check.finite(dets([[0, 0, np.nan, 1]], [0.1], [0]))
