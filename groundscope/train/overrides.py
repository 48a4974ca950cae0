"""Command-line edits of a parsed config (``--set KEY=VALUE``): `apply_overrides` sets dotted keys
(``train.max_steps=500``, ``data.train.0.path=x.jsonl``) in the raw mapping before it is validated."""

from __future__ import annotations

import re
from typing import Any

import yaml

from groundscope.train.config_fields import ConfigError

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def apply_overrides(raw: Any, overrides: list[str] | tuple[str, ...]) -> dict:
    """Set dotted keys in a parsed config: ``["train.max_steps=500", "data.train.0.path=x.jsonl"]``.

    Values are parsed as YAML (``1e-4``, ``true``, ``[288, 320]``, ``null``); a number segment indexes a list.
    Missing mappings on the way are created, so a section the file leaves out can be set; an unknown key is
    left for validation to reject with the list of valid keys, as in the file itself. Returns a new mapping.
    """
    import copy

    out = copy.deepcopy(raw) if raw is not None else {}
    if not isinstance(out, dict):
        raise ConfigError(f"the config must be a mapping of sections, got {out!r}")
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.max_steps=500")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {e}") from e
        if isinstance(value, str) and _FLOAT.match(value):
            value = float(value)  # YAML 1.1 reads "2e-4" (no dot) as a string; on a command line it is a number
        parts = key.split(".")
        node: Any = out
        parent: Any = None
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, dict) and part.isdigit() and part not in node and parent is not None:
                # a single mapping where a list is allowed (data.train: {path: ...}) is a list of one
                node = [node]
                parent[parts[depth - 1] if isinstance(parent, dict) else int(parts[depth - 1])] = node
            parent = node
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {item!r}: '{where}' indexes a list of {len(node)} entries; "
                                      f"use 0..{len(node) - 1}")
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: '{'.'.join(parts[:depth])}' is {node!r}, not a mapping")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return out
