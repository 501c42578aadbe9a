"""The verbs that put a plan into a model and take it out again.

apply_plan  -- wrap each chosen projection in its adapter, attach shortcuts, freeze the base,
               keep the task head trainable;
merge_plan  -- fold every foldable adapter into its base weight and unwrap it;
remove_plan -- detach every adapter and shortcut and forget the plan (apply_plan undone);
adapters / shortcut_set -- find what apply_plan attached;
save_adapted -- write the plan and only the trained tensors, as PEFT does (an adapted model's
               ``save_pretrained`` does the same; nas.train.saving.load_adapted reads them back).
"""
from __future__ import annotations

import json
import types
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from search_spaces.anatomy import ModelLayout, discover, task_head_parameters
from search_spaces.attach import adapters, attach, detach, shortcut_set

from .errors import UserError
from .io import atomic_write_bytes
from .plan import Plan

PLAN_NAME = "plan.json"
WEIGHTS_NAME = "adapters.safetensors"
PLAN_ATTR = "more_plan"  # the plan apply_plan injected, kept on the model for save_pretrained


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
    attach(model, layout, plan.modules, plan.shortcuts)
    for p in task_head_parameters(model):
        p.requires_grad_(True)
    return remember_plan(model, plan)


def trainable_state_dict(model: nn.Module) -> dict:
    """Adapter, shortcut and task-head tensors: what a training run needs to save."""
    keep = {id(p) for p in model.parameters() if p.requires_grad}
    for a in adapters(model).values():  # disabled adapters still carry weights
        keep |= {id(p) for p in a.trainable_parameters()}
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if id(v) in keep}


def trained_tensors(model: nn.Module) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in trainable_state_dict(model).items()}


def current_plan(model: nn.Module) -> Plan:
    """The plan attached to ``model`` with each module's and shortcut's on/off state now."""
    plan = getattr(model, PLAN_ATTR, None)
    if plan is None:
        raise UserError("this model has no more-nas plan attached; adapt it with nas.apply_plan first")
    p = Plan.from_dict(json.loads(plan.to_json()))
    ads = adapters(model)
    for name, choice in p.modules.items():
        if name in ads:
            choice["enabled"] = bool(ads[name].enabled)
    sset = shortcut_set(model)
    if sset is not None:
        on = dict(sset.items())
        for key, hp in p.shortcuts.items():
            if key in on:
                hp["enabled"] = bool(on[key].enabled)
    return p


def save_adapted(model: nn.Module, save_directory: str | Path, plan: Plan | None = None,
                 is_main_process: bool = True, **_) -> Path:
    """Write ``plan.json`` and ``adapters.safetensors`` (adapters, shortcuts, task head)."""
    from safetensors.torch import save as st_save

    out = Path(save_directory)
    if not is_main_process:
        return out
    out.mkdir(parents=True, exist_ok=True)
    plan = plan if plan is not None else current_plan(model)
    atomic_write_bytes(out / WEIGHTS_NAME, st_save(trained_tensors(model), metadata={"format": "pt"}))
    plan.save(out / PLAN_NAME)
    return out


def _save_pretrained(self, save_directory, *args, **kwargs):
    """An adapted model's save_pretrained: the plan and the trained tensors only (as PEFT)."""
    return save_adapted(self, save_directory, is_main_process=kwargs.get("is_main_process", True))


def remember_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """Keep ``plan`` on ``model`` and make its ``save_pretrained`` write only what trains."""
    setattr(model, PLAN_ATTR, plan)
    model.save_pretrained = types.MethodType(_save_pretrained, model)
    return model


def remove_plan(model: nn.Module) -> nn.Module:
    """Undo ``apply_plan``: detach every adapter and shortcut and forget the plan (the base
    weights are the caller's to restore if they trained)."""
    detach(model, list(adapters(model)), shortcuts=True)
    for attr in (PLAN_ATTR, "save_pretrained"):  # remember_plan's, on the instance
        model.__dict__.pop(attr, None)
    return model


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
