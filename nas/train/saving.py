"""Save and load an adapted model the way PEFT does: the plan + only the trained tensors.

    save_adapted(model, "out")             # out/plan.json + out/adapters.safetensors
    model.save_pretrained("out")           # the same, once apply_plan has adapted the model
    model = load_adapted("out")            # the plan's base model + the trained tensors
    model = load_adapted("out", base)      # ... on top of a base model you loaded

The two files are those of a more-train run folder, so a run folder loads the same way.
Like PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``, nothing of the frozen
base model is written.
"""
from __future__ import annotations

import json
import types
from pathlib import Path

from torch import nn

from ..errors import UserError
from ..inject import HEAD_NAMES, adapters, apply_plan, shortcut_set, trainable_state_dict
from ..plan import Plan, atomic_write_bytes

PLAN_NAME = "plan.json"
WEIGHTS_NAME = "adapters.safetensors"
PLAN_ATTR = "more_plan"  # the plan apply_plan injected, kept on the model for save_pretrained


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


def attach(model: nn.Module, plan: Plan) -> nn.Module:
    """Remember ``plan`` on ``model`` and make its ``save_pretrained`` write only what trains."""
    setattr(model, PLAN_ATTR, plan)
    model.save_pretrained = types.MethodType(_save_pretrained, model)
    return model


def load_adapted(directory: str | Path, model: nn.Module | None = None, *, task_type: str | None = None,
                 num_labels: int | None = None) -> nn.Module:
    """Adapt ``model`` (default: the plan's base model, head sized from the saved tensors) with
    the plan in ``directory`` and load the trained tensors; returns the model in eval mode."""
    from safetensors.torch import load_file

    from ..models import load_model

    folder = Path(directory)
    weights, plan_file = folder / WEIGHTS_NAME, folder / PLAN_NAME
    if not weights.is_file() or not plan_file.is_file():
        raise UserError(f"{str(folder)!r} holds no {PLAN_NAME} + {WEIGHTS_NAME}; save one with "
                        f"model.save_pretrained(dir) or point at a more-train output folder")
    plan = Plan.load(plan_file)
    tensors = load_file(str(weights))
    if model is None:
        ttype = task_type or (plan.task or {}).get("task_type")
        head = next((v for k, v in tensors.items()
                     if k.split(".")[0] in HEAD_NAMES and k.endswith("weight")), None)
        if ttype is None:
            ttype = "classification" if head is not None else "causal_lm"
            if head is not None and head.shape[0] == 1:
                ttype = "regression"
        if num_labels is None and head is not None:
            num_labels = head.shape[0]
        model = load_model(plan.model.get("name_or_path"), task_type=ttype, num_labels=num_labels or 2,
                           revision=plan.model.get("revision"))
    elif adapters(model) or shortcut_set(model) is not None:
        raise UserError("load_adapted expects a base model without adapters")
    ref = next(model.parameters())
    apply_plan(model, plan)
    attach(model, plan)
    expected = set(trainable_state_dict(model))
    _, unexpected = model.load_state_dict({k: v.to(ref.device) for k, v in tensors.items()}, strict=False)
    missing = sorted(expected - set(tensors))
    if unexpected or missing:
        raise UserError(f"{weights} does not fit this model: "
                        + (f"unexpected tensors {unexpected[:3]}" if unexpected else "")
                        + (f" missing tensors {missing[:3]}" if missing else ""))
    return model.eval()
