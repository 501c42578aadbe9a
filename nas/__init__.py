"""more-nas: search, plan and train heterogeneous adapter architectures."""
from search_spaces.anatomy import AdaptableModule, ModelLayout, discover

from .errors import PlanError, UserError
from .inject import adapters, apply_plan, merge_plan, shortcut_set, trainable_state_dict
from .plan import Plan

__all__ = [
    "AdaptableModule", "ModelLayout", "Plan", "PlanError", "UserError", "adapters", "apply_plan",
    "discover", "merge_plan", "shortcut_set", "trainable_state_dict",
]
