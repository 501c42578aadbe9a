"""What a training run leaves in its output folder: the final plan, tensors, results, PEFT export
and the merged model."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from search_spaces.attach import SHORTCUTS_ATTR, adapters, shortcut_set

from ..export import export_peft, is_pure_lora
from ..inject import merge_plan, trainable_state_dict
from ..io import atomic_write_bytes, atomic_write_text
from ..plan import Plan
from .config import CHECKPOINT, TrainConfig, TrainResult
from .loop import Trainer


OUTPUT_FILES = ("plan.json", "adapters.safetensors", "metrics.jsonl", "train.log", CHECKPOINT,
                "results.json", "config.json", "enable_counts.json", "enable_heatmap.png")
OUTPUT_DIRS = ("peft_adapter", "merged")


def remove_outputs(out: Path) -> None:
    """A fresh run in an old output folder: remove what an earlier run wrote there (only our
    own file names), so nothing stale (a PEFT export, a merged model) is left behind."""
    import shutil

    for name in OUTPUT_FILES:
        if (out / name).is_file():
            (out / name).unlink()
    for name in OUTPUT_DIRS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def final_plan(plan: Plan, model: nn.Module, result: TrainResult | None = None) -> Plan:
    """A copy of ``plan`` with each module's and shortcut's final on/off state."""
    p = Plan.from_dict(json.loads(plan.to_json()))
    ads = adapters(model)
    for name, choice in p.modules.items():
        if name in ads:
            choice["enabled"] = bool(ads[name].enabled)
    sset = shortcut_set(model)
    if sset is not None:
        on = {k: sc.enabled for k, sc in sset.items()}
        for key, hp in p.shortcuts.items():
            if key in on:
                hp["enabled"] = bool(on[key])
    if result is not None:
        p.provenance = {**p.provenance, "training": {
            "main_metric": result.main_metric, "score": result.score, "steps": result.steps,
            "metrics": result.metrics}}
    return p


def write_outputs(trainer: Trainer, plan: Plan, cfg: TrainConfig, result: TrainResult,
                   out: Path, logger: logging.Logger) -> None:
    from safetensors.torch import save as st_save


    model = trainer.model
    tensors = {k: v.detach().cpu().contiguous() for k, v in trainable_state_dict(model).items()}
    atomic_write_bytes(out / "adapters.safetensors", st_save(tensors, metadata={"format": "pt"}))
    final = final_plan(plan, model, result)
    final.save(out / "plan.json")
    if trainer.allocator is not None:
        j, png = trainer.allocator.save_report(out)
        logger.info("enable counts: %s, heatmap: %s", j, png)
    if cfg.export_peft and is_pure_lora(final):
        result.peft_dir = str(export_peft(model, final, out / "peft_adapter",
                                          task_type=trainer.data.task_type))
        logger.info("PEFT adapter: %s", result.peft_dir)
    if cfg.merge:
        result.merge_report = merge_and_save(model, final, out / "merged", trainer.data.tokenizer, logger)
    atomic_write_text(out / "results.json", json.dumps(result.to_dict(), indent=2, default=str) + "\n")


def merge_and_save(model: nn.Module, plan: Plan, out: Path, tokenizer, logger=None) -> dict[str, Any]:
    """Fold the adapters into the base weights and save_pretrained the model + tokenizer.

    Parts that cannot be folded (shortcuts: new residual paths no weight can absorb) are left
    out of the merged model and saved beside it as ``residual_plan.json`` +
    ``residual.safetensors``: ``apply_plan(merged_model, residual_plan)`` then loading those
    tensors (strict=False) gives back the trained model exactly.
    """
    from safetensors.torch import save as st_save


    model.cpu()
    report = merge_plan(model)
    out.mkdir(parents=True, exist_ok=True)
    sset = shortcut_set(model)
    residual = None
    if sset is not None:
        delattr(model, SHORTCUTS_ATTR)
        try:
            model.save_pretrained(out)
        finally:
            setattr(model, SHORTCUTS_ATTR, sset)
        on = {k for k, sc in sset.items() if sc.enabled}
        if on:
            residual = Plan(model=dict(plan.model), task=dict(plan.task),
                            shortcuts={k: {h: v for h, v in plan.shortcuts[k].items() if h != "enabled"}
                                       for k in sorted(on)})
            residual.save(out / "residual_plan.json")
            tensors = {f"{SHORTCUTS_ATTR}.paths.{k.replace('.', '_')}.{pn}": p.detach().cpu().contiguous()
                       for k, sc in sset.items() if k in on for pn, p in sc.named_parameters()}
            atomic_write_bytes(out / "residual.safetensors", st_save(tensors, metadata={"format": "pt"}))
    else:
        model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    rep = {"merged": report.merged, "not_foldable": report.not_foldable,
           "residual_plan": "residual_plan.json" if residual else None,
           "note": ("shortcuts are new residual paths that no base weight can absorb: they are not in "
                    "the merged model; apply residual_plan.json and load residual.safetensors "
                    "to get the trained model exactly") if residual else "everything was folded"}
    atomic_write_text(out / "merge_report.json", json.dumps(rep, indent=2) + "\n")
    if logger is not None:
        logger.info("merged model in %s: %s", out, report)
    return rep
