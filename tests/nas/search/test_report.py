"""The search report (nas/search/report.py) from a study and facts alone: report.md, the plots,
the Pareto front, the per-layer table."""
from __future__ import annotations

import optuna

from nas import Plan
from nas.search import SearchResult
from nas.search.report import SearchFacts, allocation_table, write_report
from tests.factories import bert_layout, lora_plan


def _study(points):
    study = optuna.create_study(direction="minimize")  # values are held-out losses
    for i, (params, loss) in enumerate(points):
        t = study.ask()
        t.suggest_float("lr", 1e-4, 1e-2)
        t.set_user_attr("trainable_params", params)
        t.set_user_attr("proxy_score", float(i))
        t.set_user_attr("main_metric", "accuracy")
        t.set_user_attr("metrics", {"loss": loss, "accuracy": 1.0 - loss})
        study.tell(t, loss)
    return study


def test_report_from_study_and_facts(tiny_bert, tmp_path):
    layout = bert_layout(tiny_bert)
    plan = lora_plan(tiny_bert, layout, roles=("q",), training={"lr": 1e-3}, task={"name": "tiny"})
    plan.shortcuts = {"1.s_in": {"rank": 2, "alpha": 4.0}}
    plan.trainable_params = plan.count_params(layout)
    plan.provenance = {"trial": 2, "storage": "study.journal"}
    study = _study([(1000, 0.6), (2000, 0.5), (1500, 0.65), (2500, 0.55)])
    res = SearchResult(plan=plan, plan_path=tmp_path / "plan.json", best_value=0.5, n_complete=4,
                       n_pruned=0, n_failed=0, stage_seconds={"setup": 1.0, "proxy": 2.0, "trials": 3.0})
    facts = SearchFacts(out=tmp_path, layout=layout, metric="accuracy", budget_spec="3k", budget=3000,
                        base_params=12345, space="default", n_candidates=42, proxy="grad-norm",
                        allocation="static")
    front = write_report(facts, study, res)
    assert [(p["params"], p["value"]) for p in front] == [(1000, 0.6), (2000, 0.5)]
    text = (tmp_path / "report.md").read_text()
    for s in ("budget: 3k = 3,000 parameters", "`default` (42 candidates)", "`grad-norm`",
              "12,345 base parameters", "| trials | 3.0 | - |", "4 complete, 0 pruned, 0 failed"):
        assert s in text, s
    top = text.split("## Top trials")[1]
    assert top.index("| 1 | 0.5000") < top.index("| 3 | 0.5500")  # ranked by the held-out loss
    for f in ("pareto.png", "proxy_vs_trial.png", "allocation.png"):
        assert (tmp_path / f).stat().st_size > 0


def test_allocation_table_labels_each_module(tiny_bert):
    layout = bert_layout(tiny_bert)
    plan = lora_plan(tiny_bert, layout, roles=("q",), rank=4)
    plan.shortcuts = {"0.s_res1": {"rank": 2}}
    header, rows = allocation_table(Plan.from_dict(plan.to_dict()), layout)
    assert header[0] == "layer" and header[-1] == "shortcuts"
    q = header.index("q")
    assert all(r[q] == "lora r4" for r in rows)
    assert rows[0][-1] == "s_res1" and all(r[-1] == "·" for r in rows[1:])
