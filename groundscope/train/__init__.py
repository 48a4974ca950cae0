"""Training: fine-tune any detector `load_detector` loads with the Grounding DINO / MM-GDINO recipe.

    groundscope train CONFIG.yaml [--resume] [--out DIR]

Modules: `config` (YAML schema and validation), `data` (records -> prompts, targets, batches), `matcher`
(Hungarian matching), `losses` (focal token alignment + L1 + GIoU, auxiliary and encoder terms), `forward`
(the staged forward with gradients), `loop` (the `Trainer`), `checkpoint` (atomic saves, RNG state, export),
`plot` (loss.png), `nano` (a small model to train from scratch) and `cli` (the `train` command).
"""

from groundscope.train.config import ConfigError, TrainConfig, config_from_dict, load_config
from groundscope.train.loop import Trainer, TrainError, train

__all__ = ["ConfigError", "TrainConfig", "TrainError", "Trainer", "config_from_dict", "load_config", "train"]
