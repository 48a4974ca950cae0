"""The bundled nano model's quality on the held-out synthetic test world, against the figures its card records.

    python benchmarks/bench_nano.py            # ~3 minutes on 2 CPU cores

Regenerates the test world the card names (``groundscope synth --n 200 --seed 1 --split test``, deterministic),
runs `evaluate_synth_world` with ``load_detector("nano")``, and prints each of the five numbers beside the value
in ``groundscope/models/bundled/nano/results.json`` and the card's target, and the wall time of the four
parts. A mismatch with the recorded value means the weights, the test
world or the scoring changed since the card was written.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from groundscope.data.synth import generate_world
from groundscope.evaluate.synth import evaluate_synth_world
from groundscope.models.loading import BUNDLED_DIR, load_detector

TARGETS = {"base_AP50": 0.8, "novel_AP50": 0.5, "rec_P@1": 0.6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nano", help="model to measure (default: the bundled nano)")
    ap.add_argument("--out", type=Path, default=None, help="keep the evaluation outputs here")
    args = ap.parse_args()
    recorded = json.loads((BUNDLED_DIR / "nano" / "results.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "synth_test"
        generate_world(world, 200, seed=1, split="test")
        detector = load_detector(args.model)
        start = time.perf_counter()
        result = evaluate_synth_world(detector, world, args.out or Path(tmp) / "eval", progress=True)
        seconds = time.perf_counter() - start
    print(f"\n{args.model} on the synthetic test world (200 images, seed 1), {seconds:.0f} s for the four parts")
    print(f"{'metric':<15}{'measured':>10}{'card':>10}{'ratio':>8}{'target':>8}")
    for key, value in result["summary"].items():
        card = recorded[key]
        ratio = value / card if card else float("nan")
        target = f"{TARGETS[key]:.2f}" if key in TARGETS else ""
        print(f"{key:<15}{value:>10.4f}{card:>10.4f}{ratio:>8.3f}{target:>8}")


if __name__ == "__main__":
    main()
