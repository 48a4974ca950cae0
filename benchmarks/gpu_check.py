"""A prepared GPU check: detect, describe, train and the ONNX graph on CUDA, each against the CPU, in one table.

For the day a GPU is at hand for a few minutes. Under 5 minutes on a cold GPU (an H200: first CUDA call, kernel
selection) it prints, one line per row as it goes and then as one markdown table: task, precision, batch,
images per second, peak GPU memory (``torch.cuda.max_memory_allocated``, reset per row, so the model's weights
count) and whether the device's results match the CPU's. Its last results go to ``benchmarks/results/gpu.md``
(with the date, the GPU's name and the exact command). Exit code 1 if a check failed, 0 otherwise; without CUDA
(and the default ``--device cuda``) it prints "no CUDA device: nothing to check" and exits 0.

    python benchmarks/gpu_check.py                       # on a machine with a GPU: every row, ~2-4 minutes
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_cpu.md   # the whole logic on a CPU
    python benchmarks/gpu_check.py --only detect describe --timeout 120

On a lent GPU machine (the device tool's ``run``; its own ``python3`` holds CUDA PyTorch, transformers, onnx and
onnxruntime; carry nothing: the repository's ``.venv`` is CPU-only PyTorch, and too large to travel), with a
``timeout_s`` of 420::

    set -o pipefail; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py 2>&1 | tee $OUT/gpu_check.log; rc=$?;
    cp benchmarks/results/gpu.md $OUT/ 2>/dev/null; exit $rc

then copy the returned ``gpu.md`` to ``benchmarks/results/gpu.md`` and commit it.

No network: HF_HUB_OFFLINE=1 is set unless given; every model is bundled (``nano``, ``dam-nano``) or built here
with random weights. It needs only what ``import groundscope`` needs plus onnx / onnxruntime for the ONNX row,
and runs from the checkout without installing it (the repository root goes on ``sys.path``), so a GPU machine's
own ``python3`` with CUDA PyTorch runs it as ``python3 benchmarks/gpu_check.py``.

Rows (``--only`` picks sections; ``--quick``: batches 1 and 2, nano only, one timed call per row, no warm-up):

- ``detect nano``: the bundled, trained nano on ``examples/synth_shapes.png`` (and its mirror images for the
  batch), fp32 / bf16 / fp16, batch 1 and 8.
- ``detect GDINO-T``: Grounding-DINO-T size (Swin-T, BERT-base, d_model 256, 6 + 6 layers, 900 queries) with
  random weights (they cost what trained ones do; built as ``benchmarks/bench_detect.py`` builds it, layer norms
  feeding the heads shrunk so scores are not all a saturated 1.0), random 800x1333 images, a prompt of COCO
  names in nano's tokenizer cut to 195 tokens (the length of the 80 COCO names in BERT's: one chunk, as
  there). fp32 / bf16 / fp16, batch 1 and 8, and fp32 batch 8 with transformers' own modules (``fast=False``).
  Not in ``--quick``.
- ``describe dam-nano``: the bundled DAM on the demo image's object boxes, greedy (temperature 0), fp32 and fp16.
- ``train nano``: a few optimizer steps fine-tuning the bundled nano on a synthetic world of one batch
  (``groundscope.data.generate_world``, the same images every step), fp32 and bf16 autocast.
- ``onnx nano``: the graph exported on the CPU (``groundscope.export.onnx.export_onnx``) run by onnxruntime
  (its CUDA provider where installed, else its CPU one: the row says which) against the PyTorch model on the
  device.

images/s counts images end to end (``detect``: decode-free preprocessing, forward, post-processing), regions for
``describe``, training images for ``train``.

What "match" means, and where each tolerance comes from:

- detect, fp32 on the device against the CPU: the CPU reference is transformers' own modules
  (``load_detector(..., fast=False)``) on the first image. Each of the CPU's top-100 detections needs a twin among
  the device's 300 (same class, score within 1e-3, every box corner within 0.5 px): the tolerance
  ``tests/test_export_onnx.py`` holds for the same fp32 graph run by another runtime (onnxruntime's detections
  against PyTorch's: scores atol 1e-3, boxes atol 0.5 px). Pass at >= 95% twins, not 100%: random weights leave
  near-ties among the 22k encoder tokens the 900 queries are picked from, and a swap at the 900th place changes a
  query. fp32 on the device means IEEE fp32: TF32 is switched off for matmuls and cuDNN (``--tf32`` leaves
  PyTorch's defaults, and the fp32 rows may then fail this rule).
- detect, bf16 and fp16 against fp32 on the device (same batch, first image): each of fp32's top 20 has a twin
  (same class, IoU >= 0.85, score within 0.1), pass at >= 90%: ``tests/test_fast_path.py``
  (test_bf16_keeps_heads_fp32_and_detections_close_on_nano). A pass/fail check on the trained nano only; on
  random weights the share is printed as information (``benchmarks/bench_detect.py``: rounding reshuffles their
  near-tied top-100) and the row checks that the detections are finite. bf16 is ``precision="bf16"``
  (``groundscope.models.fast.precision``), fp16 the whole model in float16 (``dtype=torch.float16``).
- describe: the device's greedy texts equal the CPU's, word piece for word piece, else the first differing token
  is named (fp32). fp16 is compared with the device's fp32 as information; its check is that every region was
  described.
- train: every loss finite, the loss on the repeated batch lower after the steps than at the first, and the
  first step's loss equal to the CPU's within 1e-3 relative (no test states a cross-device training tolerance:
  this script's own, the order of the detect score rule). bf16 autocast: the first step's loss within 5% of the
  device's fp32 one, the tolerance of ``tests/test_train.py`` (test_activation_checkpointing_is_exact_and_bf16_runs).
- onnx: max |logit difference| (finite logits) and max |box difference| <= 1e-3, the tolerance
  ``groundscope export onnx`` verifies with (``VERIFY_TOLERANCE``) and ``tests/test_export_onnx.py`` holds.

``--timeout`` (default 270 s) bounds the whole run: rows that would start after it are skipped (and listed as
such), and a row still running 5 s after it is stopped as soon as Python gets control back.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = HERE / "results" / "gpu.md"
SCRIPT_NAME = "benchmarks/gpu_check.py"
EXAMPLE_IMAGE = REPO / "examples" / "synth_shapes.png"
EXAMPLE_JSON = REPO / "examples" / "synth_shapes.json"
SECTIONS = ("detect", "describe", "train", "onnx")
PRECISIONS = ("fp32", "bf16", "fp16")

# Tolerances (see the module docstring for their sources).
STRICT_TOP, STRICT_SCORE, STRICT_PX, STRICT_SHARE = 100, 1e-3, 0.5, 0.95  # fp32 device vs CPU
LOOSE_TOP, LOOSE_IOU, LOOSE_SCORE, LOOSE_SHARE = 20, 0.85, 0.1, 0.9  # bf16 / fp16 vs fp32 (test_fast_path)
TRAIN_FP32_REL, TRAIN_BF16_REL = 1e-3, 0.05
ONNX_TOL = 1e-3
ALARM_GRACE = 5.0  # seconds past --timeout before a running row is stopped
T_PROMPT_TOKENS = 195  # the 80 COCO names in BERT-base-uncased's tokenizer: one chunk of 195 tokens

COLUMNS = ("task", "precision", "batch", "images/s", "peak GPU MiB", "match vs CPU", "check")


class RowTimeout(Exception):
    """Raised by the --timeout alarm inside a running row."""


@dataclass
class Row:
    task: str
    precision: str
    batch: str
    ips: float | None = None
    peak_mib: float | None = None
    match: str = ""
    check: str = "info"  # pass / FAIL / info / skip

    def cells(self) -> list[str]:
        ips = "-" if self.ips is None else (f"{self.ips:.1f}" if self.ips >= 10 else f"{self.ips:.2f}")
        peak = "-" if self.peak_mib is None else f"{self.peak_mib:.0f}"
        return [self.task, self.precision, self.batch, ips, peak, self.match.replace("|", "/"), self.check]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in `text` as {column: cell} (what this script writes)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return []
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


# ---------------------------------------------------------------------------------------------- comparisons
def twins(ref, got, top: int, score_tol: float, px_tol: float | None = None, iou_min: float | None = None):
    """(found, n, max |score diff| over the found): how many of `ref`'s first `top` detections have a twin in
    `got`: same class, |score difference| <= score_tol, and every corner within px_tol pixels / IoU >= iou_min."""
    import numpy as np

    from groundscope.detections import box_iou

    a_xy, a_s, a_c = (np.asarray(ref.xyxy)[:top].reshape(-1, 4), np.asarray(ref.scores)[:top],
                      np.asarray(ref.class_ids)[:top])
    b_xy, b_s, b_c = np.asarray(got.xyxy).reshape(-1, 4), np.asarray(got.scores), np.asarray(got.class_ids)
    if len(a_s) == 0:
        return 0, 0, 0.0
    if len(b_s) == 0:
        return 0, len(a_s), float("nan")
    diff = np.abs(a_s[:, None].astype(np.float64) - b_s[None].astype(np.float64))
    ok = (a_c[:, None] == b_c[None]) & (diff <= score_tol)
    if px_tol is not None:
        ok &= (np.abs(a_xy[:, None, :] - b_xy[None, :, :]) <= px_tol).all(-1)
    if iou_min is not None:
        ok &= box_iou(a_xy, b_xy) >= iou_min
    found = ok.any(1)
    worst = float(np.where(ok, diff, np.inf).min(1)[found].max()) if found.any() else float("nan")
    return int(found.sum()), len(a_s), worst


def finite(dets) -> bool:
    import numpy as np

    return len(dets) > 0 and bool(np.isfinite(dets.scores).all() and np.isfinite(dets.xyxy).all())


def first_token_difference(tokenizer, a: str, b: str) -> str:
    ta, tb = tokenizer.tokenize(a), tokenizer.tokenize(b)
    for i, (x, y) in enumerate(zip(ta, tb)):
        if x != y:
            return f"token {i}: {x!r} vs {y!r}"
    return f"token {min(len(ta), len(tb))}: one text ends ({len(ta)} vs {len(tb)} tokens)"


# ---------------------------------------------------------------------------------------------- the run
class Check:
    def __init__(self, args):
        import torch

        self.torch = torch
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.quick = args.quick
        self.rows: list[Row] = []
        self.start = time.perf_counter()
        self.deadline = self.start + args.timeout
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.batches = args.batches or ([1, 2] if args.quick else [1, 8])
        self.max_iters = 1 if args.quick else args.iters
        self.row_budget = args.row_budget

    # ------------------------------------------------------------------ helpers
    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def timed(self, call, items: int):
        """(items per second: the median of up to --iters timed calls within --row-budget s, after one warm-up
        call unless --quick; peak GPU MiB from the warm-up on, or None on a CPU; the last call's output)."""
        torch = self.torch
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        if not self.quick:
            call()
            self.sync()
        times, out = [], None
        end = time.perf_counter() + self.row_budget
        while True:
            t = time.perf_counter()
            out = call()
            self.sync()
            times.append(time.perf_counter() - t)
            if len(times) >= self.max_iters or time.perf_counter() >= end or self.left() <= 0:
                break
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None
        return items / statistics.median(times), peak, out

    def row(self, task: str, precision: str, batch, fn) -> Row:
        """Run `fn() -> dict(ips=, peak=, match=, check=)` as one row and print it at once. Past the deadline the
        row is skipped; an exception makes it a FAIL row naming the error (traceback on stderr)."""
        row = Row(task, precision, str(batch))
        if self.left() <= 0:
            row.check, row.match = "skip", "skipped: --timeout reached"
        else:
            try:
                got = fn()
                row.ips, row.peak_mib = got.get("ips"), got.get("peak")
                row.match, row.check = got.get("match", ""), got.get("check", "info")
            except RowTimeout:
                row.check, row.match = "skip", "stopped: --timeout reached while it ran"
            except Exception as e:  # a failed row is a result; the other rows still run
                traceback.print_exc()
                msg = " ".join(f"{type(e).__name__}: {e}".split())
                row.check, row.match = "FAIL", msg[:160] + ("..." if len(msg) > 160 else "")
            finally:
                self.free()
        self.rows.append(row)
        elapsed = time.perf_counter() - self.start
        print(f"[{elapsed:6.1f}s] " + " | ".join(row.cells()), flush=True)
        return row

    # ------------------------------------------------------------------ detect
    def detect_nano(self) -> None:
        from PIL import Image, ImageOps

        import groundscope as gs

        classes = json.loads(EXAMPLE_JSON.read_text())["classes"]
        img = Image.open(EXAMPLE_IMAGE).convert("RGB")
        base = [img, ImageOps.mirror(img), ImageOps.flip(img), ImageOps.flip(ImageOps.mirror(img))]
        images = (base * (1 + max(self.batches) // len(base)))[: max(self.batches)]
        path = gs.load_detector("nano").path
        self.detect_model("detect nano", path, images, classes, trained=True)

    def detect_t(self) -> None:
        import numpy as np
        from PIL import Image

        holder = {}

        def build():
            t = time.perf_counter()
            holder["dir"], holder["classes"] = build_gdino_t(self.tmp / "gdino_t")
            return {"match": f"built and saved in {time.perf_counter() - t:.0f} s; prompt: "
                             f"{len(holder['classes'])} of the COCO names, {T_PROMPT_TOKENS} tokens at most",
                    "check": "info"}

        self.row("build GDINO-T (random)", "fp32", "-", build)
        if "dir" not in holder:
            return
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 255, (800, 1333, 3), dtype=np.uint8))
                  for _ in range(max(self.batches))]
        self.detect_model("detect GDINO-T", holder["dir"], images, holder["classes"], trained=False)

    def detect_model(self, task: str, path, images, classes, trained: bool) -> None:
        """The rows of one detector: fp32 against the CPU, bf16 / fp16 against the device's fp32."""
        import torch

        import groundscope as gs

        state: dict = {}  # "cpu": CPU reference (image 0); ("fp32", b): device fp32 result (image 0) per batch

        def cpu_reference():
            if "cpu" not in state:
                det = gs.load_detector(path, device="cpu", fast=False)
                state["cpu"] = det.detect(images[0], classes)
                del det
            return state["cpu"]

        def strict(dets) -> tuple[str, str]:
            found, n, worst = twins(cpu_reference(), dets, STRICT_TOP, STRICT_SCORE, px_tol=STRICT_PX)
            ok = n > 0 and found / n >= STRICT_SHARE and finite(dets)
            return f"{found}/{n} CPU top-{n} twins (max dscore {worst:.1e})", "pass" if ok else "FAIL"

        def loose(b, dets, precision) -> tuple[str, str]:
            ref = state.get(("fp32", b))
            if ref is None:
                return "no device fp32 result to compare with", "pass" if finite(dets) else "FAIL"
            found, n, _ = twins(ref, dets, LOOSE_TOP, LOOSE_SCORE, iou_min=LOOSE_IOU)
            share = f"{found}/{n} of fp32's top-{n} twinned"
            if trained:
                ok = n > 0 and found / n >= LOOSE_SHARE and finite(dets)
                return share, "pass" if ok else "FAIL"
            return share + " (random weights: information); finite", "pass" if finite(dets) else "FAIL"

        def loader(precision: str, fast: bool = True):
            if precision == "fp32":
                return lambda: gs.load_detector(path, device=self.device, fast=fast)
            if precision == "bf16":
                return lambda: gs.load_detector(path, device=self.device, precision="bf16")
            return lambda: gs.load_detector(path, device=self.device, dtype=torch.float16)

        arms = [(p, True) for p in self.args.precisions]
        if not trained and not self.quick and "fp32" in self.args.precisions:
            arms.insert(1, ("fp32", False))  # transformers' own modules on the device: the fast path's baseline
        for precision, fast in arms:
            det_box: dict = {}
            label = precision if fast else "fp32 (transformers modules)"
            batches = self.batches if fast else [max(self.batches)]
            for b in batches:
                def run(b=b, precision=precision, fast=fast, det_box=det_box):
                    if "det" not in det_box:
                        det_box["det"] = loader(precision, fast)()
                    det = det_box["det"]
                    batch = images[:b]
                    ips, peak, out = self.timed(lambda: det.detect(batch, classes, batch_size=b), b)
                    first = out[0]
                    if precision == "fp32" and fast:
                        state[("fp32", b)] = first
                    if precision == "fp32":
                        match, check = strict(first)
                        if b > 1:
                            match = "image 0 of the batch: " + match
                    else:
                        match, check = loose(b, first, precision)
                    return {"ips": ips, "peak": peak, "match": match, "check": check}

                self.row(task, label, b, run)
            det_box.clear()
            self.free()

    # ------------------------------------------------------------------ describe
    def describe(self) -> None:
        import groundscope as gs

        objects = json.loads(EXAMPLE_JSON.read_text())["objects"]
        regions = [{"box": o["box"]} for o in objects][: (2 if self.quick else 4)]
        tokens = 12 if self.quick else 24
        state: dict = {}

        def texts(dam):
            out = dam.describe(str(EXAMPLE_IMAGE), regions, temperature=0.0, max_new_tokens=tokens,
                               batch_size=len(regions))
            bad = [d.error for d in out if not d.ok or not d.text]
            if bad:
                raise RuntimeError(f"regions not described: {bad}")
            return [d.text for d in out]

        def compare(ref: list[str], got: list[str], tokenizer, against: str) -> tuple[int, str]:
            same = sum(a == b for a, b in zip(ref, got))
            if same == len(ref):
                return same, f"{same}/{len(ref)} texts equal {against}'s"
            i = next(k for k, (a, b) in enumerate(zip(ref, got)) if a != b)
            return same, (f"{same}/{len(ref)} texts equal {against}'s; region {i}: "
                          f"{first_token_difference(tokenizer, ref[i], got[i])}")

        for dtype, label in (("float32", "fp32"), ("float16", "fp16")):
            if label not in self.args.precisions:
                continue

            def run(dtype=dtype, label=label):
                if label == "fp32":
                    cpu = gs.load_describer("dam-nano", device="cpu", dtype="float32")
                    state["cpu"] = texts(cpu)
                    del cpu
                dam = gs.load_describer("dam-nano", device=self.device, dtype=dtype)
                ips, peak, got = self.timed(lambda: texts(dam), len(regions))
                tok = dam.model.tokenizer
                if label == "fp32":
                    state["fp32"] = got
                    same, match = compare(state["cpu"], got, tok, "the CPU")
                    return {"ips": ips, "peak": peak, "match": match,
                            "check": "pass" if same == len(regions) else "FAIL"}
                ref = state.get("fp32")
                match = compare(ref, got, tok, "device fp32")[1] + " (information)" if ref else "all described"
                return {"ips": ips, "peak": peak, "match": match, "check": "pass"}

            self.row("describe dam-nano", label, len(regions), run)

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        from groundscope.data import generate_world

        batch = 1 if self.quick else 4
        steps = 3 if self.quick else 8
        world = self.tmp / "world"
        generate_world(world, batch, seed=0, split="train")  # one batch: the same images every step
        state: dict = {}

        def trainer(device, out: str, bf16: bool = False):
            import groundscope as gs
            from groundscope.train.config import config_from_dict
            from groundscope.train.loop import Trainer

            cfg = config_from_dict({
                "model": {"path": str(gs.load_detector("nano").path), "device": str(device),
                          "freeze": ["model.text_backbone"]},  # frozen: in eval mode, no dropout
                "data": {"train": {"path": str(world / "odvg_det.jsonl"), "label_map": str(world / "label_map.json")},
                         "scales": [256], "max_size": 416, "flip_prob": 0.0, "num_negatives": 0,
                         "full_negative_prob": 0.0, "shuffle": False},
                "optim": {"lr": 5e-4},
                "schedule": {"kind": "constant"},
                "train": {"max_steps": steps, "batch_size": batch, "bf16": bf16, "out_dir": str(self.tmp / out),
                          "progress": False, "checkpoint_every": 0, "keep_checkpoints": 0},
            })
            return Trainer(cfg)

        for label in ("fp32", "bf16"):
            if label not in self.args.precisions:
                continue

            def run(label=label):
                if label == "fp32":
                    state["cpu"] = trainer("cpu", "train_cpu").train_step()["loss"]
                    self.free()
                tr = trainer(self.device, f"train_{label}", bf16=label == "bf16")
                self.sync()
                if self.cuda:
                    self.torch.cuda.reset_peak_memory_stats(self.device)
                records = []
                for _ in range(steps):
                    if self.left() <= 0:
                        break
                    t = time.perf_counter()
                    records.append(tr.train_step())
                    self.sync()
                    records[-1]["wall"] = time.perf_counter() - t
                peak = self.torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None
                losses = [r["loss"] for r in records]
                timed = records[1:] or records  # the first step pays for kernel selection
                ips = sum(r["images"] for r in timed) / sum(r["wall"] for r in timed)
                ok = all(math.isfinite(v) for v in losses)
                falls = len(losses) > 1 and losses[-1] < losses[0]
                if label == "fp32":
                    state["fp32"], ref, tol, against = losses[0], state["cpu"], TRAIN_FP32_REL, "CPU"
                else:
                    ref, tol, against = state.get("fp32"), TRAIN_BF16_REL, "device fp32"
                parts = [f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps"
                         + (" (falls)" if falls else " (does not fall)")]
                if ref is not None:
                    rel = abs(losses[0] - ref) / max(abs(ref), 1e-12)
                    parts.append(f"step 1 {against} {ref:.4f} (rel {rel:.1e}, tol {tol:g})")
                    ok &= rel <= tol
                return {"ips": ips, "peak": peak, "match": "; ".join(parts), "check": "pass" if ok and falls else "FAIL"}

            self.row("train nano", label, batch, run)

    # ------------------------------------------------------------------ onnx
    def onnx(self) -> None:
        import numpy as np

        import groundscope as gs

        def run():
            import onnxruntime as ort

            from groundscope.export.onnx import OUTPUT_NAMES, DetectorGraph, example_inputs, export_onnx

            cpu = gs.load_detector("nano", device="cpu", fast=False)
            path = export_onnx(cpu, self.tmp / "nano.onnx")
            h, w = cpu.image_size[0], cpu.image_size[1]
            feeds = example_inputs(cpu, (h, w), "pink cross. cyan star. blue diamond.", batch=1)
            del cpu
            cuda_ep = self.cuda and "CUDAExecutionProvider" in ort.get_available_providers()
            providers = (["CUDAExecutionProvider"] if cuda_ep else []) + ["CPUExecutionProvider"]
            session = ort.InferenceSession(str(path), providers=providers)
            np_feeds = {k: v.numpy() for k, v in feeds.items()}
            ips, _, (logits, boxes) = self.timed(lambda: session.run(list(OUTPUT_NAMES), np_feeds), 1)
            det = gs.load_detector("nano", device=self.device)
            graph = DetectorGraph(det.model).eval()
            with self.torch.inference_mode():
                ref_logits, ref_boxes = graph(*(v.to(self.device) for v in feeds.values()))
            n = feeds["input_ids"].shape[1]
            dl = float(np.abs(logits[..., :n] - ref_logits[..., :n].float().cpu().numpy()).max())
            db = float(np.abs(boxes - ref_boxes.float().cpu().numpy()).max())
            runner = "onnxruntime CUDA" if cuda_ep else "onnxruntime CPU"
            match = (f"{runner} vs torch {self.device.type}: max dlogit {dl:.1e}, dbox {db:.1e} (tol {ONNX_TOL:g}); "
                     f"{h}x{w}, images/s is {runner}'s")
            return {"ips": ips, "peak": None, "match": match,
                    "check": "pass" if max(dl, db) <= ONNX_TOL else "FAIL"}

        self.row("onnx nano", "fp32", 1, run)


def build_gdino_t(out: Path) -> tuple[Path, list[str]]:
    """Grounding-DINO-T size with random weights saved to `out` (as benchmarks/bench_detect.py builds it, with the
    bundled nano's tokenizer: no download), and the COCO names whose prompt fits T_PROMPT_TOKENS tokens."""
    import torch
    from transformers import AutoTokenizer, BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    import groundscope as gs
    from coco_names import COCO_80
    from groundscope.prompts import chunk_classes

    tokenizer = AutoTokenizer.from_pretrained(str(gs.load_detector("nano").path))
    classes = []
    for name in COCO_80:
        chunks = chunk_classes(tokenizer, classes + [name], 256)
        if len(chunks) > 1 or chunks[0].num_tokens > T_PROMPT_TOKENS:
            break
        classes.append(name)
    swin = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, out_indices=[2, 3, 4])
    cfg = GroundingDinoConfig(backbone_config=swin, text_config=BertConfig(), num_queries=900, d_model=256,
                              encoder_layers=6, decoder_layers=6, max_text_len=256)
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(cfg)
    with torch.no_grad():  # spread the random logits like a trained model's (see bench_detect.build_gdino_t)
        model.model.decoder.layer_norm.weight.mul_(0.15)
        model.model.enc_output_norm.weight.mul_(0.15)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, classes


def machine_line(torch, device) -> str:
    import transformers

    parts = []
    if device.type == "cuda":
        cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
        parts.append(f"{torch.cuda.get_device_name(device)} (compute {cap}, CUDA {torch.version.cuda})")
    else:
        parts.append(f"CPU only ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    parts.append(f"torch {torch.__version__}, transformers {transformers.__version__}")
    try:
        import onnxruntime

        parts.append(f"onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})")
    except ImportError:
        parts.append("no onnxruntime")
    return "; ".join(parts)


def write_results(path: Path, rows: list[Row], machine: str, command: str, seconds: float, notes: list[str]) -> None:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    failed = sum(r.check == "FAIL" for r in rows)
    skipped = sum(r.check == "skip" for r in rows)
    text = [
        "# GPU check",
        "",
        f"Date: {date} (UTC). Machine: {machine}.",
        "",
        f"Command: `{command}` ({seconds:.0f} s; {len(rows)} rows, {failed} failed, {skipped} skipped).",
        "",
        "What each column and tolerance means: the docstring of `benchmarks/gpu_check.py`. images/s counts regions",
        "for describe and training images for train; peak GPU MiB is `torch.cuda.max_memory_allocated` over the row",
        "(weights included).",
        "",
        markdown_table(rows),
        "",
    ]
    text += [f"- {n}" for n in notes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text).rstrip() + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="the device to check against the CPU (default cuda; cpu "
                    "exercises the whole script on a machine without a GPU)")
    ap.add_argument("--quick", action="store_true", help="small sizes: nano only, batches 1 and 2, one timed call")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    ap.add_argument("--batches", nargs="+", type=int, default=None, help="detect batch sizes (default 1 8; "
                    "--quick: 1 2)")
    ap.add_argument("--iters", type=int, default=5, help="timed calls per row at most (default 5)")
    ap.add_argument("--row-budget", type=float, default=3.0, help="seconds of timed calls per row (default 3)")
    ap.add_argument("--timeout", type=float, default=270.0, help="seconds for the whole run; later rows are "
                    "skipped (default 270)")
    ap.add_argument("--tf32", action="store_true", help="leave PyTorch's TF32 defaults (cuDNN convolutions in "
                    "TF32); by default fp32 is IEEE fp32 on the device")
    ap.add_argument("--out", type=Path, default=None, help="markdown results file (default: "
                    "benchmarks/results/gpu.md for a CUDA run; a CPU run writes one only when given --out)")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    for p in (str(REPO), str(HERE)):  # groundscope from this checkout; benchmarks/coco_names
        if p not in sys.path:
            sys.path.insert(0, p)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", flush=True)
        return 0
    if device.type == "cuda" and not args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    out = args.out if args.out is not None else (DEFAULT_OUT if device.type == "cuda" else None)
    script = SCRIPT_NAME if Path.cwd().resolve() == REPO else str(Path(__file__).resolve())
    command = shlex.join([Path(sys.executable).name, script] + argv)

    check = Check(args)
    machine = machine_line(torch, device)
    print(f"gpu_check on {device}: {machine}", flush=True)
    print(f"timeout {args.timeout:.0f} s; rows print as they finish:", flush=True)
    print(" | ".join(COLUMNS), flush=True)

    def on_alarm(signum, frame):
        raise RowTimeout()

    previous = None
    try:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        # Rows past the deadline are skipped without running; the alarm stops a row that runs past it.
        signal.setitimer(signal.ITIMER_REAL, max(check.left() + ALARM_GRACE, 0.001))
    except (ValueError, AttributeError):  # not the main thread, or no SIGALRM: the per-row checks remain
        previous = None
    try:
        if device.type == "cuda":
            def init():
                t = time.perf_counter()
                torch.zeros(1, device=device).sum().item()
                return {"match": f"first CUDA call {time.perf_counter() - t:.1f} s", "check": "info"}

            check.row("cuda init", "-", "-", init)
        sections = {
            "detect": [check.detect_nano] + ([] if args.quick else [check.detect_t]),
            "describe": [check.describe],
            "train": [check.train],
            "onnx": [check.onnx],
        }
        for name in SECTIONS:
            if name not in args.only:
                continue
            for fn in sections[name]:
                try:
                    fn()
                except RowTimeout:
                    check.rows.append(Row(f"{name} (the rest)", "-", "-", match="stopped: --timeout reached",
                                          check="skip"))
                except Exception as e:  # a section's setup failed (an import, the synthetic world)
                    traceback.print_exc()
                    check.rows.append(Row(name, "-", "-", match=f"{type(e).__name__}: {e}"[:160], check="FAIL"))
    finally:
        if previous is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    seconds = time.perf_counter() - check.start
    rows = check.rows
    failed = [r for r in rows if r.check == "FAIL"]
    skipped = [r for r in rows if r.check == "skip"]
    notes = []
    if device.type == "cuda" and not args.tf32:
        notes.append("fp32 on the device is IEEE fp32 (TF32 off for matmuls and cuDNN).")
    if skipped:
        notes.append(f"{len(skipped)} row(s) skipped: the --timeout of {args.timeout:.0f} s was reached.")
    print()
    print(markdown_table(rows))
    print(f"\n{len(rows)} rows in {seconds:.0f} s: {len(failed)} failed, {len(skipped)} skipped", flush=True)
    if out is not None:
        write_results(out, rows, machine, command, seconds, notes)
        print(f"results written to {out}", flush=True)
    else:
        print("a CPU run writes no results file (pass --out FILE for one)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
