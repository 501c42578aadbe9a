"""more-nas: search, plan and train heterogeneous adapter architectures."""
from search_spaces.anatomy import AdaptableModule, ModelLayout, discover

from .errors import PlanError, UserError
from .export import load_adapted
from .inject import (adapters, apply_plan, merge_plan, remove_plan, save_adapted, shortcut_set,
                     trainable_state_dict)
from .plan import Plan

__all__ = [
    "AdaptableModule", "ModelLayout", "Plan", "PlanError", "UserError", "adapters", "apply_plan",
    "discover", "load_adapted", "merge_plan", "remove_plan", "save_adapted", "shortcut_set", "trainable_state_dict",
]
