"""Training a plan on transformers.Trainer: configuration (config.py), the trainer and ``train``
(trainer.py), callbacks, outputs, precision, dynamic allocation, several processes (distributed.py)
and helpers (support.py)."""
from .config import NonFiniteLoss, TrainConfig, TrainResult
from .lr_range import RangeTest, lr_range_test, plot_range_test
from .outputs import final_plan, merge_and_save
from .support import group_by_length
from .trainer import AdapterTrainer, prepare, run, train

Trainer = AdapterTrainer  # the loop: a transformers.Trainer

__all__ = ["AdapterTrainer", "NonFiniteLoss", "TrainConfig", "TrainResult", "Trainer", "final_plan",
           "group_by_length", "merge_and_save", "prepare", "run", "train"]
