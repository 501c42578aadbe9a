"""Training a plan: configuration, the loop (transformers.Trainer), callbacks, outputs, saving,
precision and dynamic allocation."""
from .config import NonFiniteLoss, TrainConfig, TrainResult
from .outputs import final_plan, merge_and_save
from .saving import load_adapted, save_adapted
from .trainer import AdapterTrainer, prepare, train

Trainer = AdapterTrainer  # the loop: a transformers.Trainer

__all__ = ["AdapterTrainer", "NonFiniteLoss", "TrainConfig", "TrainResult", "Trainer", "final_plan",
           "load_adapted", "merge_and_save", "prepare", "save_adapted", "train"]
