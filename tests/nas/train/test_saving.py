"""save_pretrained / load_adapted the PEFT way; checkpoints and merged models that load without us."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from nas import Plan, apply_plan, load_adapted, save_adapted, trainable_state_dict
from nas.models import load_model
from nas.train import train
from tests.conftest import randomize_
from tests.factories import cfg_for, lora_plan, mixed_plan

torch.set_num_threads(1)


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 30, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_save_pretrained_then_load_gives_identical_logits(tiny_bert, layout, tmp_path):
    plan = mixed_plan(tiny_bert, layout)
    torch.manual_seed(0)
    model = apply_plan(load_model(str(tiny_bert), num_labels=2), plan)
    randomize_([p for p in model.parameters() if p.requires_grad], std=0.05)
    next(iter(model.more_shortcuts.paths.values())).enabled = False  # on/off state round-trips
    model.eval()
    with torch.no_grad():
        want = model(**_batch()).logits
    model.save_pretrained(tmp_path / "ad")
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["adapters.safetensors", "plan.json"]
    saved = load_file(str(tmp_path / "ad" / "adapters.safetensors"))
    assert saved.keys() == trainable_state_dict(model).keys()  # no frozen base tensor
    assert sum(v.numel() for v in saved.values()) < 0.2 * sum(p.numel() for p in model.parameters())
    # one call, on top of a base model we load ...
    torch.manual_seed(123)  # another head init: the saved head must replace it
    base = load_model(str(tiny_bert), num_labels=2)
    again = load_adapted(tmp_path / "ad", base)
    with torch.no_grad():
        assert torch.equal(again(**_batch()).logits, want)
    # ... or on the plan's own base model
    with torch.no_grad():
        assert torch.equal(load_adapted(tmp_path / "ad")(**_batch()).logits, want)
    assert not all(sc.enabled for _, sc in again.more_shortcuts.items())
    save_adapted(again, tmp_path / "ad2")  # the function form writes the same
    b = load_file(str(tmp_path / "ad2" / "adapters.safetensors"))
    assert all(torch.equal(b[k], saved[k]) for k in saved)


def test_trainer_checkpoint_holds_only_trained_tensors(tiny_bert, layout, sentiment, tmp_path, monkeypatch):
    from nas.train import outdir

    synced = []  # each checkpoint is flushed to disk in its temp folder, whole, before it is published
    monkeypatch.setattr(outdir, "fsync_tree", lambda root: synced.append(
        (root.parent.name, sorted(p.name for p in root.iterdir()))))
    plan = mixed_plan(tiny_bert, layout)
    out = tmp_path / "run"
    model = load_model(str(tiny_bert), num_labels=2)
    train(plan, cfg_for(sentiment, output_dir=str(out), max_steps=4, eval_every=2, save_total_limit=1),
          model=model)
    ckpts = sorted(out.glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-4"]  # rotation kept the last one
    assert [d for d, _ in synced] == [".tmp-checkpoint-2", ".tmp-checkpoint-4"]
    assert synced[-1][1] == sorted(p.name for p in ckpts[0].iterdir())
    weights = list(ckpts[0].glob("*.safetensors"))
    assert [w.name for w in weights] == ["adapters.safetensors"]  # no model.safetensors
    assert not list(ckpts[0].glob("pytorch_model*")) and not list(ckpts[0].glob("model*"))
    assert load_file(str(weights[0])).keys() == trainable_state_dict(model).keys()
    assert (ckpts[0] / "optimizer.pt").is_file() and (ckpts[0] / "trainer_state.json").is_file()
    # the run folder itself loads the same way
    with torch.no_grad():
        model.eval()
        assert torch.equal(load_adapted(out)(**_batch()).logits, model(**_batch()).logits)


def test_merged_model_loads_without_this_package(tiny_bert, layout, sentiment, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from tests.factories import POSITIVE, write_sentiment

    named = lambda s: "positive" if any(w in POSITIVE for w in s.split()) else "negative"  # noqa: E731
    files = (write_sentiment(tmp_path / "train.tsv", 64, seed=1, label=named),
             write_sentiment(tmp_path / "dev.tsv", 16, seed=2, label=named))
    out = tmp_path / "run"
    res = train(lora_plan(tiny_bert, layout), cfg_for(files, output_dir=str(out), merge=True, epochs=1))
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged")
    assert set(merged.config.id2label.values()) == {"positive", "negative"}
    assert merged.config.label2id == {v: k for k, v in merged.config.id2label.items()}
    card = (out / "merged" / "README.md").read_text()
    assert str(tiny_bert) in card and f"{res.score:.4f}" in card and "2 x lora" not in card
    assert "4 x lora" in card and "What still needs more-nas" not in card
    peft_cfg = json.loads((out / "peft_adapter" / "adapter_config.json").read_text())
    assert peft_cfg["base_model_name_or_path"] == str(tiny_bert)


def test_model_card_says_what_shortcuts_still_need(tiny_bert, layout, sentiment, tmp_path):
    plan = lora_plan(tiny_bert, layout)
    plan.shortcuts = {"1.s_in": {"rank": 2}}
    out = tmp_path / "run"
    train(plan, cfg_for(sentiment, output_dir=str(out), merge=True, max_steps=2))
    card = (out / "merged" / "README.md").read_text()
    assert "What still needs more-nas" in card and "1.s_in" in card and "residual_plan.json" in card


def test_peft_export_names_the_real_base_folder(tiny_model, tmp_path):
    from nas.export import export_peft
    from nas.models import packaged_minilm_path

    model = tiny_model("bert")
    plan = Plan(model={"name_or_path": "minilm"},
                modules={"bert.encoder.layer.0.attention.self.query": {"type": "lora", "rank": 2}})
    apply_plan(model, plan)
    export_peft(model, plan, tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(packaged_minilm_path())
