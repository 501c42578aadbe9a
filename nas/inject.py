"""The verbs that put a plan into a model and take it out again.

apply_plan  -- wrap each chosen projection in its adapter, attach shortcuts, freeze the base,
               keep the task head trainable;
merge_plan  -- fold every foldable adapter into its base weight and unwrap it;
adapters / shortcut_set -- find what apply_plan attached.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from search_spaces import Adapter, make_adapter

from .discovery import ModelLayout, discover
from .plan import Plan, split_choice
from .shortcuts import ShortcutSet

# Task heads that stay trainable (as PEFT's SEQ_CLS modules_to_save); LM heads stay frozen.
HEAD_NAMES = ("classifier", "score", "qa_outputs")
SHORTCUTS_ATTR = "more_shortcuts"


def task_head_parameters(model: nn.Module) -> list[nn.Parameter]:
    params = []
    for name, child in model.named_children():
        if name in HEAD_NAMES:
            params += list(child.parameters())
    return params


def apply_plan(model: nn.Module, plan: Plan, layout: ModelLayout | None = None) -> nn.Module:
    """Inject the plan's adapters and shortcuts into ``model`` in place and return it.

    Validates first and changes nothing if any choice does not fit.  Afterwards only the
    adapters, the shortcuts and the task head require gradients, and ``model.save_pretrained``
    writes only the plan and those tensors (``nas.load_adapted`` reads them back).
    """
    layout = layout or discover(model)
    plan.validate(layout)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, choice in plan.modules.items():
        kind, hp = split_choice(choice)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        adapter = make_adapter(kind, getattr(parent, child), **hp)
        adapter.enabled = choice.get("enabled", True)
        setattr(parent, child, adapter)
    if plan.shortcuts:
        choices = {k: {h: v for h, v in hp.items() if h != "enabled"} for k, hp in plan.shortcuts.items()}
        sset = ShortcutSet(model, layout, choices)
        for key, sc in sset.items():
            sc.enabled = plan.shortcuts[key].get("enabled", True)
        setattr(model, SHORTCUTS_ATTR, sset)
    for p in task_head_parameters(model):
        p.requires_grad_(True)
    from .train.saving import attach  # save_pretrained now writes the plan + trained tensors

    return attach(model, plan)


def adapters(model: nn.Module) -> dict[str, Adapter]:
    """Qualified name (as in the plan) -> adapter."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Adapter)}


def shortcut_set(model: nn.Module) -> ShortcutSet | None:
    return getattr(model, SHORTCUTS_ATTR, None)


def trainable_state_dict(model: nn.Module) -> dict:
    """Adapter, shortcut and task-head tensors: what a training run needs to save."""
    keep = {id(p) for p in model.parameters() if p.requires_grad}
    for a in adapters(model).values():  # disabled adapters still carry weights
        keep |= {id(p) for p in a.trainable_parameters()}
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if id(v) in keep}


@dataclass
class MergeReport:
    merged: list[str] = field(default_factory=list)
    not_foldable: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        s = f"merged {len(self.merged)} adapter(s)"
        if self.not_foldable:
            s += f"; not foldable into base weights (kept as modules): {', '.join(self.not_foldable)}"
        return s


def merge_plan(model: nn.Module) -> MergeReport:
    """Fold every enabled adapter into its base weight and put the plain base layer back.

    Disabled adapters are dropped (they contribute nothing).  Shortcuts add new residual
    paths that no existing weight can absorb, so they stay and are reported as not foldable.
    """
    report = MergeReport()
    for name, adapter in adapters(model).items():
        if adapter.enabled and not adapter.mergeable:
            report.not_foldable.append(name)
            continue
        adapter.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, adapter.base)
        report.merged.append(name)
    sset = shortcut_set(model)
    if sset is not None:
        report.not_foldable += [f"shortcut {k}" for k, sc in sset.items() if sc.enabled]
    return report
