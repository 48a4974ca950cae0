"""`load_detector`: registry name, hub id or local directory -> a ready `GroundingDetector`.

All three go through the same transformers `from_pretrained` path; only where the files come from differs.
We never wait on an unreachable hub: HF_HUB_OFFLINE is honoured, the local cache is tried first, and a
three-second connection probe precedes any download, so a missing model fails in seconds with the fix.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from groundscope.models.registry import REGISTRY

SUPPORTED_MODEL_TYPES = ("grounding-dino", "mm-grounding-dino")
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"  # models that ship inside the package


class ModelLoadError(RuntimeError):
    """A model cannot be had; the message names it and says what to do."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve(name_or_path: str | os.PathLike, kind: str = "detector") -> tuple[str, str]:
    """-> (where to load from, display name). A local directory wins over a registry name of the same text.

    `kind` is the registry kind the caller loads ("detector" or "describer"); a registry name of another kind is
    refused with the loader that takes it.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model '{text}' is a file; pass the directory that holds config.json and the weights")
        return str(path), text
    entry = REGISTRY.get(text)
    if entry is not None and entry.kind != kind:
        how = {"detector": "load_detector / groundscope detect, ground, refer",
               "describer": "groundscope.describe.load_describer / groundscope describe"}.get(entry.kind, entry.kind)
        raise ModelLoadError(f"model '{text}' is a {entry.kind} ({entry.family}), not a {kind}; load it with {how}")
    if entry is not None and entry.bundled:
        bundled = BUNDLED_DIR / entry.source
        if not (bundled / "config.json").exists():
            fix = entry.build_hint or "reinstall groundscope"
            raise ModelLoadError(f"bundled model '{text}' is missing from this installation ({bundled}); {fix}")
        return str(bundled), text
    if entry is not None:
        return entry.source, text
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return text, text  # a hub id
    known = ", ".join(sorted(n for n, e in REGISTRY.items() if e.kind == kind))
    raise ModelLoadError(
        f"model '{text}' is not a local directory, a known name ({known}) or a hub id (org/name); "
        "pass one of those with --model"
    )


def _offline_hint(kind: str = "detector") -> str:
    """Point at the models that ship inside the package, which need no network (if this install has them)."""
    names = [e.name for e in REGISTRY.values()
             if e.kind == kind and e.bundled and (BUNDLED_DIR / e.source / "config.json").exists()]
    if not names:
        return ""
    return f" ({', '.join(names)} ship with groundscope and run offline, on the synthetic world's shapes only)"


def _fetch(source: str, display: str, revision: str | None, kind: str = "detector") -> str:
    """Local directory for `source`: itself if it is one, else the hub snapshot (cache first)."""
    if Path(source).is_dir():
        return source
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        return snapshot_download(source, revision=revision, allow_patterns=patterns, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    if _offline():
        raise ModelLoadError(
            f"model '{display}' ({source}) is not in the local cache and HF_HUB_OFFLINE is set; "
            f"unset HF_HUB_OFFLINE to download it, or pass a local directory with --model{_offline_hint(kind)}"
        )
    if not _hub_reachable():
        raise ModelLoadError(
            f"model '{display}' ({source}) is not in the local cache and the hub cannot be reached; "
            f"connect to the internet, or pass a local directory with --model{_offline_hint(kind)}"
        )
    try:
        return snapshot_download(source, revision=revision, allow_patterns=patterns)
    except Exception as e:  # the hub's errors are many; the user needs the name and the reason
        raise ModelLoadError(f"model '{display}' ({source}) could not be downloaded: {type(e).__name__}: {e}") from e


def load_detector(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    precision: str = "fp32",
    fast: bool = True,
):
    """Load a Grounding DINO / MM-Grounding-DINO / LLMDet detector.

    Args:
        name_or_path: a registry name (`groundscope models`), a hub id, or a local directory in transformers
            format (config.json of type grounding-dino or mm-grounding-dino, weights, tokenizer files).
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
    source, display = resolve(name_or_path)
    local = _fetch(source, display, revision)
    try:
        config = AutoConfig.from_pretrained(local)
    except Exception as e:
        raise ModelLoadError(
            f"model '{display}': cannot read its config.json in {local} ({type(e).__name__}: {e}); "
            "pass a directory saved with save_pretrained"
        ) from e
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"model '{display}' is a '{config.model_type}' model; groundscope loads {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
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
