"""JSON / JSON-lines reading and writing shared by the format modules.

Readers attach file and line to every error; writers produce byte-stable output (fixed key order, compact
separators, ``\\n`` line ends, UTF-8) so the same data always gives the same file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from groundscope.data.atomic import atomic_open
from groundscope.data.errors import DataFormatError

T = TypeVar("T")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed_object)`` for each non-blank line (1-based line numbers).

    A line that is not valid JSON yields ``(line_number, DataFormatError)`` instead of raising, so callers
    can choose between failing and skipping with the same loop.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("file not found", path)
    with path.open("r", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                yield number, DataFormatError(f"invalid JSON: {e.msg} (column {e.colno})", path, line=number)


def load_json(path: str | Path) -> Any:
    """Parse a whole JSON file; a syntax error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("file not found", path)
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"invalid JSON: {e.msg} (column {e.colno})", path, line=e.lineno) from None


def parse_records(
    items: Iterable[tuple[Any, Any]],
    parse: Callable[[Any], T],
    locate: Callable[[DataFormatError, Any], DataFormatError],
    skip_invalid: bool,
) -> tuple[list[T], int]:
    """Run ``parse`` on each ``(position, raw)`` item; return the parsed records and how many were skipped.

    ``locate(err, position)`` turns a validator's error into one naming file and line/index. With
    ``skip_invalid`` malformed records are counted and dropped instead of raised.
    """
    out: list[T] = []
    skipped = 0
    errors: list[DataFormatError] = []
    for position, raw in items:
        try:
            if isinstance(raw, DataFormatError):
                raise raw
            out.append(parse(raw))
        except DataFormatError as e:
            if not skip_invalid:
                # Read on to the end, so the error lists every malformed record (the first MAX_LISTED), not
                # only the first one: a file with many is fixed in one pass.
                errors.append(e if e.path else locate(e, position))
            skipped += 1
    if errors:
        raise _all_of(errors) from None
    return out, skipped


MAX_LISTED = 10  # malformed records listed in one error; the rest are counted


def _all_of(errors: list[DataFormatError]) -> DataFormatError:
    """The first error, with each further malformed record on a line of its own."""
    first = errors[0]
    if len(errors) == 1:
        return first
    more = [f"{e.location}: {e.reason}" for e in errors[1:MAX_LISTED]]
    if len(errors) > MAX_LISTED:
        more.append(f"... and {len(errors) - MAX_LISTED} more")
    reason = f"{first.reason}\n{len(errors) - 1} more malformed record(s):\n" + "\n".join(more)
    return DataFormatError(reason, first.path, line=first.line, index=first.index, section=first.section)


def dumps(obj: Any) -> str:
    """Compact, deterministic JSON text (insertion key order, no NaN, non-ASCII kept)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as one line of JSON, atomically (see `write_jsonl`)."""
    return write_jsonl(path, [obj])


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """Write one JSON line per row, atomically: into a temporary file beside `path`, fsync'ed, then renamed over
    it, so a crash (or kill -9) mid-write leaves the previous file or none, never a torn one that a rerun would
    take for finished output."""
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(dumps(row) + "\n")
    return path
