"""Named generation settings of DAM (`GENERATION_PRESETS`, `generation_preset`) and `seed_everything`, which
seeds a run as the official evaluation does."""

from __future__ import annotations

import torch

from groundscope.describe.config import DamError

# Named generation settings. "dlc-bench": the published DLC-Bench run (official evaluation/get_model_outputs.py
# ~67-71, ~103, ~126-132: temperature 0.2, top_p None, num_beams 1, max_new_tokens 512, every seed set to 123
# once before the first region). top_p None adds no nucleus filter; top_p 1.0 is the same in transformers.
GENERATION_PRESETS: dict[str, dict] = {
    "dlc-bench": {"temperature": 0.2, "top_p": 1.0, "max_new_tokens": 512, "seed": 123},
    "official-default": {"temperature": 0.2, "top_p": 0.5, "max_new_tokens": 512},  # get_description's defaults
    "greedy": {"temperature": 0.0},
}


def generation_preset(name: str) -> dict:
    """The settings of a named preset (a copy); raises DamError naming the known ones."""
    if name not in GENERATION_PRESETS:
        raise DamError(f"unknown generation preset {name!r}; use one of {sorted(GENERATION_PRESETS)}")
    return dict(GENERATION_PRESETS[name])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every CUDA device too), as the official evaluation does (~126-132)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
