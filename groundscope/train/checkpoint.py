"""Training checkpoints: atomic writes, random-number-generator state, and the exported model.

A checkpoint is one ``torch.save`` file that ``torch.load(weights_only=True)`` reads back (tensors, numbers,
strings, lists and dicts only), holding everything an exact resume needs:

    {"format": "groundscope-train", "version": 1, "step", "epoch", "batch" (next batch of that epoch),
     "model": state dict, "optimizer": state dict, "scheduler": state dict,
     "rng": {"python", "numpy", "torch", "cuda"}, "config": the training config as a dict, "extra": {...},
     "world_size": training processes (1 when absent), "rng_ranks": every process's "rng", in rank order
     (multi-process runs only; `groundscope.train.distributed`)}

It is written to a temporary file in the same folder, flushed to disk, and renamed over the target
(`os.replace` is atomic on POSIX and Windows), so a crash or Ctrl-C mid-write leaves the previous checkpoint
intact and never a truncated one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundscope.data.atomic import atomic_open, fsync_dir, temporary_name

FORMAT = "groundscope-train"
VERSION = 1


def rng_state() -> dict:
    """The state of every generator training draws from (python, numpy's global, torch CPU and CUDA)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": _to_lists(random.getstate()),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` to a temporary file beside `path`, fsync, then rename over `path` (`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def atomic_write_text(text: str, path: str | Path) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def atomic_link(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src` (a hard link, else a copy), replacing `dst` atomically."""
    tmp = temporary_name(dst)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `atomic_save` (weights_only: no code runs while loading)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a groundscope training checkpoint")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"'{path}' is checkpoint version {ckpt.get('version')}; this groundscope reads {VERSION}")
    return ckpt


def cast_state_dict(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's state dict with floating tensors in `dtype`, detached. Tensors that share storage (tied
    weights, e.g. the decoder's and the head's box MLPs) still share it after the cast, so `save_pretrained`
    writes them once instead of once per name."""
    cast: dict[tuple, torch.Tensor] = {}
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        if not t.is_floating_point() or t.dtype == dtype:
            out[name] = t
            continue
        key = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if key not in cast:
            cast[key] = t.to(dtype)
        out[name] = cast[key]
    return out


def export_model(detector, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Save the detector as a transformers model folder that `load_detector` reads: config + safetensors weights
    (in `dtype`) + tokenizer + preprocessor_config.json with the detector's resize edges."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = detector.model
    model.save_pretrained(out_dir, state_dict=cast_state_dict(model, dtype))
    detector.tokenizer.save_pretrained(out_dir)
    shortest, longest = detector.image_size
    preprocessor = {
        "image_processor_type": "GroundingDinoImageProcessor",
        "size": {"shortest_edge": int(shortest), "longest_edge": int(longest)},
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    atomic_write_text(json.dumps(preprocessor, indent=2) + "\n", out_dir / "preprocessor_config.json")
    return out_dir
