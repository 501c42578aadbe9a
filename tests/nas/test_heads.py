"""The task head's pooling (nas.heads): mean pooling is the masked mean of the token states on
every encoder family, padding never moves it, a copied model pools on its own, the pooling a
folder declares is read, and a plan's pooling travels from search to training to reload."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from nas.heads import declared_pooling, pooling_of, resolve_pooling, set_pooling
from tests.conftest import ENCODERS, make_tiny_model


def _ids(rows: list[list[int]], pad: int = 0):
    n = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    return ids, mask


@pytest.mark.parametrize("family", ENCODERS)
def test_mean_pooling_is_the_masked_mean_and_padding_does_not_move_it(family):
    model = set_pooling(make_tiny_model(family), "mean")
    rows = [[5, 9, 11, 7], [5, 12, 7]]
    ids, mask = _ids(rows)
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=torch.tensor([rows[1]]), attention_mask=torch.ones(1, 3, dtype=torch.long)).logits
        hidden = model.base_model(input_ids=torch.tensor([rows[1]])).last_hidden_state
        cls = make_tiny_model(family)(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(both[1], alone[0], atol=1e-5)  # the padded row pools as the row alone
    assert not torch.allclose(both, cls, atol=1e-4)  # and the head no longer reads the first token
    if family == "bert":  # BERT's head: dropout, then the classifier on the pooled vector
        want = model.classifier(hidden.mean(1))
        assert torch.allclose(alone, want, atol=1e-5)


def test_a_copy_pools_on_its_own_and_a_pooling_is_set_once():
    model = set_pooling(make_tiny_model("bert"), "mean")
    twin = copy.deepcopy(model)
    ids, mask = _ids([[5, 9, 11, 7], [5, 12, 7]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits,
                           twin(input_ids=ids, attention_mask=mask).logits)
    assert pooling_of(twin) == "mean" and set_pooling(twin, "mean") is twin
    with pytest.raises(ValueError, match="already 'mean'"):
        set_pooling(twin, "cls")
    with pytest.raises(ValueError, match="pooling 'max'"):
        set_pooling(make_tiny_model("bert"), "max")


def test_the_pooling_a_folder_declares(tmp_path):
    assert declared_pooling(tmp_path) is None and resolve_pooling("auto", tmp_path) == "cls"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert declared_pooling(tmp_path) == "mean" and resolve_pooling("auto", tmp_path) == "mean"
    assert resolve_pooling("cls", tmp_path) == "cls"


def test_a_plan_with_mean_pooling_trains_and_reloads_with_it(tiny_bert, sentiment, tmp_path):
    """The plan says 'mean': more-train's model reads the mean, the saved run reloads reading it
    (identical logits), and the PEFT export says how to load it."""
    from nas import load_adapted
    from nas.train import train
    from tests.factories import bert_layout, cfg_for, lora_plan

    plan = lora_plan(tiny_bert, bert_layout(tiny_bert))
    plan.model["pooling"] = "mean"
    res = train(plan, cfg_for(sentiment, max_steps=4, output_dir=str(tmp_path / "run")))
    model = load_adapted(tmp_path / "run")
    assert pooling_of(model) == "mean"
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["model"]["pooling"] == "mean"
    assert "set_pooling" in (tmp_path / "run" / "peft_adapter" / "README.md").read_text()
    assert res.steps == 4


def test_a_plan_names_a_known_pooling(tiny_bert):
    from nas import Plan
    from nas.errors import PlanError
    from tests.factories import bert_layout, lora_plan

    d = lora_plan(tiny_bert, bert_layout(tiny_bert)).to_dict()
    d["model"]["pooling"] = "max"
    with pytest.raises(PlanError, match="model.pooling"):
        Plan.from_dict(d)
    del d["model"]["pooling"]
    assert Plan.from_dict(d).pooling == "cls"  # plans written before the field: as they trained
