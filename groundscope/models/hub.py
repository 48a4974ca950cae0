"""Where a model's files come from: a local folder, a bundled model, the hub cache, or the hub.

We never wait on an unreachable hub: HF_HUB_OFFLINE is honoured, the local cache is tried first, and a
three-second connection probe precedes any download, so a missing model fails in seconds with the fix. Every
loader (detectors, describers, RKD teachers) resolves names and fetches files through this module.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from groundscope.models.registry import REGISTRY

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

    `kind` is the registry kind the caller loads ("detector", "describer" or "segmenter"); a registry name of another kind is
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
               "describer": "groundscope.describe.load_describer / groundscope describe",
               "segmenter": "groundscope.load_segmenter / --segmenter"}.get(entry.kind, entry.kind)
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


# Pickle-based weight formats: unpickling runs code the file chooses, so groundscope reads weights only from
# safetensors (hub downloads are limited to the safe patterns in `fetch`; training checkpoints are read with
# torch.load(weights_only=True), groundscope/train/checkpoint.py).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def refuse_pickles(folder: str | os.PathLike, display: str) -> None:
    """Raise ModelLoadError if the model folder (or a folder inside it) holds a pickle-format file."""
    root = Path(folder)
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if found:
        names = ", ".join(str(p.relative_to(root)) for p in found[:3]) + (" ..." if len(found) > 3 else "")
        raise ModelLoadError(
            f"model '{display}' holds {names}: pickle files can run code when loaded, and groundscope loads weights "
            "only from safetensors; re-save the model with save_pretrained (it writes model.safetensors) and "
            "remove the pickle files from the folder"
        )


def fetch(source: str, display: str, revision: str | None, kind: str = "detector") -> str:
    """Local directory for `source`: itself if it is one (refused if it holds pickle files), else the hub
    snapshot (cache first; safetensors, JSON and text files only)."""
    if Path(source).is_dir():
        refuse_pickles(source, display)
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
