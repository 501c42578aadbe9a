"""more-nas: search, plan and train heterogeneous adapter architectures."""
from .discovery import AdaptableModule, ModelLayout, discover
from .errors import PlanError, UserError
from .inject import adapters, apply_plan, merge_plan, shortcut_set, trainable_state_dict
from .plan import Plan
from .train.saving import load_adapted, save_adapted

__all__ = [
    "AdaptableModule", "ModelLayout", "Plan", "PlanError", "UserError", "adapters", "apply_plan",
    "discover", "load_adapted", "merge_plan", "save_adapted", "shortcut_set", "trainable_state_dict",
]
