"""Smoke tests of benchmarks/glue.py's pure parts (no model is loaded, nothing is trained)."""
from __future__ import annotations

import math

import pytest
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import glue  # noqa: E402
from _glue_bench import _row, pick_best  # noqa: E402
from _glue_estimate import ASSUMED_STEP_S, assumed_step_time  # noqa: E402
from _glue_methods import (SURM_CHOICES, Method, NotApplicable, Spec, lora_ranks, match_peft_rank,  # noqa: E402
                           peft_lora_params, plan_spec)
from _glue_train import train_config  # noqa: E402
from _glue_report import _ms, comparison_summary  # noqa: E402
from _glue_search import comparison_methods, make_methods, placement_lora  # noqa: E402
from tests.factories import minilm_layout  # noqa: E402


def _ctx():
    return SimpleNamespace(layout=minilm_layout())


def test_peft_rank_matching():
    ctx = _ctx()
    assert peft_lora_params(ctx, 8, ("q", "v")) == 73_728  # + the 770-parameter head = 74,498
    assert match_peft_rank(ctx, 4_224) == (1, "qv")  # below the smallest option: r=1
    assert match_peft_rank(ctx, 18_432) == (2, "qv")  # qv r2 == attn r1: query,value wins
    assert match_peft_rank(ctx, 73_000) == (8, "qv")
    assert match_peft_rank(ctx, 74_000) == (8, "qv")  # qv r8 == attn r4 (73,728): query,value
    assert match_peft_rank(ctx, 9_216 * 70) == (35, "attn")  # beyond query,value r64


def test_spec_digest_is_the_content():
    a = Spec("peft", "x", {"rank": 1, "targets": ["a"]}, {"note": 1})
    b = Spec("peft", "y", {"targets": ["a"], "rank": 1}, {"note": 2})
    assert a.digest == b.digest  # label and info are not identity
    assert a.digest != Spec("peft", "x", {"rank": 2, "targets": ["a"]}).digest


def test_pick_best_ties_and_failures():
    runs = {("", 5e-4): {"score": 0.6, "metrics": {"loss": 0.5}},
            ("", 2e-3): {"score": 0.6, "metrics": {"loss": 0.4}},
            ("x", 2e-3): {"score": float("nan"), "metrics": {}}}
    assert pick_best(runs) == ("", 2e-3)  # tie on the metric: lower loss
    runs[("", 2e-3)]["metrics"]["loss"] = 0.5
    assert pick_best(runs) == ("", 5e-4)  # full tie: lower lr


def test_a_reused_run_reports_the_current_searchs_cost():
    """A final run is keyed by its plan's content: after a rerun search returns the same plan,
    the row carries the new search's time and cost, not those saved with the old run."""
    m = next(m for m in comparison_methods({"mrpc": ("0.1%",)}) if m.name == "new-search@0.1%")
    rec = {"phase": "final", "score": 0.8, "spec_info": {"search_time_s": 57.0}, "metrics": {}}
    assert _row(rec, m, "", True, 0.7)["search_time_s"] == 57.0
    row = _row(rec, m, "", True, 0.7, {"search_time_s": 52.0, "search_multiple": 0.5})
    assert (row["search_time_s"], row["search_multiple"], row["holdout_score"]) == (52.0, 0.5, 0.7)


def test_method_table_and_protocols():
    methods = make_methods()
    names = [m.name for m in methods]
    assert len(names) == len(set(names)) == 15
    assert next(m for m in methods if m.name == "surm-best").variants == tuple(SURM_CHOICES)
    for proto in (glue.FULL, glue.QUICK):
        assert proto.phase_settings("rte", "select") != proto.phase_settings("rte", "final")
    assert glue.FULL.train_rows["sst2"] == 8000 and len(glue.FULL.seeds) >= 2
    assert _ms([0.5, 0.7]) == "60.0 ± 14.1" and _ms([float("nan")]) == "n/a"
    assert math.isclose(assumed_step_time(128), ASSUMED_STEP_S)


def test_shared_selection_task_runs_first_and_once(tmp_path):
    """With select_task, lr selection happens on that task only, before any task's finals."""
    methods = make_methods(("0.1%",))
    proto = glue.replace(glue.FULL, tasks=("mrpc", "rte"), select_task="sst2", budgets=("0.1%",))
    jobs = glue.Bench(proto, methods, tmp_path).jobs()
    selects = [j for j in jobs if j[0] == "select"]
    assert selects and {j[1] for j in selects} == {"sst2"}
    assert len(selects) == sum(len(m.variants) for m in methods) * len(proto.lr_grid)
    first_final = next(i for i, j in enumerate(jobs) if j[0] == "final")
    assert all(i < first_final for i, j in enumerate(jobs) if j[0] == "select")
    assert {j[1] for j in jobs if j[0] == "final"} == {"mrpc", "rte"}  # sst2 only selects
    assert ("search", "sst2", "more-search@0.1%", "", None, None) in jobs  # its plan picks the lr
    own = glue.Bench(glue.replace(proto, select_task=None), methods, tmp_path).jobs()
    assert {j[1] for j in own if j[0] == "select"} == {"mrpc", "rte"}


def test_resumed_search_time_leaves_out_the_interrupted_trial(tmp_path):
    """A trial cut off by a crash is failed on resume; its span is downtime, not search time."""
    import datetime as dt

    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import FrozenTrial, TrialState

    from _glue_search import _study_seconds

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "study.journal")))
    study = optuna.create_study(study_name="s", storage=storage)
    t0 = dt.datetime(2026, 1, 1)
    spans = [(TrialState.COMPLETE, 90), (TrialState.PRUNED, 30), (TrialState.FAIL, 3600)]
    for i, (state, seconds) in enumerate(spans):
        study.add_trial(FrozenTrial(
            number=i, trial_id=i, state=state, value=0.5 if state == TrialState.COMPLETE else None,
            values=None, datetime_start=t0, datetime_complete=t0 + dt.timedelta(seconds=seconds),
            params={"x": 0.1}, distributions={"x": FloatDistribution(0, 1)}, user_attrs={},
            system_attrs={}, intermediate_values={0: 0.5} if state == TrialState.PRUNED else {}))
    assert _study_seconds(tmp_path) == 120.0


# ---- the search-vs-baselines protocol ----------------------------------------------------------------------
def _adapter_params(ctx, rank, targets):
    size = {m.name: m.d_in + m.d_out for m in ctx.layout.modules}
    return rank * sum(size[t] for t in targets)


def test_widest_lora_fits_and_is_widest_first():
    ctx = _ctx()
    all_r1 = _adapter_params(ctx, 1, [m.name for m in ctx.layout.modules])  # 41,472 on MiniLM
    for size in (1_536, 3_500, 4_540, 9_216, 18_431, 18_432, 22_656, all_r1 - 1, all_r1, 100_000, 10**7):
        rank, where, targets = placement_lora(ctx, size)
        assert 1 <= _adapter_params(ctx, rank, targets) <= size  # never above the plan's size
        if size >= all_r1:  # rank 1 fits on every linear layer: all of them, the largest rank that fits
            assert where == "all" and len(targets) == 36
            assert _adapter_params(ctx, rank + 1, targets) > size or rank == 64
        elif size >= 18_432:  # else every attention projection
            assert where == "attn" and {m.split(".")[1] for m in targets} == {"q", "k", "v", "o"}
    assert placement_lora(ctx, 22_656)[:2] == (1, "attn")  # 0.1% of MiniLM: attention r1, not q,v r2
    assert placement_lora(ctx, 9_216)[:2] == (1, "qv")  # attention r1 no longer fits: q,v r1
    assert placement_lora(ctx, 4_608)[:2] == (1, "v")  # q,v r1 no longer fits: value r1
    rank, where, targets = placement_lora(ctx, 4_540)  # 0.02%: value r1 on the top 5 layers
    assert (rank, where) == (1, "v-top5") and {t.split(".")[0] for t in targets} == {f"l{i}" for i in range(1, 6)}
    assert {t.split(".")[1] for t in targets} == {"v"}
    with pytest.raises(ValueError, match="no uniform LoRA on the widest placement fits"):
        placement_lora(ctx, 700)  # not one value projection (768)


def test_mlp_lora_is_up_and_down_on_as_many_top_layers_as_fit():
    ctx = _ctx()
    mlp_r1 = 6 * (384 + 1536) * 2  # 23,040: rank 1 on every FFN up and down projection
    assert placement_lora(ctx, mlp_r1, "mlp")[:2] == (1, "mlp")
    assert placement_lora(ctx, 2 * mlp_r1 + 1, "mlp")[:2] == (2, "mlp")
    rank, where, targets = placement_lora(ctx, 22_656, "mlp")  # 0.1%: the top 5 layers (19,200)
    assert (rank, where) == (1, "mlp-top5") and _adapter_params(ctx, rank, targets) == 19_200
    assert {t.split(".")[0] for t in targets} == {f"l{i}" for i in range(1, 6)}
    assert {t.split(".")[1] for t in targets} == {"ffn_up", "ffn_down"}
    with pytest.raises(ValueError, match="no uniform LoRA on the mlp placement fits"):
        placement_lora(ctx, 3_839, "mlp")  # one layer's up and down need 3,840


def test_comparison_summary_gaps_against_the_baselines_and_the_best_simple_placement(tmp_path):
    bench = glue.Bench(glue.SEARCH_VS_BASELINES, comparison_methods({"mrpc": ("0.1%",)}), tmp_path)

    def g(mean):
        return {"mean": mean, "scores": [mean - 0.01, mean + 0.01], "params": 19_202,
                "by_seed": {0: mean - 0.01, 1: mean + 0.01, 2: float("nan")},
                "search_time": None, "train_time": None}

    groups = {("mrpc", "new-search@0.1%"): g(0.78), ("mrpc", "peft-qv@0.1%"): g(0.75),
              ("mrpc", "widest-lora@0.1%"): g(0.77), ("mrpc", "mlp-lora@0.1%"): g(0.80)}
    text = "\n".join(comparison_summary(bench, groups, ["mrpc"]))
    row = next(line for line in text.splitlines() if line.startswith("| MRPC | 0.1% |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "+1.0" and cells[7] == "-2.0"  # vs widest (77), vs the MLP (80)
    assert cells[12] == "-"  # no search time recorded: no cost
    groups[("mrpc", "new-search@0.1%")].update(search_time=50.0, train_time=100.0, search_multiple=0.42)
    row = next(line for line in comparison_summary(bench, groups, ["mrpc"]) if line.startswith("| MRPC | 0.1% |"))
    assert [c.strip() for c in row.strip("|").split("|")][12] == "0.50x (0.42x)"
    assert "over the better of (a), (b): +1.00 points" in text
    assert "best simple placement: -2.00 points" in text
    assert "(a) on every layer" not in text  # no peft-qv-all run: no second reading
    assert "MRPC 0.1% +1.0 ± 0.0 over 2 seeds." in text  # seed 2 failed: left out of the pairs
    groups[("mrpc", "new-search@0.1%")]["by_seed"] = {0: 0.79, 1: 0.78, 2: 0.80}
    groups[("mrpc", "widest-lora@0.1%")]["by_seed"] = {0: 0.76, 1: 0.78, 2: 0.77}
    text = "\n".join(comparison_summary(bench, groups, ["mrpc"]))  # diffs +3, 0, +3: mean 2, std 1.73
    assert "MRPC 0.1% +2.0 ± 1.7 over 3 seeds (p = 0.18)" in text and "standard error: 1.00 points" in text
    groups[("mrpc", "peft-qv-all@0.1%")] = g(0.79)
    assert "every layer is): -1.00 points" in "\n".join(comparison_summary(bench, groups, ["mrpc"]))
    # the plan's adapters are the MLP baseline's: its cell says so
    mlp = ["l5.ffn_up", "l5.ffn_down"]
    bench._specs[("mrpc", "new-search@0.1%", "")] = plan_spec("new", {t: {"type": "lora", "rank": 1} for t in mlp})
    for name, targets in (("mlp-lora@0.1%", mlp), ("peft-qv@0.1%", ["l5.q", "l5.v"]), ("widest-lora@0.1%", mlp[:1])):
        bench._specs[("mrpc", name, "")] = Spec("peft", name, {"rank": 1, "alpha": 2, "dropout": 0.0,
                                                               "targets": targets})
    row = next(line for line in comparison_summary(bench, groups, ["mrpc"]) if line.startswith("| MRPC | 0.1% |"))
    assert [c.strip() for c in row.strip("|").split("|")][2].endswith("(19.2k); = (b')")
    del groups[("mrpc", "mlp-lora@0.1%")]  # not run: the best simple placement is max(a, b)
    assert "best simple placement: +1.00 points" in "\n".join(comparison_summary(bench, groups, ["mrpc"]))
    # a --methods subset without the MLP baseline: the plan is compared with the baselines it ran
    bench.methods = [m for m in bench.methods if not m.name.startswith("mlp-lora")]
    row = next(line for line in comparison_summary(bench, groups, ["mrpc"]) if line.startswith("| MRPC | 0.1% |"))
    assert [c.strip() for c in row.strip("|").split("|")][2].endswith("(19.2k)")


def test_lora_ranks_equal_for_a_plan_and_a_peft_baseline_with_the_same_adapters():
    targets = ["l4.v", "l5.v"]
    peft = Spec("peft", "p", {"rank": 1, "alpha": 2, "dropout": 0.0, "targets": targets})
    plan = plan_spec("new", {t: {"type": "lora", "rank": 1} for t in targets})
    assert lora_ranks(peft) == lora_ranks(plan) == {"l4.v": 1, "l5.v": 1}
    assert lora_ranks(plan_spec("n", {"l5.v": {"type": "lora", "rank": 1}})) != lora_ranks(peft)
    assert lora_ranks(Spec("peft", "p", {"rank": 1, "alpha": 8, "dropout": 0.0, "targets": targets})) is None
    assert lora_ranks(plan_spec("n", {"l5.v": {"type": "circulant"}})) is None
    assert lora_ranks(plan_spec("n", {"l5.v": {"type": "lora", "rank": 1}}, {"l5": {"on": True}})) is None
    assert lora_ranks(None) is None


def test_peft_qv_matching_stays_on_query_value():
    ctx = _ctx()
    # (a) at the plan's size: where rank 1 on every layer's q,v (9,216) is above it, the top layers
    rank, where, targets = placement_lora(ctx, 3_840, "qv")  # SST-2 0.02%: value r1 on 5 layers
    assert (rank, where) == (1, "qv-top2") and _adapter_params(ctx, rank, targets) == 3_072
    assert placement_lora(ctx, 19_200, "qv")[:2] == (2, "qv")  # 0.1%: as the closest rank
    assert match_peft_rank(ctx, 3_840, ("qv",)) == (1, "qv")  # peft-qv-all: 2.4x the plan's size
    assert match_peft_rank(ctx, 9_216 * 70, ("qv",)) == (64, "qv")  # capped, never all-attention
    assert match_peft_rank(ctx, 22_656, ("qv",)) == (2, "qv")
    assert match_peft_rank(ctx, 22_656, ("vo",)) == (2, "vo")  # the value,output diagnostic


def test_comparison_job_list_budgets_epochs_and_phases(tmp_path):
    proto = glue.SEARCH_VS_BASELINES
    methods = comparison_methods(glue.SEARCH_VS_BASELINES_BUDGETS)
    bench = glue.Bench(proto, methods, tmp_path)
    jobs = bench.jobs()
    searches = {(j[1], j[2]) for j in jobs if j[0] == "search"}
    assert searches == {(t, f"{k}-search@{b}") for t, bs in glue.SEARCH_VS_BASELINES_BUDGETS.items() for b in bs
                        for k in ("new", "old")}  # 6: 0.02% on SST-2 only
    finals = [j for j in jobs if j[0] == "final"]
    per_task = {t: {j[2] for j in finals if j[1] == t} for t in proto.tasks}
    # per budget: new, (a), (a) on every layer, (b), (b'), (c); peft-vo@0.1% a diagnostic; r8
    assert len(per_task["sst2"]) == 14 and len(per_task["mrpc"]) == 8
    assert not any("0.02%" in n for n in per_task["mrpc"]) and "peft-lora-r8" in per_task["mrpc"]
    assert len(finals) == 5 * 22 and {j[5] for j in finals} == {0, 1, 2, 3, 4}
    assert len([j for j in jobs if j[0] == "select"]) == 22 * 4 and min(proto.lr_grid) == 5e-4
    assert max(proto.lr_grid) == 5e-3
    # per-task epochs reach the run keys and the search; other protocols' keys are unchanged
    assert proto.phase_settings("mrpc", "final")["epochs"] == 3.0
    assert proto.phase_settings("sst2", "final")["epochs"] == 1.0
    assert proto.search_settings("mrpc")["epochs"] == 3.0
    assert glue.FULL.phase_settings("mrpc", "final")["epochs"] == glue.FULL.epochs
    # lr selection as long as a final (its task's epochs, no step cap); FULL's stays step-capped
    assert proto.phase_settings("mrpc", "select")["epochs"] == 3.0
    assert proto.phase_settings("sst2", "select")["epochs"] == 1.0
    assert "epochs" not in glue.FULL.phase_settings("mrpc", "select")
    spec = Spec("peft", "x", {"rank": 1, "targets": ["query"]})
    cfg = train_config(spec, proto, task="mrpc", lr=1e-3, seed=0, select=True, device=None)
    assert cfg.num_train_epochs == 3.0 and cfg.max_steps in (None, -1) and not cfg.eval_steps
    capped = train_config(spec, glue.FULL, task="mrpc", lr=1e-3, seed=0, select=True, device=None)
    assert capped.max_steps == capped.eval_steps == glue.FULL.select_steps
    # a phase waits for the one before it; its shards split its jobs exactly
    with pytest.raises(SystemExit, match="--phase select"):
        glue.select_jobs(bench, "select", "0/2", lambda msg: (_ for _ in ()).throw(SystemExit(msg)))
    shards = [glue.select_jobs(bench, "search", f"{k}/4", None) for k in range(4)]
    assert sorted(j for s in shards for j in s) == sorted(j for j in jobs if j[0] == "search")
    assert glue.select_jobs(bench, None, None, None) == jobs


def test_comparison_quick_is_the_same_comparison_smaller():
    q = glue.SEARCH_VS_BASELINES_QUICK
    assert q.tasks == glue.SEARCH_VS_BASELINES.tasks and q.task_epochs == glue.SEARCH_VS_BASELINES.task_epochs
    assert len(q.seeds) == 1 and q.final_max_steps and q.select_steps < (glue.SEARCH_VS_BASELINES.select_steps or float("inf"))
    assert glue.protocol_methods(q)[0].name == glue.protocol_methods(glue.SEARCH_VS_BASELINES)[0].name


def test_search_is_sized_from_the_task_epochs(tmp_path, monkeypatch):
    """MRPC trains 3 epochs in the search-vs-baselines protocol: its search must be sized (cost_budget x one
    full run) from 3 epochs, as recorded in its settings, not from the protocol's default 1."""
    import nas.search
    import _glue_search

    seen = {}

    def fake_run_search(cfg, **_):
        seen["cfg"] = cfg
        raise RuntimeError("stop here")

    monkeypatch.setattr(nas.search, "run_search", fake_run_search)
    monkeypatch.setattr(_glue_search, "fresh_model", lambda ctx, seed: None)
    ctx = SimpleNamespace(proto=glue.SEARCH_VS_BASELINES, task="mrpc", runs_dir=tmp_path, data_dir=str(tmp_path),
                          tokenizer=None, data=None)
    with pytest.raises(RuntimeError, match="stop here"):
        _glue_search.run_or_load_search(ctx, "0.1%", "supernet")
    cfg = seen["cfg"]
    assert cfg.epochs == 3.0 and cfg.strategy == "supernet" and cfg.budget == "0.1%"
    settings = glue.SEARCH_VS_BASELINES.search_settings("mrpc")
    assert (cfg.n_trials, cfg.trial_steps, cfg.trial_eval_samples) == (
        settings["trials"], settings["steps"], settings["holdout_rows"])


def test_a_baseline_that_does_not_fit_the_plan_is_left_out_not_a_crash(tmp_path):
    """A plan smaller than one layer's MLP has no MLP baseline: its jobs are skipped and done (the
    next phase does not wait on them), it has no row, and the report says why."""
    def build(ctx, variant):
        raise NotApplicable("no uniform LoRA on the mlp placement fits in 3,072 parameters")

    m = Method("mlp-lora@0.02%", "peft-mlp", build, tasks=("sst2",))
    bench = glue.Bench(glue.SEARCH_VS_BASELINES, [m], tmp_path)
    jobs = bench.jobs()
    assert {j[0] for j in jobs} == {"select", "final"} and all(bench.done(j) for j in jobs)
    line = bench.execute(jobs[0])
    assert "does not apply: no uniform LoRA on the mlp placement fits in 3,072" in line
    assert bench.rows() == [] and bench.skipped == 1
    text = "\n".join(comparison_summary(bench, {}, ["sst2"]))
    assert "Not run ('-'): mlp-lora@0.02% on SST-2: no uniform LoRA on the mlp placement" in text
    with pytest.raises(ValueError, match="no uniform LoRA on the mlp placement fits"):
        placement_lora(_ctx(), 3_072, "mlp")  # what raises it on MiniLM (0.02%: q,v on two layers)


def test_lr_grid_flag_replaces_the_protocols_grid(tmp_path, capsys):
    argv = ["--protocol", "search-vs-baselines", "--tasks", "sst2", "--methods", "peft-lora-r8", "--runs-dir",
            str(tmp_path), "--threads", "1", "--ms-per-token", "0.01", "--estimate-only"]
    assert glue.main(argv + ["--lr-grid", "5e-3,1e-2"]) == 0
    out = capsys.readouterr().out
    assert "lr grid [0.005, 0.01]" in out and "select 800," in out  # 2 lrs x 400 steps
    assert glue.main(argv) == 0
    assert "select 1,600," in capsys.readouterr().out  # the protocol's 4 lrs
    with pytest.raises(SystemExit):
        glue.main(argv + ["--lr-grid", "fast"])
    assert "--lr-grid" in capsys.readouterr().err


def test_default_places_and_the_command_a_report_names(monkeypatch):
    monkeypatch.setattr(glue, "runs_dir", lambda study: Path("/c") / study)  # no archive extracted
    assert glue.default_places("full") == ("glue", Path("/c/glue"), glue.RESULTS / "glue")
    assert glue.default_places("search-15min") == ("glue", Path("/c/glue/search-15min"),
                                                   glue.RESULTS / "glue_search_15min")
    assert glue.default_places("full-sst2all-cuda") == ("glue", Path("/c/glue/full-sst2all-cuda"),
                                                        glue.RESULTS / "glue_sst2all_cuda")
    assert glue.default_places("search-vs-baselines") == ("search_vs_baselines", Path("/c/search_vs_baselines"),
                                                          glue.RESULTS / "search_vs_baselines")
    quick = glue.CACHE / "search_vs_baselines_quick"  # a check: never packed, nothing in results/
    assert glue.default_places("search-vs-baselines-quick") == (None, glue.CACHE / "runs" / quick.name, quick)
    assert glue.default_places("quick")[2] == glue.CACHE / "glue_quick"
    argv = ["--protocol", "full", "--threads", "1", "--report-only", "--from-csv", "--ms-per-token=3", "--out", "a b"]
    assert glue.report_command(argv) == "python benchmarks/glue.py --protocol full --out 'a b'"


def test_a_reports_csv_reads_back_as_its_rows_and_a_rewrite_keeps_the_date_line(tmp_path):
    import csv

    from _glue_bench import csv_rows
    from _glue_report import kept_line

    rows = [{"phase": "final", "seed": 1, "lr": 0.002, "picked": True, "score": 0.5, "f1": None, "spec": "x-r2",
             "steps": 500, "finished": "2026-11-30T15:02:06"}]
    with open(tmp_path / "r.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert csv_rows(tmp_path / "r.csv") == rows
    (tmp_path / "r.md").write_text("# title\n\n- date: 2026-11-30; machine: then\n")
    assert kept_line(tmp_path / "r.md", "- date: ", "- date: today") == "- date: 2026-11-30; machine: then"
    assert kept_line(tmp_path / "none.md", "- date: ", "- date: today") == "- date: today"


def test_another_model_is_in_every_run_key_and_the_default_keys_stay_as_they_were():
    """Protocol.model keys MPNet's runs apart from MiniLM's, and leaves MiniLM's keys (the kept
    runs) unchanged; the searches get the model by name."""
    base = glue.SEARCH_VS_BASELINES
    mpnet = glue.replace(base, model="mpnet")
    for phase in ("select", "final"):
        assert "model" not in base.phase_settings("sst2", phase)
        assert mpnet.phase_settings("sst2", phase) == {**base.phase_settings("sst2", phase), "model": "mpnet"}
    assert "model" not in base.search_settings("sst2") and mpnet.search_settings("sst2")["model"] == "mpnet"


def test_a_grid_of_one_rate_picks_it_without_selection_runs(tmp_path):
    from _glue_bench import Bench, grid_pick

    bench = Bench(glue.replace(glue.SEARCH_VS_BASELINES, lr_grid=(2e-3,)), [], tmp_path)
    spec = plan_spec("p", {"layer.0.q": {"type": "lora", "rank": 1}})
    assert grid_pick(bench, "sst2", spec, run_missing=False) == (2e-3, {})
    wider = Bench(glue.SEARCH_VS_BASELINES, [], tmp_path)
    assert grid_pick(wider, "sst2", spec, run_missing=False) == (None, {})  # nothing saved, nothing trained
