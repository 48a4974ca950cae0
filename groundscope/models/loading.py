"""`load_detector`: registry name, hub id or local directory -> a ready `GroundingDetector`.

All three go through the same transformers `from_pretrained` path; only where the files come from differs
(`groundscope.models.hub`: registry, bundled folders, the hub cache, offline rules). A model folder may carry
optional heads beside the detector (an RKD head in ``rkd_head/``), attached here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from groundscope.models.hub import ModelLoadError, fetch, resolve
from groundscope.models.registry import REGISTRY

SUPPORTED_MODEL_TYPES = ("grounding-dino", "mm-grounding-dino")
SAM3_MODEL_TYPES = ("sam3", "sam3_video")  # SAM 3's text-prompted detector (groundscope.models.sam3_detector)


def load_detector(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    precision: str = "fp32",
    fast: bool = True,
):
    """Load a Grounding DINO / MM-Grounding-DINO / LLMDet detector, or SAM 3 as a detector.

    Args:
        name_or_path: a registry name (`groundscope models`), a hub id, or a local directory in transformers
            format (config.json of type grounding-dino or mm-grounding-dino, weights, tokenizer files). "sam3"
            (the registry's SAM 3 segmenter entry, facebook/sam3) or a folder of type sam3 / sam3_video loads
            SAM 3's text-prompted detector (`groundscope.models.sam3_detector.Sam3Detector`: precision fp32 or
            bf16; `fast` does not apply to it).
        device: torch device for inference.
        dtype: torch dtype (or its name, e.g. "bfloat16"); default float32.
        revision: hub revision (branch, tag or commit) for hub ids.
        precision: "fp32" (the reference's numbers) or "bf16" (the fast CPU path: bf16 weights and activations
            for backbone, text tower, encoder and decoder; box and score heads in fp32;
            groundscope.models.fast.precision). Leave `dtype` unset with it.
        fast: run the inference fast path (groundscope.models.fast.patch: a C++ deformable-attention kernel
            compiled on first use, or the sparse-dense product where it cannot be built; SDPA fusion attention;
            same outputs as transformers' modules to float rounding). Training and export run
            transformers' modules either way. On the CPU it also tunes glibc's malloc to reuse freed memory
            (`groundscope.models.fast.allocator`; GROUNDSCOPE_MALLOC=system opts out).
    Raises:
        ModelLoadError: unknown name, not cached while offline, unreachable hub, broken directory.
    """
    from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoTokenizer

    from groundscope.models.detector import GroundingDetector
    from groundscope.models.fast.precision import check_precision

    check_precision(precision)
    if precision != "fp32" and dtype is not None:
        raise ValueError(f"pass either dtype ({dtype}) or precision='{precision}', not both")
    entry = REGISTRY.get(str(name_or_path))
    if entry is not None and entry.family == "SAM 3" and not Path(str(name_or_path)).expanduser().exists():
        # One registry entry, two loaders: its tracker is the segmenter, its image model the text detector.
        source, display = resolve(name_or_path, kind=entry.kind)
    else:
        source, display = resolve(name_or_path)
    local = fetch(source, display, revision)
    try:
        config = AutoConfig.from_pretrained(local)
    except Exception as e:
        raise ModelLoadError(
            f"model '{display}': cannot read its config.json in {local} ({type(e).__name__}: {e}); "
            "pass a directory saved with save_pretrained"
        ) from e
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if config.model_type in SAM3_MODEL_TYPES:
        from groundscope.models.sam3_detector import load_sam3_detector

        return load_sam3_detector(local, display, config, device=device, dtype=dtype, precision=precision)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"model '{display}' is a '{config.model_type}' model; groundscope detects with "
            f"{', '.join(SUPPORTED_MODEL_TYPES + SAM3_MODEL_TYPES)} models"
        )
    try:
        model = AutoModelForZeroShotObjectDetection.from_pretrained(local, dtype=dtype or torch.float32)
    except Exception as e:
        raise ModelLoadError(f"model '{display}': weights in {local} do not load ({type(e).__name__}: {e})") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(local)
    except Exception as e:
        raise ModelLoadError(
            f"model '{display}': no usable tokenizer in {local} ({type(e).__name__}: {e}); "
            "save the tokenizer next to the weights (tokenizer.save_pretrained(dir))"
        ) from e
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"model '{display}': its tokenizer has no character offsets (needs a fast tokenizer)")
    model.to(device).eval()
    if fast:
        from groundscope.models.fast.patch import apply_fast_path

        if str(device).startswith("cpu"):
            from groundscope.models.fast.allocator import keep_freed_memory

            keep_freed_memory()  # large tensors reuse freed memory instead of page-faulting fresh mmaps

        # The compiled deformable sampler for both precisions (the sparse product where it cannot be built): in
        # fp32 it computes what grid_sample does to float rounding, and the nano model's forward pass takes
        # 59 ms with it against 80 ms with the sparse product (benchmarks/bench_omp_threads.py --streams, with
        # GROUNDSCOPE_MSDA_KERNEL=sparse|cpp).
        apply_fast_path(model, kernel="cpp")
    if precision == "bf16":
        from groundscope.models.fast.precision import to_bf16

        to_bf16(model)
    detector = GroundingDetector(model, tokenizer, name=display, image_size=read_image_size(Path(local)), path=local)
    rkd_dir = Path(local) / "rkd_head"
    if rkd_dir.is_dir():  # trained with RKD: its head and teacher come with it
        from groundscope.models.rkd_head import RkdScorer

        try:
            detector.rkd = RkdScorer.load(rkd_dir, device)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"model '{display}': its RKD head in {rkd_dir} does not load ({e}); remove the "
                                 "folder to use the detector alone") from e
    return detector


def read_image_size(model_dir: Path) -> tuple[int, int]:
    """(shortest, longest) resize edges from the model's preprocessor_config.json; (800, 1333) without one."""
    import json

    from groundscope.images import LONGEST_EDGE, SHORTEST_EDGE

    for name in ("preprocessor_config.json", "processor_config.json"):
        f = model_dir / name
        if f.exists():
            try:
                cfg = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ModelLoadError(f"{f} is not valid JSON ({e}); fix or delete it") from e
            size = cfg.get("size") or cfg.get("image_processor", {}).get("size") or {}
            if "shortest_edge" in size:
                return int(size["shortest_edge"]), int(size.get("longest_edge", size["shortest_edge"]))
    return SHORTEST_EDGE, LONGEST_EDGE
