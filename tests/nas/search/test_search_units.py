"""Search-engine pieces that need no training: durations, re-weighting, Pareto front, budgets."""
import math

import pytest

from nas.cli.search import parse_duration
from nas.errors import UserError
from nas.search.report import pareto_front
from nas.search import reweight, trial_rank
from search_spaces import Candidate


@pytest.mark.parametrize("text,seconds", [("900", 900), ("900s", 900), ("15m", 900), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10d", "-5m"])
def test_parse_duration_rejects(text):
    with pytest.raises(UserError, match="time-budget"):
        parse_duration(text)


def _cands():
    return [
        Candidate("l0.q", 0, "q", (("rank", 8), ("type", "lora")), 100),
        Candidate("l1.q", 1, "q", (("nblocks", 4), ("rank", 4), ("type", "more")), 100),
        Candidate("1.s_res1", 1, "s_res1", (("rank", 8), ("type", "shortcut")), 50),
    ]


def test_reweight_zero_params_is_the_proxy():
    cands = _cands()
    scores = {c.key: float(i + 1) for i, c in enumerate(cands)}
    assert reweight(cands, scores, {}, num_layers=2, seed=0) == scores


def test_reweight_kind_role_depth_and_jitter():
    cands = _cands()
    scores = {c.key: 1.0 for c in cands}
    w = reweight(cands, scores, {"w_kind_more": 1.0}, 2, 0)
    assert w[cands[1].key] == pytest.approx(math.e) and w[cands[0].key] == 1.0
    w = reweight(cands, scores, {"w_role_q": -1.0}, 2, 0)
    assert w[cands[0].key] == pytest.approx(math.exp(-1)) and w[cands[2].key] == 1.0  # shortcuts have no role weight
    w = reweight(cands, scores, {"depth_bias": 0.5}, 2, 0)
    assert w[cands[0].key] < 1.0 < w[cands[1].key]
    a = reweight(cands, scores, {"jitter": 0.5}, 2, seed=1)
    assert a == reweight(cands, scores, {"jitter": 0.5}, 2, seed=1)
    assert a != reweight(cands, scores, {"jitter": 0.5}, 2, seed=2)


def test_pareto_front():
    # values are held-out losses: fewer parameters and a lower loss dominate
    pts = [{"params": 10, "value": 0.5}, {"params": 20, "value": 0.4}, {"params": 30, "value": 0.7},
           {"params": 5, "value": 0.55}, {"params": 30, "value": 0.3}]
    front = pareto_front(pts)
    assert [(p["params"], p["value"]) for p in front] == [(5, 0.55), (10, 0.5), (20, 0.4), (30, 0.3)]


def test_best_trial_is_the_lowest_held_out_loss_metric_breaks_ties():
    import optuna

    def trial(value, **attrs):
        return optuna.trial.create_trial(value=value, user_attrs={"main_metric": "accuracy", **attrs})

    # Same accuracy, lower loss: the lower loss wins; a higher accuracy with a higher loss loses.
    higher_loss = trial(0.657, metrics={"accuracy": 0.6375, "loss": 0.657})
    lower_loss = trial(0.652, metrics={"accuracy": 0.6375, "loss": 0.652})
    better_acc = trial(0.9, metrics={"accuracy": 0.70, "loss": 0.9})
    assert max([higher_loss, lower_loss, better_acc], key=trial_rank) is lower_loss
    # Equal loss: the higher held-out metric; a trial without metrics comes last.
    tie_a = trial(0.652, metrics={"accuracy": 0.66, "loss": 0.652})
    bare = trial(0.652)
    assert max([lower_loss, bare, tie_a], key=trial_rank) is tie_a


def test_super_network_batches_group_rows_by_length_as_the_trials_do():
    """Random batches pad every row to the batch's longest (a super-network step on SST-2 cost
    2.9 plan steps, most of it padding); grouped, a pass is still every row once, full batches only."""
    import itertools
    from types import SimpleNamespace

    import datasets
    import numpy as np
    import torch

    from nas.search.supernet import _batches

    rng = np.random.default_rng(0)
    ds = datasets.Dataset.from_dict({"input_ids": [[1] * int(n) for n in rng.integers(2, 120, 403)],
                                     "labels": list(range(403))})  # the row's id, to count rows

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        return {"input_ids": torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows]),
                "labels": torch.tensor([r["labels"] for r in rows])}

    data = SimpleNamespace(train=ds, collator=lambda: collate)
    padded = lambda it: sum(b["input_ids"].numel() for b in itertools.islice(it, 25))  # noqa: E731
    grouped, plain = _batches(data, 16, 0, steps=30, grouped=True), _batches(data, 16, 0)
    assert padded(grouped) < 0.7 * padded(plain)
    pass_ = list(itertools.islice(_batches(data, 16, 0, steps=30, grouped=True), 25))  # 403 // 16 full batches
    rows = [int(i) for b in pass_ for i in b["labels"]]
    assert len(set(rows)) == len(rows) == 400  # one pass: no row twice, 3 left over
