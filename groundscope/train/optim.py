"""What the optimizer sees: freezing by parameter-name prefix, AdamW parameter groups (learning-rate factors by
longest prefix, no weight decay on norms, biases, embeddings and other 1-D parameters) and the learning-rate
schedule (linear warm-up, then cosine, step decay at milestones, or constant).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from groundscope.train.config import ConfigError

NO_DECAY_NAMES = ("level_embed", "position_embeddings", "pos_embed", "relative_position_bias_table", "reference_points")
NORM_TYPES = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm, torch.nn.Embedding)


def apply_freeze(model: torch.nn.Module, prefixes: list[str]) -> list[str]:
    """Set requires_grad=False on parameters whose name starts with a prefix; returns the frozen names.

    Raises ConfigError for a prefix that matches nothing (a typo would otherwise silently train everything).
    """
    names = [n for n, _ in model.named_parameters()]
    frozen = []
    for prefix in prefixes:
        hits = [n for n in names if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
        if not hits:
            tops = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ConfigError(f"model.freeze: '{prefix}' matches no parameter; prefixes in this model: {', '.join(tops)}")
        frozen += hits
    frozen_set = set(frozen)
    for n, p in model.named_parameters():
        if n in frozen_set:
            p.requires_grad_(False)
    return sorted(frozen_set)


def frozen_modules(model: torch.nn.Module, prefixes: list[str]) -> list[torch.nn.Module]:
    """Submodules named exactly by a freeze prefix (kept in eval mode while training)."""
    out = []
    for prefix in prefixes:
        try:
            out.append(model.get_submodule(prefix.rstrip(".")))
        except AttributeError:
            pass  # a prefix that names parameters, not a module
    return out


def _no_decay_names(model: torch.nn.Module) -> set[str]:
    names = set()
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(mod, NORM_TYPES) or p.ndim <= 1 or any(k in full for k in NO_DECAY_NAMES):
                names.add(full)
    return names


def lr_multiplier(name: str, mults: dict[str, float]) -> float:
    """The factor of the longest prefix of `name` in `mults` (1 when none matches)."""
    best, factor = -1, 1.0
    for prefix, m in mults.items():
        p = prefix.rstrip(".")
        if (name == p or name.startswith(p + ".")) and len(p) > best:
            best, factor = len(p), m
    return factor


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float, mults: dict[str, float]) -> list[dict]:
    """AdamW groups keyed by (lr factor, decay or not), in first-seen order so the layout is reproducible."""
    no_decay = _no_decay_names(model)
    groups: dict[tuple[float, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        m = lr_multiplier(name, mults)
        decay = name not in no_decay
        key = (m, decay)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "lr": lr * m, "lr_mult": m,
                           "weight_decay": weight_decay if decay else 0.0}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def lr_lambda(cfg_schedule, max_steps: int) -> Callable[[int], float]:
    """Factor of the base lr after `step` optimizer steps: warm-up x (cosine | step | constant)."""
    s = cfg_schedule

    def factor(step: int) -> float:
        warm = 1.0
        if s.warmup_steps > 0 and step < s.warmup_steps:
            warm = s.warmup_factor + (1.0 - s.warmup_factor) * step / s.warmup_steps
        if s.kind == "cosine":
            span = max(1, max_steps - s.warmup_steps)
            progress = min(max(step - s.warmup_steps, 0) / span, 1.0)
            decay = s.min_lr_ratio + (1.0 - s.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        elif s.kind == "step":
            decay = s.gamma ** sum(1 for m in s.milestones if step >= m)
        else:
            decay = 1.0
        return warm * decay

    return factor
