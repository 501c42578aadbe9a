"""What a finished run writes: the final plan, the trained tensors, results, exports, merged model.

A run folder (``output_dir``):

    plan.json + adapters.safetensors   the trained adapters (nas.load_adapted reads them)
    train_config.json                  the resolved TrainConfig (not an HF model config)
    metrics.jsonl, train.log, results.json
    checkpoint-N/                      HF Trainer checkpoints (trained tensors only), rotated
    enable_counts.json, enable_heatmap.png          (dynamic allocation)
    peft_adapter/                      a PEFT LoRA adapter, when the plan is pure LoRA
    merged/                            (merge=True) a plain HF model: from_pretrained(merged/)
Everything is written atomically (a file is either the old or the new one).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from search_spaces.attach import SHORTCUTS_ATTR, shortcut_set

from ..export import base_model_path, export_peft as write_peft, is_pure_lora
from ..inject import PLAN_ATTR, current_plan, merge_plan, save_adapted
from ..io import atomic_write_bytes, atomic_write_text
from ..data.tasks import class_names
from ..plan import Plan
from .config import TrainResult

CONFIG_NAME = "train_config.json"
OUTPUT_FILES = ("plan.json", "adapters.safetensors", "metrics.jsonl", "train.log", "results.json",
                CONFIG_NAME, "enable_counts.json", "enable_heatmap.png")
OUTPUT_DIRS = ("peft_adapter", "merged")


def remove_outputs(out: Path) -> None:
    """A fresh run in an old output folder: remove what an earlier run wrote there (only our
    own names and HF's checkpoint-N folders), so nothing stale is left behind."""
    for name in OUTPUT_FILES:
        if (out / name).is_file():
            (out / name).unlink()
    for d in [out / n for n in OUTPUT_DIRS] + sorted(out.glob("checkpoint-*")):
        if d.is_dir():
            shutil.rmtree(d)


def final_plan(plan: Plan, model: nn.Module, result: TrainResult | None = None) -> Plan:
    """A copy of ``plan`` with each module's and shortcut's final on/off state."""
    had = getattr(model, PLAN_ATTR, None)
    setattr(model, PLAN_ATTR, plan)
    try:
        p = current_plan(model)
    finally:
        setattr(model, PLAN_ATTR, had)
    if result is not None:
        p.provenance = {**p.provenance, "training": {
            "main_metric": result.main_metric, "score": result.score, "steps": result.steps,
            "metrics": result.metrics}}
    return p


def write_outputs(model: nn.Module, plan: Plan, data, result: TrainResult, out: Path, *, allocator=None,
                  export_peft: bool = True, merge: bool = False, logger=None) -> None:

    final = final_plan(plan, model, result)
    save_adapted(model, out, plan=final)
    if allocator is not None:
        j, png = allocator.save_report(out)
        _log(logger, "enable counts: %s, heatmap: %s", j, png)
    if export_peft and is_pure_lora(final):
        result.peft_dir = str(write_peft(model, final, out / "peft_adapter", task_type=data.task_type))
        _log(logger, "PEFT adapter: %s%s", result.peft_dir, "" if final.pooling == "cls" else
             f" (its head reads the {final.pooling} of the tokens: load it as its README.md says)")
    if merge:
        result.merge_report = merge_and_save(model, final, out / "merged", data.tokenizer, logger, data=data,
                                             result=result)
    atomic_write_text(out / "results.json", json.dumps(result.to_dict(), indent=2, default=str) + "\n")


def _log(logger, *args):
    if logger is not None:
        logger.info(*args)


def merge_and_save(model: nn.Module, plan: Plan, out: Path, tokenizer, logger=None, *, data=None,
                   result: TrainResult | None = None) -> dict[str, Any]:
    """Fold the adapters into the base weights and save_pretrained the model + tokenizer + a
    model card, so ``AutoModel...from_pretrained(out)`` works without this package.

    Parts that cannot be folded (shortcuts: new residual paths no weight can absorb) are left
    out of the merged model and saved beside it as ``residual_plan.json`` +
    ``residual.safetensors``: ``apply_plan(merged_model, residual_plan)`` then loading those
    tensors (strict=False) gives back the trained model exactly.
    """
    from safetensors.torch import save as st_save

    model.cpu()
    report = merge_plan(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if data is not None and data.task_type == "classification" and hasattr(model, "config"):
        names = class_names(data.name, data.label_names, data.num_labels)
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {n: i for i, n in enumerate(names)}
    sset = shortcut_set(model)
    on = {k for k, sc in sset.items() if sc.enabled} if sset is not None else set()
    if sset is not None:
        delattr(model, SHORTCUTS_ATTR)
    try:
        type(model).save_pretrained(model, out)  # the full model (an adapted one saves only adapters)
    finally:
        if sset is not None:
            setattr(model, SHORTCUTS_ATTR, sset)
    if on:
        residual = Plan(model=dict(plan.model), task=dict(plan.task),
                        shortcuts={k: {h: v for h, v in plan.shortcuts[k].items() if h != "enabled"}
                                   for k in sorted(on)})
        residual.save(out / "residual_plan.json")
        tensors = {f"{SHORTCUTS_ATTR}.paths.{k.replace('.', '_')}.{pn}": p.detach().cpu().contiguous()
                   for k, sc in sset.items() if k in on for pn, p in sc.named_parameters()}
        atomic_write_bytes(out / "residual.safetensors", st_save(tensors, metadata={"format": "pt"}))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    rep = {"merged": report.merged, "not_foldable": report.not_foldable,
           "residual_plan": "residual_plan.json" if on else None,
           "note": ("shortcuts are new residual paths that no base weight can absorb: they are not in "
                    "the merged model; apply residual_plan.json and load residual.safetensors "
                    "to get the trained model exactly") if on else "everything was folded"}
    atomic_write_text(out / "merge_report.json", json.dumps(rep, indent=2) + "\n")
    atomic_write_text(out / "README.md", model_card(plan, rep, data, result))
    _log(logger, "merged model in %s: %s", out, report)
    return rep


def model_card(plan: Plan, rep: dict[str, Any], data=None, result: TrainResult | None = None) -> str:

    base = base_model_path((plan.model or {}).get("name_or_path")) or "(unknown base model)"
    task = data.name if data is not None else (plan.task or {}).get("task") or (plan.task or {}).get("name")
    score = (f"{result.main_metric} = {result.score:.4f} on the {data.eval_split if data else 'dev'} split "
             f"after {result.steps} steps") if result is not None else "not evaluated"
    kinds: dict[str, int] = {}
    for c in plan.modules.values():
        if c.get("enabled", True):
            kinds[c["type"]] = kinds.get(c["type"], 0) + 1
    shortcuts = [k for k, hp in plan.shortcuts.items() if hp.get("enabled", True)]
    lines = [
        "---", f"base_model: {base}", "library_name: transformers", "tags: [more-nas, peft]", "---", "",
        f"# {Path(str(base)).name} fine-tuned with a more-nas adapter plan", "",
        f"- base model: `{base}`", f"- task: {task} ({data.task_type if data else 'see plan'})",
        f"- dev score: {score}",
        "- plan: " + (", ".join(f"{n} x {k}" for k, n in sorted(kinds.items())) or "no adapters")
        + (f"; {len(shortcuts)} shortcut(s): {', '.join(shortcuts)}" if shortcuts else ""),
        f"- merged into the weights: {len(rep['merged'])} adapter(s)", "",
        "```python", "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "model = AutoModelForSequenceClassification.from_pretrained('<this folder>')",
        "tokenizer = AutoTokenizer.from_pretrained('<this folder>')", "```", "",
    ]
    if rep.get("residual_plan"):
        lines += [
            "## What still needs more-nas", "",
            f"The shortcuts {', '.join(shortcuts)} add new residual paths that no weight can absorb, "
            "so this folder alone is the model WITHOUT them. To get the trained model exactly:", "",
            "```python", "import nas  # pip install more-nas",
            "from safetensors.torch import load_file",
            "nas.apply_plan(model, nas.Plan.load('residual_plan.json'))",
            "model.load_state_dict(load_file('residual.safetensors'), strict=False)", "```", "",
        ]
    else:
        lines += ["Everything was folded into the weights: this folder needs only `transformers`.", ""]
    return "\n".join(lines)
