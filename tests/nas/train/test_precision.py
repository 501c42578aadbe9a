"""bf16 training on CPU for every adapter kind and shortcut; device/precision errors before loading."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainerCallback

from nas import UserError, adapters, shortcut_set, trainable_state_dict
from nas.models import load_model
from nas.train import train
from nas.train.precision import frozen_base_to, restore_frozen_base
from tests.factories import cfg_for, mixed_plan

torch.set_num_threads(1)


@pytest.mark.parametrize("frozen", [False, True], ids=["autocast", "frozen-base-bf16"])
@pytest.mark.parametrize("gc", [False, True], ids=["plain", "grad-checkpointing"])
def test_bf16_step_every_kind_and_shortcut(tiny_bert, layout, sentiment, gc, frozen):
    plan = mixed_plan(tiny_bert, layout)
    model = load_model(str(tiny_bert), num_labels=2)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seen, start = [], {}

    class Snapshot(TrainerCallback):  # the adapters as initialised, before the first step
        def on_train_begin(self, args, state, control, **kw):
            start.update({k: v.detach().float().clone() for k, v in trainable_state_dict(model).items()})

    res = train(plan, cfg_for(sentiment, bf16=True, bf16_frozen_base=frozen, max_steps=3, eval_every=3,
                              gradient_checkpointing=gc),
                model=model, on_eval=lambda s, m: seen.append(m), callbacks=[Snapshot()])
    assert math.isfinite(seen[-1]["train_loss"]) and math.isfinite(res.metrics["loss"])
    trained = set(trainable_state_dict(model))
    after = model.state_dict()
    # The frozen base is exactly the original again (kept in bf16 only during the run) ...
    for k, v in before.items():
        if k in after and k not in trained:
            assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    # ... and every adapter kind and every shortcut trained (fp32 master weights).
    for name, a in adapters(model).items():
        assert all(p.dtype == torch.float32 for p in a.trainable_parameters())
        own = [k for k in trained if k.startswith(name + ".")]
        assert own and any(not torch.equal(after[k], start[k]) for k in own), f"{a.kind} {name} did not train"
    moved = {k.split(".")[2] for k in trained if k.startswith("more_shortcuts")
             and not torch.equal(after[k], start[k])}
    assert moved == {k.replace(".", "_") for k in plan.shortcuts}
    assert not torch.equal(after["classifier.weight"], start["classifier.weight"])
    assert {a.kind for a in adapters(model).values()} == {"lora", "more", "circulant", "toeplitz",
                                                          "kronecker", "ldr"}
    assert shortcut_set(model) is not None


def test_frozen_base_in_bf16_only_casts_frozen_weights(tiny_model):
    from nas import Plan, apply_plan

    model = tiny_model("bert")
    apply_plan(model, Plan(model={}, modules={"bert.encoder.layer.0.attention.self.query": {"type": "lora"}}))
    originals = frozen_base_to(model, torch.bfloat16)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32, n
    assert any(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all("LayerNorm" not in n for n in originals)  # norms stay fp32
    restore_frozen_base(model, originals)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("kw, message", [
    ({"device": "tpu"}, "device 'tpu'"),
    ({"device": "cuda"} if not torch.cuda.is_available() else {"device": "cuda:99"}, "cuda"),
    ({"fp16": True, "device": "cpu"}, "fp16"),
    ({"fp16": True, "bf16": True}, "one of bf16 and fp16"),
])
def test_bad_device_or_precision_is_a_user_error_before_loading(tmp_path, kw, message):
    from nas import Plan

    plan = Plan(model={"name_or_path": str(tmp_path / "no-such-model")}, modules={})
    cfg_kw = {"train_file": str(tmp_path / "missing.tsv"), "output_dir": str(tmp_path / "run"), **kw}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")  # an earlier run's output: must survive
    from nas.train import TrainConfig

    with pytest.raises(UserError, match=message):
        train(plan, TrainConfig(**cfg_kw))
    assert (tmp_path / "run" / "results.json").is_file()


def test_cli_bad_device_exits_2(tiny_bert, layout, sentiment, tmp_path, capsys):
    from nas.cli.train import main
    from tests.factories import lora_plan

    plan = lora_plan(tiny_bert, layout)
    plan.save(tmp_path / "plan.json")
    rc = main(["--plan", str(tmp_path / "plan.json"), "--device", "cuda:7" if torch.cuda.is_available()
               else "cuda", "--train_file", str(sentiment[0])])
    assert rc == 2 and "error:" in capsys.readouterr().err


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_warns_with_the_fix(monkeypatch, caplog, native):
    from nas.train.precision import check_precision

    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: native, raising=False)
    with caplog.at_level("WARNING", logger="nas"):
        check_precision(torch.device("cpu"), bf16=True, fp16=False)
        check_precision(torch.device("cpu"), bf16=False, fp16=False)
    warned = [r.getMessage() for r in caplog.records if "native bfloat16" in r.getMessage()]
    assert len(warned) == (0 if native else 1)
    assert native or "drop --bf16" in warned[0]
