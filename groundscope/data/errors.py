"""`DataFormatError`: a malformed annotation file or record, located precisely enough to fix by hand."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """A record that does not follow its format.

    Attributes:
        path: the file the record came from (``None`` for in-memory data).
        line: 1-based line number for JSON-lines files, else ``None``.
        index: 0-based record index inside a JSON file's list (``section[index]``), else ``None``.
        section: the JSON list the record sits in (``"images"``, ``"annotations"`` ...), else ``None``.
        reason: what is wrong, without the location.

    ``str(err)`` reads ``"ann.jsonl:12: bbox must be 4 finite numbers, got [1, 2]"`` or
    ``"coco.json: annotations[3]: unknown image_id 99"``.
    """

    def __init__(
        self,
        reason: str,
        path: str | Path | None = None,
        *,
        line: int | None = None,
        index: int | None = None,
        section: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.index = index
        self.section = section
        self.reason = reason
        super().__init__(self._format())

    @property
    def location(self) -> str:
        """``file:line``, ``file: section[index]`` or just the file."""
        where = self.path or "<memory>"
        if self.line is not None:
            return f"{where}:{self.line}"
        if self.index is not None:
            return f"{where}: {self.section or 'record'}[{self.index}]"
        return where

    def _format(self) -> str:
        return f"{self.location}: {self.reason}"

    def located(
        self, path: str | Path, *, line: int | None = None, index: int | None = None, section: str | None = None
    ) -> DataFormatError:
        """The same error placed at a file position (validators raise it unplaced; readers place it)."""
        return DataFormatError(
            self.reason,
            path,
            line=line if line is not None else self.line,
            index=index if index is not None else self.index,
            section=section if section is not None else self.section,
        )
