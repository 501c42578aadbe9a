"""PEFT export: a pure-LoRA plan loads with peft.PeftModel.from_pretrained and gives the same
logits (classification with heterogeneous ranks, causal LM, a trained run); our LoRA and PEFT's
LoRA follow the same training trajectory through the same loop."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from nas import UserError, apply_plan, discover
from nas.export import export_peft, is_pure_lora, load_trained
from nas.models import load_model
from tests.factories import cfg_for, lora_plan

torch.set_num_threads(1)
BATCH = {"input_ids": torch.tensor([[2, 7, 9, 12, 20, 3], [2, 5, 6, 3, 0, 0]]),
         "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])}


def _randomize(model, seed=0):
    """Give every adapter and the head non-trivial values (B is zero at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (p for p in model.parameters() if p.requires_grad):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _peft_logits(base, folder, batch):
    from peft import PeftModel

    pm = PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.no_grad():
        return pm(**batch).logits


def test_heterogeneous_lora_round_trip(tiny_bert, layout, tmp_path):  # noqa: F811
    plan = lora_plan(tiny_bert, layout, roles=("q", "v", "ffn_down"))
    names = list(plan.modules)
    plan.modules[names[0]] = {"type": "lora", "rank": 2, "alpha": 3.0}
    plan.modules[names[1]] = {"type": "lora", "rank": 8}  # alpha None -> 16
    plan.modules[names[2]]["enabled"] = False  # disabled: contributes nothing, not exported
    plan.shortcuts = {"1.s_in": {"rank": 4, "enabled": False}}
    assert is_pure_lora(plan)
    model = apply_plan(load_model(str(tiny_bert), num_labels=3), plan)
    _randomize(model)
    model.eval()
    out = export_peft(model, plan, tmp_path / "peft")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "SEQ_CLS"
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0 and cfg["modules_to_save"] == ["classifier"]
    assert cfg["rank_pattern"] == {names[0]: 2, names[1]: 8}
    assert cfg["alpha_pattern"] == {names[0]: 3.0, names[1]: 16.0}
    assert names[2] not in cfg["target_modules"] and len(cfg["target_modules"]) == len(names) - 1
    with torch.no_grad():
        ours = model(**BATCH).logits
    theirs = _peft_logits(load_model(str(tiny_bert), num_labels=3), out, BATCH)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)


def test_compact_target_names(tiny_bert, layout, tmp_path):  # noqa: F811
    plan = lora_plan(tiny_bert, layout, roles=("q", "v"))
    model = apply_plan(load_model(str(tiny_bert), num_labels=2), plan)
    cfg = json.loads((export_peft(model, plan, tmp_path) / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["query", "value"] and cfg["rank_pattern"] == {}


def test_causal_lm_round_trip(tiny_llama, tmp_path):  # noqa: F811
    model = load_model(str(tiny_llama), task_type="causal_lm")
    plan = lora_plan(tiny_llama, discover(model), roles=("q", "v", "ffn_up"))
    apply_plan(model, plan)
    _randomize(model, seed=1)
    model.eval()
    out = export_peft(model, plan, tmp_path, task_type="causal_lm")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "CAUSAL_LM" and not cfg["modules_to_save"]
    with torch.no_grad():
        ours = model(**BATCH).logits
    theirs = _peft_logits(load_model(str(tiny_llama), task_type="causal_lm"), out, BATCH)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_trained_run_exports_peft(tiny_bert, layout, sentiment, tmp_path):  # noqa: F811
    from nas.train import train

    res = train(lora_plan(tiny_bert, layout), cfg_for(sentiment, output_dir=str(tmp_path), epochs=1))
    assert res.peft_dir == str(tmp_path / "peft_adapter")
    ours = load_trained(tmp_path)
    with torch.no_grad():
        a = ours(**BATCH).logits
    b = _peft_logits(load_model(str(tiny_bert), num_labels=2), res.peft_dir, BATCH)
    assert torch.allclose(a, b, atol=1e-5)


def test_non_lora_plans_do_not_export(tiny_bert, layout, tmp_path):  # noqa: F811
    plan = lora_plan(tiny_bert, layout)
    plan.modules[next(iter(plan.modules))] = {"type": "more", "nblocks": 2, "rank": 2}
    assert not is_pure_lora(plan)
    model = apply_plan(load_model(str(tiny_bert), num_labels=2), plan)
    with pytest.raises(UserError, match="LoRA"):
        export_peft(model, plan, tmp_path)
    plan2 = lora_plan(tiny_bert, layout, shortcuts={"0.s_res1": {"rank": 4}})
    assert not is_pure_lora(plan2)
    model = apply_plan(load_model(str(tiny_bert), num_labels=2), plan2)
    with pytest.raises(UserError, match="shortcuts"):
        export_peft(model, plan2, tmp_path)


def test_same_trajectory_as_peft_in_the_same_loop(tiny_bert, layout, sentiment):  # noqa: F811
    """Our LoRA plan and PEFT LoRA, same init, same Trainer: the same losses step by step."""
    from peft import LoraConfig, get_peft_model

    from nas.data import load_task
    from nas.models import load_tokenizer
    from nas.train import prepare
    from nas.train.trainer import trainer_for

    cfg = cfg_for(sentiment, epochs=1, lr=1e-2, max_steps=5, logging_steps=1)
    tok = load_tokenizer(str(tiny_bert))
    data = load_task(tokenizer=tok, train_file=sentiment[0], validation_file=sentiment[1], max_length=32)
    torch.manual_seed(0)
    base = load_model(str(tiny_bert), num_labels=2)
    head = {k: v.clone() for k, v in base.classifier.state_dict().items()}
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                         lora_dropout=0.0, modules_to_save=["classifier"], task_type="SEQ_CLS"))
    ours_model = load_model(str(tiny_bert), num_labels=2)
    ours_model.classifier.load_state_dict(head)
    tr_ours = prepare(lora_plan(tiny_bert, layout), cfg, model=ours_model, data=data)
    for name, ad in tr_ours.model.named_modules():
        if hasattr(ad, "lora_A") and hasattr(ad, "kind"):
            peft_mod = pm.get_submodule("base_model.model." + name)
            with torch.no_grad():
                ad.lora_A.copy_(peft_mod.lora_A["default"].weight)
    tr_peft = trainer_for(pm, data, cfg, callbacks=[peft_losses := LossLog()])
    tr_ours.add_callback(ours_losses := LossLog())
    for tr in (tr_ours, tr_peft):  # the same batches and dropout masks: the same RNG state
        torch.manual_seed(1)
        tr.train()
    assert len(ours_losses.losses) == 5
    assert ours_losses.losses == pytest.approx(peft_losses.losses, rel=1e-5, abs=1e-6)
    assert tr_ours.history[-1]["loss"] == pytest.approx(tr_peft.history[-1]["loss"], rel=1e-4, abs=1e-6)


class LossLog(TrainerCallback):
    """The training loss of every optimizer step (logging_steps=1)."""

    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])
