"""The bad-input corpus (benchmarks/bad_inputs.py, its fast cases) through detect, label, serve, the Python API,
describe and eval coco: every bad item is named with its cause and no traceback or object repr, every good item
of the same run is still processed, and the exit codes say which happened. The benchmark runs the slow cases
(a 6000 x 4000 image, a decompression bomb) and writes the table docs/bad-inputs.md shows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bad_inputs  # noqa: E402


@pytest.fixture(autouse=True)
def in_process(monkeypatch):
    monkeypatch.setattr(bad_inputs, "IN_PROCESS", True)


@pytest.mark.parametrize("group", ["images", "prompts", "regions", "annotations"])
def test_every_case_of_the_corpus_holds_the_rule(group):
    outcomes = bad_inputs.run(fast=True, groups=(group,))
    assert outcomes, "the corpus produced no cases"
    broken = [o for o in outcomes if not o.ok]
    assert not broken, "\n" + bad_inputs.table(broken)
