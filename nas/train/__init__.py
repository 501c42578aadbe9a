"""Training a plan: ``train(plan, TrainConfig.from_plan(plan, ...))`` (run.py), the loop (loop.py),
its config and result (config.py), output files (outputs.py) and dynamic allocation (dynamic.py)."""
from .config import NonFiniteLoss, TrainConfig, TrainResult
from .loop import Trainer
from .outputs import final_plan, merge_and_save
from .run import prepare, train
from .support import group_by_length

__all__ = ["NonFiniteLoss", "TrainConfig", "TrainResult", "Trainer", "final_plan", "group_by_length",
           "merge_and_save", "prepare", "train"]
