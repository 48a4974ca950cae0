"""Atomic file writes: a file is either the previous complete one or the new complete one, never torn.

`atomic_open` writes into a temporary file beside the target (``.NAME.tmp-PID``, the same folder so the rename
stays on one file system), flushes it to disk, renames it over the target (`os.replace` is atomic on POSIX and
Windows) and flushes the folder entry. A crash, Ctrl-C or kill -9 mid-write leaves the previous file and at most
the temporary one, which a rerun may delete (`remove_torn_writes`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temporary_name(path: Path) -> Path:
    """The temporary file `atomic_open` writes before renaming it to `path`."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode, **kwargs)`` whose contents replace `path` only when the block ends without an error.

    Yields:
        the open temporary file; on an error it is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries: a rename is durable only once its directory is (POSIX; a no-op on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_torn_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files `atomic_open` of an earlier, killed process left in `folder` (the target beside
    each is the previous complete file). -> the files removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    own = f".tmp-{os.getpid()}"
    torn = [p for p in folder.glob(".*.tmp-*") if p.is_file() and not p.name.endswith(own)]
    for p in torn:
        p.unlink(missing_ok=True)
    return torn
