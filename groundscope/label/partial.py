"""``FILE.partial.jsonl``: the append-only log that makes a long labelling run resumable.

Line 1 is a header with the settings that decide the labels; every further line is one finished chunk record
(`groundscope.label.work`), appended and fsync'ed as soon as the chunk is done, in completion order. A rerun
reads the log back, keeps the chunks whose image list is unchanged and runs only the rest. A crash mid-write
leaves at most a torn last line, which is cut off on reading; anything else malformed is reported with its
line, never silently dropped (it may hold hours of work).

`PartialLog` is the log of ``groundscope label``; other resumable builders subclass it with their own header
name, chunk keys and settings (``groundscope groundingcap``: `groundscope.label.groundingcap`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from groundscope.data.jsonio import dumps
from groundscope.label.work import LabelError, LabelSettings

PARTIAL_SUFFIX = ".partial.jsonl"
LOG_VERSION = 1
_CHUNK_KEYS = ("images", "results", "failures")


def partial_path(out: str | Path) -> Path:
    """The sidecar log of output file ``out``: ``labels.json`` -> ``labels.json.partial.jsonl``."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


# Settings added after the first log version, with the value older logs ran with.
DEFAULTS_ADDED_LATER = {"precision": "fp32", "masks": False, "segmenter": None, "polygons": False, "slicing": None}


class PartialLog:
    """The sidecar log of one output file.

    Attributes:
        path: the ``.partial.jsonl`` file.
        done: finished chunk records keyed by their tuple of absolute image paths (``chunk_key``).

    Class attributes a subclass sets: ``header_key`` (the header's marker), ``chunk_keys`` (lists every chunk
    line holds), ``chunk_key`` (the one of them that identifies the chunk), ``defaults_added_later``, and
    ``command`` (named in messages).
    """

    header_key = "groundscope_label"
    chunk_keys = _CHUNK_KEYS
    chunk_key = "images"
    defaults_added_later = DEFAULTS_ADDED_LATER
    command = "label"

    def __init__(self, path: str | Path, settings: LabelSettings):
        self.path = Path(path)
        self.settings = settings
        self.done: dict[tuple[str, ...], dict[str, Any]] = {}
        self._file = None
        self._has_header = False
        self._read()

    # ------------------------------------------------------------------ reading
    def _read(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1  # bytes after the last newline are a torn write
        if complete < len(data):
            with self.path.open("r+b") as f:
                f.truncate(complete)
        for number, raw in enumerate(data[:complete].splitlines(), start=1):
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise self._damaged(number, f"invalid JSON ({e.msg})") from None
            if number == 1:
                self._check_header(obj)
                self._has_header = True
            elif isinstance(obj, dict) and all(isinstance(obj.get(k), list) for k in self.chunk_keys):
                self.done[tuple(obj[self.chunk_key])] = obj
            else:
                raise self._damaged(number, f"not a chunk record (needs lists {', '.join(self.chunk_keys)})")

    def _damaged(self, line: int, reason: str) -> LabelError:
        return LabelError(f"{self.path}:{line}: {reason}; the resume log is damaged, delete it to start over")

    def _check_header(self, obj: Any) -> None:
        if not (isinstance(obj, dict) and obj.get(self.header_key) == LOG_VERSION
                and isinstance(obj.get("settings"), dict)):
            raise self._damaged(1, f"not a groundscope {self.command} resume log header")
        before, now = obj["settings"], self.settings.to_dict()
        # A log from before a setting existed holds no value for it: it ran with that setting's default.
        before = {**self.defaults_added_later, **before}
        if before != now:
            diff = ", ".join(f"{k}: {before.get(k)!r} there, {now[k]!r} now" for k in now if before.get(k) != now[k])
            raise LabelError(
                f"{self.path} holds results of a run with other settings ({diff}); rerun with the same options "
                "to resume it, or delete it to start over"
            )

    # ------------------------------------------------------------------ writing
    def append(self, record: dict[str, Any]) -> None:
        """Add one finished chunk and make it durable before returning (a crash after this loses nothing)."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8", newline="\n")
            if not self._has_header:
                self._file.truncate(0)  # a file with no complete header line holds nothing worth keeping
                self._file.write(dumps({self.header_key: LOG_VERSION, "settings": self.settings.to_dict()}) + "\n")
                self._has_header = True
        self._file.write(dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done[tuple(record[self.chunk_key])] = record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        """Delete the log (the final file holds everything now)."""
        self.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "PartialLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
