"""Exporting trained plans: a PEFT LoRA adapter for pure-LoRA plans, and loading saved adapters
(``load_adapted``: a ``save_pretrained`` folder or a more-train run).

``export_peft(model, plan, out_dir)`` writes ``adapter_config.json`` (a ``peft.LoraConfig``:
``target_modules``, ``r``, ``lora_alpha``, ``rank_pattern`` / ``alpha_pattern`` for
heterogeneous ranks, ``modules_to_save`` for the task head) and ``adapter_model.safetensors``
with PEFT's key names (``base_model.model.<module>.lora_A.weight``), so that
``peft.PeftModel.from_pretrained(base_model, out_dir)`` gives the same logits as our model.

Our LoRA is PEFT's LoRA: ``lora_A`` (r x d_in), ``lora_B`` (d_out x r), scale alpha / r.
A plan is "pure LoRA" when every enabled module is ``lora`` and no shortcut is enabled
(disabled modules and shortcuts contribute nothing and are left out).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from torch import nn

from search_spaces.anatomy import HEAD_NAMES
from search_spaces.attach import adapters, shortcut_set

from .errors import UserError
from .heads import set_pooling
from .inject import PLAN_NAME, WEIGHTS_NAME, apply_plan, trainable_state_dict
from .io import atomic_write_bytes
from .models import load_model, resolve_model
from .plan import Plan

PEFT_PREFIX = "base_model.model."
_PEFT_TASK = {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}


def is_pure_lora(plan: Plan) -> bool:
    on = [c for c in plan.modules.values() if c.get("enabled", True)]
    if not on or any(c["type"] != "lora" for c in on):
        return False
    return not any(hp.get("enabled", True) for hp in plan.shortcuts.values())


def _compact_targets(model: nn.Module, names: list[str]) -> list[str]:
    """Short suffixes ('query', 'value') when they select exactly ``names``; else full names."""
    wrapped = set(adapters(model))
    projections = wrapped | {n for n, m in model.named_modules()
                             if (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
                             and n.rpartition(".")[0] not in wrapped}  # not an adapter's own base
    wanted = set(names)
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    selected = {n for n in projections if n.rsplit(".", 1)[-1] in suffixes}
    return suffixes if selected == wanted else sorted(names)


def base_model_path(name: str | None) -> str | None:
    """The folder or Hub id behind a model name ('minilm' is a packaged folder): what
    AutoPeftModel... needs to find the base model."""
    try:
        return resolve_model(name)[0]
    except UserError:
        return name


def export_peft(model: nn.Module, plan: Plan, out_dir: str | Path, task_type: str = "classification",
                base_model_name_or_path: str | None = None) -> Path:
    """Write a PEFT LoRA adapter for ``model`` (adapted by a pure-LoRA ``plan``) to ``out_dir``."""
    from peft import LoraConfig
    from safetensors.torch import save as st_save

    ads = {n: a for n, a in adapters(model).items() if a.enabled}
    if not ads or any(a.kind != "lora" for a in ads.values()):
        raise UserError("only plans whose enabled modules are all LoRA export to PEFT")
    sset = shortcut_set(model)
    if sset is not None and any(sc.enabled for _, sc in sset.items()):
        raise UserError("plans with enabled shortcuts do not export to PEFT (PEFT has no shortcuts)")
    ranks = {n: int(a.hparams["rank"]) for n, a in ads.items()}
    alphas = {n: float(a.hparams["alpha"]) for n, a in ads.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    heads = [n for n, c in model.named_children() if n in HEAD_NAMES
             and any(p.requires_grad for p in c.parameters())]
    fan_in_fan_out = any(type(a.base).__name__ == "Conv1D" for a in ads.values())
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none",
        target_modules=_compact_targets(model, sorted(ads)),
        rank_pattern={n: v for n, v in ranks.items() if v != r},
        alpha_pattern={n: v for n, v in alphas.items() if v != alpha},
        modules_to_save=heads or None, fan_in_fan_out=fan_in_fan_out,
        task_type=_PEFT_TASK.get(task_type, "SEQ_CLS"),
        base_model_name_or_path=base_model_name_or_path or base_model_path((plan.model or {}).get("name_or_path")),
        inference_mode=True,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    tensors = {}
    for n, a in ads.items():
        tensors[f"{PEFT_PREFIX}{n}.lora_A.weight"] = a.lora_A.detach().cpu().contiguous()
        tensors[f"{PEFT_PREFIX}{n}.lora_B.weight"] = a.lora_B.detach().cpu().contiguous()
    for h in heads:
        for pn, p in getattr(model, h).state_dict().items():
            tensors[f"{PEFT_PREFIX}{h}.{pn}"] = p.detach().cpu().contiguous()
    atomic_write_bytes(out / "adapter_model.safetensors", st_save(tensors, metadata={"format": "pt"}))
    if plan.pooling != "cls":  # PEFT builds the head transformers builds: it reads the first token
        (out / "README.md").write_text(POOLING_NOTE.format(pooling=plan.pooling))
    return out


POOLING_NOTE = """# PEFT adapter written by more-nas

Its task head was trained to read the {pooling} of the token states (the pooling the base model was
trained with), not the first token that `AutoModelForSequenceClassification` reads.  Load the base
model with that pooling before the adapter, or its logits differ from the trained model's:

    from nas.heads import set_pooling
    model = set_pooling(AutoModelForSequenceClassification.from_pretrained(BASE), "{pooling}")
    model = PeftModel.from_pretrained(model, THIS_FOLDER)
"""


def load_adapted(directory: str | Path, model: nn.Module | None = None, *, task_type: str | None = None,
                 num_labels: int | None = None) -> nn.Module:
    """Adapt ``model`` (default: the plan's base model, head sized from the saved tensors) with
    the plan in ``directory`` (a ``save_pretrained``/``save_adapted`` folder or a more-train run)
    and load the trained tensors; returns the model in eval mode.  PEFT's
    ``PeftModel.from_pretrained`` is the same shape."""
    from safetensors.torch import load_file

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
                           revision=plan.model.get("revision"), pooling=plan.pooling if ttype != "causal_lm" else None)
    elif adapters(model) or shortcut_set(model) is not None:
        raise UserError("load_adapted expects a base model without adapters")
    else:
        set_pooling(model, plan.pooling)  # a caller's model reads what the plan was trained with
    ref = next(model.parameters())
    apply_plan(model, plan)  # also makes save_pretrained write the plan + trained tensors
    expected = set(trainable_state_dict(model))
    _, unexpected = model.load_state_dict({k: v.to(ref.device) for k, v in tensors.items()}, strict=False)
    missing = sorted(expected - set(tensors))
    if unexpected or missing:
        raise UserError(f"{weights} does not fit this model: "
                        + (f"unexpected tensors {unexpected[:3]}" if unexpected else "")
                        + (f" missing tensors {missing[:3]}" if missing else ""))
    return model.eval()


load_trained = load_adapted  # the earlier name
