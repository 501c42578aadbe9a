"""The weight-sharing search on a tiny BERT: every stage's plans fit the budget, the same seed
gives the same plan, a killed search resumes without losing a finished trial or retraining the
super-network, the cost is stated in full runs (<= 0.5 planned with defaults), and a pruner or a
halving rung never cuts on a difference below noise."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas import Plan, discover
from nas.baselines import baselines_at, preferred, uniform_lora
from nas.models import load_model
from nas.search import SearchConfig, run_search
from nas.search.config import PLAN_ATTR
from nas.search.cost import size_stages
from nas.search.ranking import worse_beyond_noise
from tests.factories import minilm_layout, search_config, task_folder

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = task_folder(tmp_path_factory.mktemp("ws"), 600, 32)
    return d


def config(d: Path, out: Path, **kw) -> SearchConfig:
    return search_config(d, out, **{"trial_eval_samples": 48, **kw})


def studies(out: Path) -> dict[str, list]:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).trials
            for s in optuna.get_all_study_summaries(storage)}


@pytest.fixture(scope="module")
def default_run(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("ws_default") / "out"
    return run_search(config(setup, out)), out


def test_every_stage_plan_fits_the_budget(setup, default_run):
    res, out = default_run
    layout = discover(load_model(str(setup / "model"), num_labels=2))
    plan = Plan.load(out / "plan.json")
    plan.validate(layout)
    assert 0 < plan.count_params(layout) <= 3000
    trials = studies(out)
    assert set(trials) == {"more-search", "more-search.scoring", "more-search.stages"}
    scored = [t for t in trials["more-search.scoring"] if t.state == TrialState.COMPLETE]
    assert {t.user_attrs["origin"] for t in scored} >= {"importance plan", "baseline qv", "baseline widest",
                                                        "baseline mlp"}
    # On data this small the zero-cost proxy would cost more than its share: it is skipped.
    assert "proxy plan" not in {t.user_attrs["origin"] for t in scored}
    for t in scored + trials["more-search"]:
        p = Plan.from_dict(t.user_attrs["plan"])
        assert p.count_params(layout) == t.user_attrs["trainable_params"] <= 3000
    assert trials["more-search"], "no finalist was trained"
    assert plan.training["lr"] in SearchConfig().lr_grid  # the finalists' lr grid chose it
    # the full run batches rows as the trials did, unless told otherwise
    from nas.train import TrainConfig
    assert plan.training["group_by_length"] is True and TrainConfig.from_plan(plan).group_by_length is True
    assert TrainConfig.from_plan(plan, group_by_length=False).group_by_length is False
    assert plan.provenance["strategy"] == "supernet"
    assert (out / "supernet.safetensors").stat().st_size > 0


def test_super_network_sub_plans_fit_the_budget(setup):
    from search_spaces import load_space
    from search_spaces.supernet import PlanSampler, Selection
    from nas.search.supernet import FixedCycle

    layout = discover(load_model(str(setup / "model"), num_labels=2))
    cands = load_space("default").candidates(layout)
    base = PlanSampler(cands, 3000, seed=0)
    qv = Selection.of(uniform_lora(layout, 3000, "qv").candidates(layout))
    cycle = FixedCycle(base, [qv])
    seen = []
    for _ in range(40):
        sel = cycle.sample()
        seen.append(sel is qv)
        if sel is not qv:
            assert 0 < base.params(sel) <= 3000
    assert any(seen) and not all(seen)
    assert uniform_lora(layout, 3000, "qv").params <= 3000


def test_cost_is_reported_and_within_half_a_run_with_defaults(default_run):
    res, out = default_run
    cost = res.plan.provenance["search_cost"]
    assert cost["planned_multiple"] <= 0.5
    assert cost["full_run_steps"] == 3 * 75  # 3 epochs of ceil(600 train rows / batch 8)
    assert cost["multiple"] > 0 and cost["plan_step_time_s"] > 0
    assert cost["multiple_cpu"] > 0 and cost["plan_step_cpu_s"] > 0
    text = (out / "report.md").read_text()
    assert "one full training run of the plan" in text and "estimate" in text
    assert "uniform LoRA" in text or "baseline qv" in text


def test_same_seed_same_plan(setup, default_run, tmp_path):
    res, _ = default_run
    again = run_search(config(setup, tmp_path / "again"))
    assert again.plan.modules == res.plan.modules and again.plan.shortcuts == res.plan.shortcuts
    assert again.plan.training["lr"] == res.plan.training["lr"]


_KILLER = """
import os, sys, json
sys.path.insert(0, {root!r})
import torch; torch.set_num_threads(1)
import nas.train
from nas.search import Search, SearchConfig
cfg = SearchConfig(**json.loads({cfg!r}))
calls, original = {{"n": 0}}, nas.train.prepare
def prepare(*a, **k):
    calls["n"] += 1
    if calls["n"] == 2:
        os._exit(9)  # killed inside the second finalist trial: it is left RUNNING
    return original(*a, **k)
nas.train.prepare = prepare
Search(cfg).run()
"""


def test_resume_keeps_finished_trials_and_the_super_network(setup, tmp_path):
    out = tmp_path / "out"
    cfg = config(setup, out, cost_budget=1.2, proxy="fisher")  # room for two finalists and the lr stage
    code = _KILLER.format(root=str(ROOT), cfg=json.dumps(dataclasses.asdict(cfg)))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 9, p.stdout + p.stderr
    before = studies(out)
    weights = out / "supernet.safetensors"
    stamp = weights.stat().st_mtime_ns
    scored = {t.number: t.value for t in before["more-search.scoring"] if t.state == TrialState.COMPLETE}
    fin = {t.number: t.value for t in before["more-search"] if t.state == TrialState.COMPLETE}
    assert scored and len(fin) == 1
    assert "proxy plan" in {t.user_attrs["origin"] for t in before["more-search.scoring"]}  # --proxy given
    assert [t.state for t in before["more-search"]].count(TrialState.RUNNING) == 1

    res = run_search(dataclasses.replace(cfg, resume=True))
    after = studies(out)
    assert weights.stat().st_mtime_ns == stamp  # reused, not retrained
    assert "reused from supernet.safetensors" in (out / "report.md").read_text()
    for name, done in (("more-search.scoring", scored), ("more-search", fin)):
        kept = {t.number: t.value for t in after[name] if t.number in done}
        assert kept == done  # nothing finished was lost
    # The finished finalist was not trained again: one complete trial per (finalist, rung).
    keys = [(t.user_attrs["cid"], t.user_attrs["rung"]) for t in after["more-search"]
            if t.state == TrialState.COMPLETE]
    assert len(keys) == len(set(keys))
    assert [t.state for t in after["more-search"]].count(TrialState.FAIL) == 1  # the killed one
    # Same plan as a search that was never interrupted.
    clean = run_search(dataclasses.replace(cfg, output_dir=str(tmp_path / "clean")))
    assert res.plan.modules == clean.plan.modules and res.plan.training["lr"] == clean.plan.training["lr"]


def test_trials_strategy_pruner_never_cuts_below_noise(setup, tmp_path):
    kw = dict(strategy="trials", n_trials=6, trial_steps=12, n_evals=3, pruner="halving")
    cut = run_search(config(setup, tmp_path / "cut", noise_z=0.0, **kw))
    guarded = run_search(config(setup, tmp_path / "guarded", noise_z=1e9, **kw))
    assert cut.n_pruned > 0  # the pruner alone cuts on these tiny differences
    assert guarded.n_pruned == 0  # none of them is beyond noise
    assert guarded.plan.provenance["strategy"] == "trials"


def test_paired_noise_test():
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.exponential(0.7, 200)
    assert not worse_beyond_noise(base + rng.normal(0, 0.05, 200), base, 2.0)  # noise only
    assert worse_beyond_noise(base + 0.05 + rng.normal(0, 0.05, 200), base, 2.0)  # a real gap
    assert not worse_beyond_noise(base[:10], base, 2.0)  # different rows: never cut


def test_uniform_lora_baselines(setup):
    layout = discover(load_model(str(setup / "model"), num_labels=2))
    per_rank = lambda mods: sum(m.d_in + m.d_out for m in mods)  # noqa: E731
    qv_mods = [m for m in layout.modules if m.role in ("q", "v")]
    qv = uniform_lora(layout, 3000, "qv")
    assert qv.modules == tuple(m.name for m in qv_mods)
    assert qv.rank == 3000 // per_rank(qv_mods) and qv.params == qv.rank * per_rank(qv_mods)
    wide = uniform_lora(layout, 3000, "widest")  # rank 1 on every linear layer fits 3000
    assert wide.placement == "all linear" and len(wide.modules) == len(layout.modules)
    assert wide.rank == 3000 // per_rank(layout.modules)
    attn_mods = [m for m in layout.modules if m.role in ("q", "k", "v", "o")]
    small = per_rank(layout.modules) - 1  # rank 1 on all linear no longer fits: attention only
    attn = uniform_lora(layout, small, "widest")
    assert attn.placement == "attention" and attn.rank == small // per_rank(attn_mods)
    assert qv.plan(layout).trainable_params == qv.params
    # Below query,value r=1 on every layer: query,value r=1 on the top layers that fit.
    layers = sorted({m.layer for m in qv_mods})
    per_layer = per_rank([m for m in qv_mods if m.layer == layers[-1]])
    assert len(layers) >= 2
    top = uniform_lora(layout, per_layer + 1, "qv")
    assert top.rank == 1 and top.params == per_layer and "top 1 layer" in top.placement
    assert {layout.module(n).layer for n in top.modules} == {layers[-1]}  # next to the head
    assert top.plan(layout).trainable_params == top.params
    assert uniform_lora(layout, per_layer - 1, "qv") is None  # not even one layer fits
    v_mods = [m for m in layout.modules if m.role == "v"]
    assert uniform_lora(layout, per_rank(qv_mods), "widest").placement == "query,value"
    v_all = uniform_lora(layout, per_rank(qv_mods) - 1, "widest")  # q,v r1 no longer fits: value
    assert v_all.placement == "value" and v_all.modules == tuple(m.name for m in v_mods)
    v_top = uniform_lora(layout, per_rank(v_mods) - 1, "widest")  # then value on the top layers
    assert "top" in v_top.placement and v_top.params <= per_rank(v_mods) - 1
    assert {layout.module(n).role for n in v_top.modules} == {"v"}
    assert max(layout.module(n).layer for n in v_top.modules) == layers[-1]
    # The MLP (up and down here): every layer where rank 1 fits, else its top layers.
    mlp_mods = [m for m in layout.modules if m.role in ("ffn_up", "ffn_down")]
    assert mlp_mods and set(mlp_mods) != set(layout.modules)
    mlp = uniform_lora(layout, 3000, "mlp")
    assert mlp.placement == "MLP" and mlp.modules == tuple(m.name for m in mlp_mods)
    assert mlp.rank == 3000 // per_rank(mlp_mods) and mlp.plan(layout).trainable_params == mlp.params
    mlp_top = uniform_lora(layout, per_rank(mlp_mods) - 1, "mlp")
    assert "top" in mlp_top.placement and {layout.module(n).role for n in mlp_top.modules} == {"ffn_up", "ffn_down"}
    assert mlp_top.params <= per_rank(mlp_mods) - 1


WIDEST_FIRST = ("baseline widest", "baseline mlp", "baseline qv")


def test_a_searched_plan_must_beat_the_baselines_beyond_noise():
    import numpy as np
    from types import SimpleNamespace

    from nas.search.weight_sharing import proven_best

    rng = np.random.default_rng(0)
    rows = rng.exponential(0.7, 200)
    trial = lambda origin, r: SimpleNamespace(user_attrs={"origin": origin, "rows": list(r)})  # noqa: E731
    close = trial("importance plan #0", rows - 0.002 + rng.normal(0, 0.05, 200))
    far = trial("sampled #4", rows - 0.08 + rng.normal(0, 0.05, 200))
    qv, wide = trial("baseline qv #2", rows), trial("baseline widest #3", rows + 0.01)
    assert proven_best([close, qv, wide], 2.0, WIDEST_FIRST) is qv  # a lead within noise: the baseline
    assert proven_best([far, close, qv, wide], 2.0, WIDEST_FIRST) is far  # a lead beyond noise: the plan
    assert proven_best([qv, close], 2.0, WIDEST_FIRST) is qv
    assert proven_best([close, far], 2.0, WIDEST_FIRST) is close  # no baseline among the finalists


def test_the_preferred_baseline_is_kept_unless_beaten_beyond_noise():
    import numpy as np
    from types import SimpleNamespace

    from nas.search.weight_sharing import best_baseline, proven_best

    rng = np.random.default_rng(1)
    rows = rng.exponential(0.7, 200)
    trial = lambda origin, r: SimpleNamespace(user_attrs={"origin": origin, "rows": list(r)})  # noqa: E731
    qv = trial("baseline qv #2", rows)
    wide = trial("baseline widest #3", rows + 0.001 + rng.normal(0, 0.05, 200))  # behind, within noise
    worse = trial("baseline widest #3", rows + 0.05 + rng.normal(0, 0.05, 200))  # behind beyond noise
    assert best_baseline([qv, wide], 2.0, WIDEST_FIRST) is wide
    assert best_baseline([qv, worse], 2.0, WIDEST_FIRST) is qv
    close = trial("importance plan #0", rows - 0.002 + rng.normal(0, 0.05, 200))
    assert proven_best([close, qv, wide], 2.0, WIDEST_FIRST) is wide
    assert best_baseline([close], 2.0, WIDEST_FIRST) is None
    mlp = trial("baseline mlp #4", rows + 0.001 + rng.normal(0, 0.05, 200))  # behind, within noise
    assert best_baseline([qv, wide, mlp], 2.0, WIDEST_FIRST) is wide
    assert best_baseline([qv, wide, mlp], 2.0, ("baseline mlp", "baseline widest", "baseline qv")) is mlp


def test_without_signal_the_widest_baseline_returns_even_if_the_noise_cut_it(monkeypatch):
    from types import SimpleNamespace

    import torch

    from nas.search import weight_sharing

    monkeypatch.setattr(weight_sharing, "heldout", lambda *a, **k: SimpleNamespace(loss=0.69))  # the start
    monkeypatch.setattr(weight_sharing, "constant_loss", lambda *a: None)
    trial = lambda n, origin, rung, v, lr=1e-3: SimpleNamespace(  # noqa: E731
        number=n, value=v, user_attrs={"origin": origin, "rung": rung, "plan": {"training": {"lr": lr}}})
    plan, qv1 = trial(0, "importance plan #0", 1, 0.674), trial(1, "baseline qv #2", 1, 0.678)
    wide0, qv0 = trial(2, "baseline widest #3", 0, 0.6795), trial(3, "baseline qv #2", 0, 0.6794)
    study = SimpleNamespace(get_trials=lambda deepcopy, states: [plan, qv1, wide0, qv0])
    cfg = SimpleNamespace(min_progress=0.05, device="cpu", batch_size=8, lr_grid=(2e-3, 1e-3))
    search = SimpleNamespace(cfg=cfg, base=torch.nn.Linear(1, 1), trial_data=None)
    no_scoring = SimpleNamespace(get_trials=lambda deepcopy, states: [])
    fallback, lines = weight_sharing.without_signal(search, study, no_scoring, plan, None, WIDEST_FIRST)
    assert fallback is wide0 and "No signal" in "".join(lines)  # 0.69 -> 0.678: 1.7% < 5%
    assert "learning rate (0.001) is untested" in "".join(lines)  # the plan's own
    # Only q,v reached the finalists: the widest as scored on the shared weights, not q,v.
    scored_wide = trial(7, "baseline widest #3", None, 0.6802)
    scoring = SimpleNamespace(get_trials=lambda deepcopy, states: [scored_wide])
    only_qv = SimpleNamespace(get_trials=lambda deepcopy, states: [plan, qv1])
    assert weight_sharing.without_signal(search, only_qv, scoring, plan, None, WIDEST_FIRST)[0] is scored_wide
    # The widest also at the grid's first rate, cut at rung 0 with a higher loss: the rate is noise
    # too, so the grid's first (unless it diverged)
    wide_first = trial(8, "baseline widest #3", 0, 0.6799, lr=2e-3)
    both = SimpleNamespace(get_trials=lambda deepcopy, states: [plan, qv1, wide0, qv0, wide_first])
    fallback, lines = weight_sharing.without_signal(search, both, no_scoring, plan, None, WIDEST_FIRST)
    assert fallback is wide_first and "learning rate (0.002) is untested" in "".join(lines)
    wide_first.value = float("inf")
    assert weight_sharing.without_signal(search, both, no_scoring, plan, None, WIDEST_FIRST)[0] is wide0
    # q,v preferred: the trained q,v, not the widest
    assert weight_sharing.without_signal(search, study, no_scoring, plan, None, ("baseline qv",))[0] is qv1
    cfg.min_progress = 0.01
    assert weight_sharing.without_signal(search, study, None, plan, None, WIDEST_FIRST)[0] is None  # 1.7% >= 1%
    cfg.min_progress = 0.0
    assert weight_sharing.without_signal(search, study, None, plan, None, WIDEST_FIRST) == (None, [])  # no check


def test_finalists_put_the_baselines_in_the_preferred_order():
    from types import SimpleNamespace

    from nas.search.finalists import pick_finalists

    plan = {"schema_version": 1, "model": {"name_or_path": "m"}, "modules": {}, "shortcuts": {}}
    trial = lambda n, origin, v: SimpleNamespace(  # noqa: E731
        number=n, value=v, user_attrs={"origin": origin, "plan_hash": str(n), "plan": plan})
    scored = [trial(0, "importance plan", 0.60), trial(1, "baseline qv", 0.61),
              trial(2, "baseline widest", 0.62), trial(3, "sampled", 0.63), trial(4, "baseline mlp", 0.64)]
    scoring = SimpleNamespace(get_trials=lambda deepcopy, states: scored)
    order = [f.origin for f in pick_finalists(scoring, 2, (1e-3, 5e-4), limit=6, order=WIDEST_FIRST)]
    assert order == ["importance plan #0", "baseline widest #2", "baseline mlp #4", "baseline qv #1",
                     "sampled #3", "importance plan #0"]
    assert [f.origin for f in pick_finalists(scoring, 2, (1e-3,), limit=2, order=WIDEST_FIRST)] == [
        "importance plan #0", "baseline widest #2"]  # a small budget trains the preferred one
    mlp_first = ("baseline mlp", "baseline widest", "baseline qv")
    assert [f.origin for f in pick_finalists(scoring, 2, (1e-3,), limit=3, order=mlp_first)] == [
        "importance plan #0", "baseline mlp #4", "baseline widest #2"]
    # Room for one: the preferred baseline, not a searched plan nothing could be compared with.
    assert [f.origin for f in pick_finalists(scoring, 2, (1e-3,), limit=1, order=mlp_first)] == ["baseline mlp #4"]


def test_the_mlp_is_preferred_where_it_spans_half_the_layers():
    layout = minilm_layout()
    at = lambda size: preferred(baselines_at(layout, size), layout)  # noqa: E731
    assert at(22_713) == ("mlp", "widest", "qv")  # 0.1% of MiniLM: the MLP on 5 of 6 layers
    assert at(3 * 3_840) == ("mlp", "widest", "qv")  # on 3 of 6: half
    assert at(3 * 3_840 - 1) == ("widest", "mlp", "qv")  # on 2 of 6
    assert at(4_542) == ("widest", "mlp", "qv")  # 0.02%: the MLP on 1 layer, value r1 on 5
    assert at(3_000) == ("widest", "qv")  # not one layer's MLP fits


def test_a_search_whose_trials_did_not_take_off_returns_the_preferred_baseline(setup, tmp_path):
    layout = discover(load_model(str(setup / "model"), num_labels=2))
    runs = {}
    for min_progress in (0.0, 1.0):  # 0: no check; 1: no trial can lower the loss by 100%
        out = tmp_path / f"out{min_progress}"
        cfg = config(setup, out, min_progress=min_progress)
        runs[min_progress] = (run_search(cfg).plan, (out / "report.md").read_text())
    plan, report = runs[1.0]
    bases = baselines_at(layout, plan.budget["params"])
    first = preferred(bases, layout)[0]
    assert first == "mlp"  # 3k parameters: rank 1 fits on every layer's MLP of the tiny BERT
    assert plan.provenance["origin"].startswith(f"baseline {first}") and "No signal" in report
    assert f"Its learning rate ({plan.training['lr']:g}) is untested" in report  # the plan's own
    assert plan.training["lr"] == cfg.lr_grid[0]  # the finalists' loss order is noise: so is their rate
    assert set(plan.modules) == set(bases[first].modules)
    assert {c["rank"] for c in plan.modules.values()} == {bases[first].rank}
    signal = plan.provenance["signal"]  # the check, for a script reading the plan
    assert signal["fallback"] == plan.provenance["origin"] and signal["progress"] < signal["min_progress"] == 1.0
    assert signal["progress"] == pytest.approx(1 - signal["loss"] / signal["start_loss"])
    plan, report = runs[0.0]
    assert "No signal" not in report and "signal" not in plan.provenance  # no check made: no fallback


def test_a_search_that_affords_no_finalist_returns_its_plan_at_the_grids_first_rate(setup, tmp_path):
    # 0.25x: the super-network (0.2) and the scoring (0.05) take it all.  The plan was scored on
    # shared weights only, so its rate is the one a lone finalist would have had, not --lr.
    out = tmp_path / "out"
    res = run_search(config(setup, out, cost_budget=0.25, lr_grid=(4e-3, 1e-3), first_trial_lr=5e-4))
    trials = studies(out)
    assert not trials.get("more-search"), "a finalist was trained"
    # every scored plan, baselines and proxy plan included (the no-signal fallback may return one)
    scored = [t.user_attrs[PLAN_ATTR]["training"]["lr"] for t in trials["more-search.scoring"]]
    assert len(scored) >= 3 and set(scored) == {4e-3}
    assert res.plan.training["lr"] == 4e-3 and Plan.load(out / "plan.json").training["lr"] == 4e-3
    assert "affords no finalist" in (out / "report.md").read_text()


@pytest.mark.parametrize("n_train", [2000, 8000, 67000])
def test_stage_sizes_stay_within_the_cost_budget(n_train):
    s = size_stages(n_train=n_train, batch_size=16, epochs=3, cost_budget=0.5, supernet_share=0.2,
                    scoring_share=0.05, eval_rows=128, n_finalists=8, rungs=2, eta=2, proxy_batches=1,
                    min_scored=5)
    assert s.planned() <= 0.5 + 1e-9
    # 2,000 rows x 3 epochs (375 steps) at 0.5x afford one finalist once its set-up is counted
    assert s.supernet_steps >= 1 and s.scored_plans >= 5 and s.finalists >= (1 if n_train < 3000 else 2)
    more = size_stages(n_train=n_train, batch_size=16, epochs=3, cost_budget=1.0, supernet_share=0.2,
                       scoring_share=0.05, eval_rows=128, n_finalists=8, rungs=2, eta=2, proxy_batches=1,
                       min_scored=5)
    assert more.finalists >= s.finalists and more.finalists >= 2 and more.planned() <= 1.0 + 1e-9
