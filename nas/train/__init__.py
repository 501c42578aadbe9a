"""Training a plan: configuration, the loop, callbacks, outputs, saving and dynamic allocation."""
from .trainer import (NonFiniteLoss, TrainConfig, Trainer, TrainResult, final_plan, merge_and_save,
                      prepare, train)

__all__ = ["NonFiniteLoss", "TrainConfig", "TrainResult", "Trainer", "final_plan", "merge_and_save",
           "prepare", "train"]
