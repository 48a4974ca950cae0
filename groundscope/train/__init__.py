"""Training: fine-tune any detector `load_detector` loads with the Grounding DINO / MM-GDINO recipe.

    groundscope train CONFIG.yaml [--resume] [--out DIR]

Modules: `config` (YAML schema and validation), `data` (records -> prompts, targets, batches), `matcher`
(Hungarian matching), `losses` (focal token alignment + L1 + GIoU, auxiliary and encoder terms), `forward`
(the staged forward with gradients), `optim` (freezing, parameter groups, the lr schedule), `loop` (the
`Trainer`), `trainers` (which trainer a config's ``task:`` uses), `checkpoint` (atomic saves, RNG state,
export), `memory` (resident size, heap trimming), `plot` (loss.png), `nano` (a small model to train from
scratch), `distributed` (several processes: ``--nproc``, torchrun).

Describe Anything trains through the same loop (``task: dam`` in the config): `dam` (the `DamTrainer`: region
files -> focal pixels + descriptions, LM loss on the descriptions, export in DAM's layout) and `base_vlm`
(``groundscope pretrain-vlm``: the small base VLM a DAM starts from, offline on the synthetic world).
"""

from groundscope.train.config import ConfigError, TrainConfig, config_from_dict, load_config
from groundscope.train.loop import Trainer, TrainError
from groundscope.train.trainers import build_trainer, train

__all__ = ["ConfigError", "TrainConfig", "TrainError", "Trainer", "build_trainer", "config_from_dict", "load_config",
           "train"]
