"""Which trainer trains a config: a registry keyed by the config's ``task:``.

The base `Trainer` (`groundscope.train.loop`) knows no subclass; each task names the class that trains it here, so
a new task adds one entry and the loop stays as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rich.console import Console

from groundscope.train.config import ConfigError, TrainConfig
from groundscope.train.loop import Trainer


def _detect_trainer(config: TrainConfig) -> type[Trainer]:
    """``task: detect``: the plain `Trainer`, or `RkdTrainer` when ``rkd.enabled`` (RKD trains a detector)."""
    if config.rkd.enabled:
        from groundscope.train.rkd import RkdTrainer  # imported on use: RKD's teacher code loads only for RKD runs

        return RkdTrainer
    return Trainer


def _dam_trainer(config: TrainConfig) -> type[Trainer]:
    """``task: dam``: Describe Anything fine-tuning."""
    from groundscope.train.dam import DamTrainer  # imported on use: the DAM model code loads only for DAM runs

    return DamTrainer


def _sam_trainer(config: TrainConfig) -> type[Trainer]:
    """``task: sam``: a promptable segmenter (SAM's recipe)."""
    from groundscope.train.sam import SamTrainer  # imported on use

    return SamTrainer


# task -> the function that picks that task's trainer class from the config.
TRAINERS: dict[str, Callable[[TrainConfig], type[Trainer]]] = {"detect": _detect_trainer, "dam": _dam_trainer,
                                                                "sam": _sam_trainer}


def build_trainer(config: TrainConfig, out_dir: str | Path | None = None, console: Console | None = None) -> Trainer:
    """The trainer of ``config.task`` (`TRAINERS`), built for `config`."""
    try:
        pick = TRAINERS[config.task]
    except KeyError:
        raise ConfigError(f"task: {config.task!r} has no trainer; use one of {', '.join(TRAINERS)}") from None
    return pick(config)(config, out_dir, console=console)


def train(config: TrainConfig, out_dir: str | Path | None = None, resume: bool | str | Path = False,
          console: Console | None = None) -> dict:
    """Build the task's trainer from `config` and run it; returns its summary."""
    return build_trainer(config, out_dir, console=console).fit(resume=resume)
