"""The search's lr stage on a tiny BERT: the plan's rate comes from a range test on it and short
confirmation trials, the plan records that evidence, a diverging rate is never returned, the cost
table lists the stage (planned and spent), and a resumed search reuses the finished stage; and its
rules (which rates, how many, which one wins) on their own."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import optuna
import pytest

from nas import Plan
from nas.cli.search import build_parser
from nas.search import run_search
from nas.search.cost import LR_RANGE_MAX_STEPS, size_stages
from nas.search.lr_stage import LEFT, PLOT_FILE, STAGE_FILE, choose, confirm_rates, confirm_size
from tests.factories import search_config, task_folder


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One search whose range test is pushed to 1000 (it diverges), with the budget for the stage:
    960 rows x 10 epochs is 1,200 steps of a full run."""
    d = task_folder(tmp_path_factory.mktemp("lrs"), 960, 32)
    out = tmp_path_factory.mktemp("lrs_out") / "out"
    cfg = search_config(d, out, trial_eval_samples=48, epochs=10, lr_test="range", lr_test_range=(1e-4, 1e3))
    return cfg, run_search(cfg), out


def test_the_plan_records_how_its_rate_was_chosen(searched):
    cfg, res, out = searched
    plan = Plan.load(out / "plan.json")
    ev = plan.provenance["lr_evidence"]
    assert plan.training["lr"] == ev["chosen_lr"] == res.plan.training["lr"]
    rt = ev["range_test"]
    assert rt["steps"] <= LR_RANGE_MAX_STEPS and 2 <= len(rt["lrs"]) <= 30 and len(rt["lrs"]) == len(rt["smoothed"])
    assert rt["lo"] == 1e-4 and rt["hi"] == 1e3 and rt["method"]
    assert ev["trials"], "no confirmation trial ran"
    for t in ev["trials"]:
        assert set(t) >= {"lr", "steps", "heldout_loss", "start", "progress", "verdict"} and t["steps"] >= 8
    if any(t["verdict"] == LEFT for t in ev["trials"]):
        assert ev["rule"].startswith("the lowest held-out loss")
        assert ev["chosen_lr"] in [t["lr"] for t in ev["trials"] if t["verdict"] == LEFT]
    else:
        assert ev["rule"].startswith("lr from the range test only")
        assert ev["chosen_lr"] == min(rt["suggestion"], rt["lr_at_min"] / 10)
    text = (out / "report.md").read_text()
    assert "## Learning rate (lr stage)" in text and f"**lr {ev['chosen_lr']:.2g}**" in text
    assert (out / PLOT_FILE).read_bytes()[:4] == b"\x89PNG" and (out / STAGE_FILE).is_file()


def test_a_diverging_rate_is_never_returned(searched):
    _, res, _ = searched
    ev = res.plan.provenance["lr_evidence"]
    div = ev["range_test"]["diverged_at"]
    assert div is not None and div <= 1e3  # AdamW at lr 100 blows a LoRA up
    assert ev["chosen_lr"] < div and all(t["lr"] <= min(div / 2, ev["range_test"]["lr_at_min"]) for t in ev["trials"])
    assert all(t["verdict"] != LEFT for t in ev["trials"] if not math.isfinite(t["heldout_loss"]))


def test_the_cost_table_lists_the_lr_stage(searched):
    _, res, out = searched
    cost = res.plan.provenance["search_cost"]
    lr = cost["stages"]["lr"]
    assert lr["planned"] > 0 and lr["spent"] > 0 and lr["spent_cpu"] > 0
    planned = cost["stage_sizes"]["planned_by_stage"]
    assert sum(planned.values()) == pytest.approx(cost["planned_multiple"], abs=1e-3)
    assert cost["planned_multiple"] <= 0.5 + 1e-9
    row = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("| lr |"))
    assert len(row.split("|")) == 7 and "-" not in row.split("|")[4]  # planned and spent in full runs


def test_resume_after_a_finished_search_reuses_every_stage(searched):
    cfg, res, out = searched
    def trials():
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
        names = optuna.get_all_study_names(storage)
        return {n: [(t.number, t.state, t.value) for t in optuna.load_study(study_name=n, storage=storage).trials]
                for n in names}

    before, stage = trials(), (out / STAGE_FILE).stat().st_mtime_ns
    again = run_search(dataclasses.replace(cfg, resume=True))
    assert trials() == before  # no trial ran again
    assert (out / STAGE_FILE).stat().st_mtime_ns == stage  # nor the lr stage
    assert again.plan.training["lr"] == res.plan.training["lr"] and again.plan.modules == res.plan.modules
    assert again.plan.provenance["lr_evidence"] == res.plan.provenance["lr_evidence"]


def test_which_rates_how_many_and_which_wins():
    assert confirm_rates(1e-3, 3, 1e-5, 1.0) == [5e-4, 1e-3, 2e-3]
    assert confirm_rates(1e-3, 2, 1e-5, 1.0) == [5e-4, 1e-3]  # the lower side first
    assert confirm_rates(1e-3, 3, 1e-5, 1.5e-3) == [5e-4, 1e-3, 1.5e-3]  # clipped below the edge
    assert confirm_rates(1e-5, 3, 1e-5, 1.0) == [1e-5, 2e-5]  # clipped at lo, no repeats
    assert confirm_size(0, 16) == (0, 0) and confirm_size(27, 16)[0] == 0  # 8 steps + 12 set-up + 8 evaluation
    assert confirm_size(28, 16) == (1, 8) and confirm_size(1000, 16) == (3, 313)
    import numpy as np

    rng = np.random.default_rng(0)
    rows = rng.exponential(0.7, 100)

    def t(lr, d, verdict=LEFT):
        r = rows + d + rng.normal(0, 0.05, 100)
        return {"lr": lr, "heldout_loss": float(r.mean()), "rows": r.tolist(), "verdict": verdict}
    near = [t(1e-3, 0.0), t(5e-4, 0.002), t(2e-3, 0.05)]
    assert choose(near, 2.0)["lr"] == 5e-4  # within noise of the best: the lower rate
    far = [t(1e-3, 0.0), t(5e-4, 0.06)]
    assert choose(far, 2.0)["lr"] == 1e-3  # worse beyond noise: not kept for being lower
    assert choose([t(1e-3, -1.0, "diverged"), t(5e-4, 0.0, "stalled")], 2.0) is None


def test_stage_sizes_with_the_lr_stage():
    kw = dict(batch_size=16, epochs=3, cost_budget=0.5, supernet_share=0.2, scoring_share=0.05, eval_rows=128,
              n_finalists=8, rungs=2, eta=2, proxy_batches=1, min_scored=5)
    for n_train in (2000, 8000, 67000):
        on, off = size_stages(n_train=n_train, lr_stage=True, **kw), size_stages(n_train=n_train, **kw)
        assert on.planned() <= 0.5 + 1e-9 and off.lr_range_steps == 0 and off.planned_by_stage()["lr"] == 0
        assert 10 <= on.lr_range_steps <= LR_RANGE_MAX_STEPS and on.finalists >= 1  # the first finalist keeps its room
        assert on.planned_by_stage()["lr"] <= 0.15 + 1e-9
    big = size_stages(n_train=67000, lr_stage=True, **kw)
    assert big.lr_range_steps == LR_RANGE_MAX_STEPS and confirm_size(big.lr_confirm_units, 8)[0] == 3
    tiny = size_stages(n_train=200, lr_stage=True, **kw)  # 39 steps a run: no room for a range test
    assert tiny.lr_range_steps == 0 and tiny.lr_confirm_units == 0


def test_the_flags():
    args = build_parser().parse_args(["--lr-test", "off", "--lr-test-range", "1e-6,1"])
    assert args.lr_test == "off" and args.lr_test_range == (1e-6, 1.0)
    assert build_parser().parse_args([]).lr_test == "off"  # its rule lost to the grid's first (search_lr.md)
    from nas.errors import UserError
    from nas.search.weight_sharing import check_config

    with pytest.raises(UserError, match="--lr-test-range"):
        check_config(search_config(Path("."), "x", lr_test_range=(1.0, 1e-3)))
    json.dumps(dataclasses.asdict(search_config(Path("."), "x")))  # the kill tests pass a config as JSON


def test_freed_finalist_steps_go_to_the_survivors_then_to_the_lr_stage(monkeypatch, tmp_path):
    """A cut finalist's later steps go to the survivors of the next rung; a lone survivor needs no
    more comparison, so what is left goes back (to the lr stage)."""
    from types import SimpleNamespace

    import numpy as np
    from optuna.storages import InMemoryStorage

    from nas.search import finalists

    rng = np.random.default_rng(0)
    base = rng.exponential(0.7, 64)
    gaps = {"a": 0.0, "b": 0.001, "c": 0.3, "d": 0.4}  # c and d worse beyond noise
    seen = []

    def train_one(search, shared, study, f, rung, steps, data, rows):
        seen.append((f.cid, rung, steps))
        trial = study.ask()
        for k, v in {"cid": f.cid, "rung": rung, "steps": steps,
                     "rows": (base + gaps[f.cid] + rng.normal(0, 0.01, 64)).tolist()}.items():
            trial.set_user_attr(k, v)
        study.tell(trial, float(np.mean(base)) + gaps[f.cid])
        return study.get_trials(deepcopy=False)[-1]

    monkeypatch.setattr(finalists, "_train_one", train_one)
    monkeypatch.setattr(finalists, "train_part", lambda search: None)
    cfg = search_config(tmp_path, tmp_path / "out")
    fins = [finalists.Finalist(c, c, None, 1e-3, 0.7) for c in gaps]
    _, ranked, unspent = finalists.run_finalists(SimpleNamespace(cfg=cfg), None, fins, InMemoryStorage(), "s",
                                                 None, 120)
    assert [s for c, r, s in seen if r == 0] == [10] * 4  # 120 / (4 finalists x (1 + eta) rungs' shares)
    assert sorted((c, s) for c, r, s in seen if r == 1) == [("a", 40), ("b", 40)]  # 2x their 20: c's and d's
    assert unspent == 0 and [t.user_attrs["cid"] for t in ranked] == ["a", "b"]
    seen.clear()
    gaps.update(b=0.3)  # of two, only a survives rung 0: nothing to compare it with any more
    search = SimpleNamespace(cfg=cfg, finalists_stopped=None)
    _, ranked, unspent = finalists.run_finalists(search, None, fins[:2], InMemoryStorage(), "s", None, 120)
    assert seen == [("a", 0, 20), ("b", 0, 20)] and unspent == 80 and ranked[0].user_attrs["cid"] == "a"
    assert search.finalists_stopped[0] == 0 and "one finalist was left (1 worse" in search.finalists_stopped[1]


def test_an_overpriced_stage_leaves_its_steps_to_the_finalists_and_the_lr_stage():
    """Sized again from what the stages before them cost: cheaper than priced frees steps for the
    finalists and the lr stage; spending all that was priced changes nothing."""
    from nas.search.cost import FORWARD_COST, SUPERNET_STEP_COST, resize

    kw = dict(batch_size=16, epochs=3, cost_budget=0.5, supernet_share=0.2, scoring_share=0.05, eval_rows=128,
              n_finalists=8, rungs=2, eta=2, proxy_batches=1, min_scored=5, n_candidates=400)
    planned = size_stages(n_train=3668, lr_stage=True, **kw)
    priced = planned.proxy_cost + planned.supernet_steps * SUPERNET_STEP_COST \
        + planned.scored_plans * planned.scoring_batches * FORWARD_COST
    same = resize(planned, priced, 0.5, 8, 2, True)
    assert dataclasses.replace(same, spent_before_finalists=None) == planned
    cheap = resize(planned, priced - 100, 0.5, 8, 2, True)
    freed = cheap.finalist_step_budget + cheap.planned_by_stage()["lr"] * cheap.full_run_steps \
        - planned.finalist_step_budget - planned.planned_by_stage()["lr"] * planned.full_run_steps
    assert cheap.spent_before_finalists == round(priced - 100, 2)
    assert 100 - cheap.finalists * 2 * (planned.finalist_eval_batches * FORWARD_COST + 12) <= freed <= 100 + 1
    later = sum(v for k, v in cheap.planned_by_stage().items() if k in ("finalists", "lr"))
    assert later <= 0.5 - (priced - 100) / cheap.full_run_steps + 1e-9  # spent, not added


def test_the_finalists_stop_when_their_leader_has_not_left_the_start(monkeypatch, tmp_path):
    """With somewhere better to spend them (stop_above given), the later rungs' steps come back
    unspent when the first rung's leader is not below the line; below it, the rungs go on."""
    from types import SimpleNamespace

    from optuna.storages import InMemoryStorage

    from nas.search import finalists

    seen = []

    def train_one(search, shared, study, f, rung, steps, data, rows):
        seen.append((f.cid, rung, steps))
        trial = study.ask()
        for k, v in {"cid": f.cid, "rung": rung, "steps": steps, "rows": [0.6 + rung * 0.01] * 8}.items():
            trial.set_user_attr(k, v)
        study.tell(trial, 0.6)
        return study.get_trials(deepcopy=False)[-1]

    monkeypatch.setattr(finalists, "_train_one", train_one)
    monkeypatch.setattr(finalists, "train_part", lambda search: None)
    fins = [finalists.Finalist(c, c, None, 1e-3, 0.7) for c in "ab"]
    search = SimpleNamespace(cfg=search_config(tmp_path, tmp_path / "out"), finalists_stopped=None)
    _, ranked, unspent = finalists.run_finalists(search, None, fins, InMemoryStorage(), "s", None, 120, 0.6)
    assert [r for _, r, _ in seen] == [0, 0] and unspent == 80 and search.finalists_stopped[0] == 0
    assert "leader's held-out loss (0.6000) had not left the start" in search.finalists_stopped[1]
    seen.clear()
    _, _, unspent = finalists.run_finalists(search, None, fins, InMemoryStorage(), "s", None, 120, 0.61)
    assert [r for _, r, _ in seen] == [0, 0, 1, 1] and unspent == 0


def test_a_resumed_search_keeps_the_finalists_measured_sizes(searched):
    """The finalists are sized once from the measured cost and that size is kept (stage_sizes.json):
    a resume, whose earlier stages reload in seconds, must not size them again (it would retrain
    every finished finalist at another length)."""
    from nas.search.weight_sharing import SIZES_FILE

    cfg, res, out = searched
    saved = json.loads((out / SIZES_FILE).read_text())["sizes"]
    assert saved["spent_before_finalists"] is not None
    assert res.cost["stage_sizes"]["finalist_step_budget"] == saved["finalist_step_budget"]


def test_the_report_says_why_the_finalists_stopped_and_where_their_steps_went():
    from nas.search.weight_sharing import stopped_early

    why = (1, "one finalist was left (2 worse beyond noise), so a longer rung would compare nothing")
    assert stopped_early(None, 80, True) == [] and stopped_early(why, 0, True) == []
    to_lr, = stopped_early(why, 80, True)
    assert "after rung 1: one finalist was left" in to_lr and "80 steps went to the lr stage" in to_lr
    kept, = stopped_early(why, 80, False)
    assert "80 steps were not spent" in kept and "--lr-test range" in kept
