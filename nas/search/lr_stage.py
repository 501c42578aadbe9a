"""The lr stage of the weight-sharing search (weight_sharing.py runs the stages): the returned
plan's learning rate, tested.  An LR range test (Smith, arXiv 1506.01186; fastai / Lightning
``lr_find``) on the plan from the fresh init more-train starts it from, then short trials from that
init at rates around its pick, scored by held-out loss on the search's held-out rows.  Its pick is
only a starting point: a rate is kept when a real trial at it left the start."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math

from ..io import atomic_write_text
from ..plan import Plan
from ..train.lr_range import STOP_FACTOR, lr_range_test, plot_range_test, range_test_from
from .config import PLAN_ATTR
from .cost import FORWARD_COST, MIN_CONFIRM_STEPS, TRIAL_OVERHEAD
from .finalists import TRIAL_ERRORS, short_run, train_part, trial_config
from .ranking import progress, worse_beyond_noise
from .trials import plan_hash

STAGE_FILE, PLOT_FILE = "lr_stage.json", "lr_range.png"
N_RATES = 3  # pick/2, pick, 2*pick
SAFETY = 10.0  # an unconfirmed rate: the range test's lowest point over this (fastai's first lr_find rule)
LEFT = "left the start"
LOWEST_WITHIN_NOISE = ("the lowest held-out loss among the trials that left the start, then the lowest rate "
                       "within noise of it (a margin from the unstable edge: stalls depend on the seed)")


def confirm_rates(pick: float, n: int, lo: float, cap: float) -> list[float]:
    """Up to ``n`` of pick, pick/2, 2*pick (in that priority: the lower side keeps a margin from
    the unstable edge), each clipped to [lo, cap], ascending, without repeats."""
    rates = {min(max(r, lo), cap) for r in (pick, pick / 2, 2 * pick)[:n]}
    return sorted(float(f"{r:.3g}") for r in rates)


def confirm_size(units: float, eval_batches: int) -> tuple[int, int]:
    """(rates, steps each) that ``units`` plan steps afford: each trial pays its set-up and its
    held-out evaluation, and trains at least MIN_CONFIRM_STEPS steps."""
    per = TRIAL_OVERHEAD + eval_batches * FORWARD_COST
    n = max(0, min(N_RATES, int(units // (MIN_CONFIRM_STEPS + per))))
    return (n, int((units - n * per) // n)) if n else (0, 0)


def choose(trials: list[dict], z: float) -> dict | None:
    """Among the trials that left the start: the lowest held-out loss, then the lowest rate whose
    per-row losses are not worse than that beyond noise (paired test); None when none left it."""
    ok = [t for t in trials if t["verdict"] == LEFT]
    if not ok:
        return None
    best = min(ok, key=lambda t: (t["heldout_loss"], t["lr"]))
    return min((t for t in ok if not worse_beyond_noise(t["rows"], best["rows"], z)), key=lambda t: t["lr"])


def run_lr_stage(search, best, rows, start: float, units: float):
    """-> (the trial to return, with its plan's lr and ``provenance["lr_evidence"]`` set, report
    lines).  ``units``: plan steps for the confirmation trials.  The result is kept in
    lr_stage.json: a resumed search with the same plan and sizes reuses it."""
    cfg, sizes = search.cfg, search.sizes
    plan = Plan.from_dict(best.user_attrs[PLAN_ATTR])
    before, (lo, hi) = float(plan.training["lr"]), cfg.lr_test_range
    n, steps = confirm_size(units, math.ceil(len(rows) / cfg.batch_size))
    key = hashlib.sha1(json.dumps([plan_hash(plan), lo, hi, sizes.lr_range_steps, n, steps, cfg.seed, len(rows),
                                   cfg.min_progress, cfg.noise_z, cfg.batch_size, cfg.max_length]).encode())
    key = key.hexdigest()[:16]
    path = search.out / STAGE_FILE
    saved = json.loads(path.read_text()) if cfg.resume and path.is_file() else {}
    if saved.get("fingerprint") == key:
        evidence, rt = saved["evidence"], range_test_from(saved["range_test"])
    else:
        data = train_part(search)
        rt = lr_range_test(plan, trial_config(cfg, plan, sizes.lr_range_steps, before, cfg.seed), model=search.base,
                           tokenizer=search._tokenizer, data=data, lo=lo, hi=hi, steps=sizes.lr_range_steps)
        pick, edge = (before, hi) if rt.suggestion is None else (rt.suggestion, rt.lr_at_min)
        # Nothing past the lowest smoothed loss (it rose after; on a flat curve that point is noise),
        # nor past half the rate where it diverged (the smoothed loss lags: it was unstable before).
        cap = min(edge, hi if rt.diverged_at is None else rt.diverged_at / 2)
        trials = [_confirm(search, plan, lr, steps, data, rows, start) for lr in
                  (confirm_rates(pick, n, lo, cap) if n else [])]
        evidence = _decide(rt, trials, before, steps, cfg.noise_z)
        atomic_write_text(path, json.dumps({"fingerprint": key, "evidence": evidence,
                                            "range_test": dataclasses.asdict(rt)}, indent=1))
    plot_range_test(rt, search.out / PLOT_FILE, "learning-rate range test of the returned plan")
    best = with_lr(best, evidence["chosen_lr"])
    best.user_attrs[PLAN_ATTR].setdefault("provenance", {})["lr_evidence"] = evidence
    return best, report(evidence, start, len(rows), cfg)


def with_lr(trial, lr: float):
    """A copy of ``trial`` whose plan trains at ``lr``; the study's own record stays as it was."""
    trial = copy.deepcopy(trial)
    trial.user_attrs[PLAN_ATTR]["training"]["lr"] = lr
    return trial


def _confirm(search, plan: Plan, lr: float, steps: int, data, rows, start: float) -> dict:
    cfg = search.cfg
    out = {"lr": lr, "steps": steps, "start": start, "heldout_loss": math.nan, "progress": math.nan, "rows": []}
    try:
        ho, _ = short_run(search, plan, trial_config(cfg, plan, steps, lr, cfg.seed), data, rows)
    except TRIAL_ERRORS as e:
        return {**out, "verdict": "diverged", "error": str(e)[:200]}
    p = progress(start, ho.loss)
    verdict = LEFT if math.isfinite(ho.loss) and p >= cfg.min_progress and ho.loss < start else \
        "diverged" if not math.isfinite(ho.loss) else "stalled"
    return {**out, "heldout_loss": ho.loss, "progress": p, "verdict": verdict, "rows": ho.rows}


def _decide(rt, trials: list[dict], before: float, steps: int, z: float) -> dict:
    chosen = choose(trials, z)
    if chosen is not None:
        lr, rule = chosen["lr"], LOWEST_WITHIN_NOISE
    elif rt.suggestion is not None:
        # Unconfirmed, the highest stable rate (the lowest point of the smoothed loss) over SAFETY,
        # not the pick: in a short sweep the loss first falls where it also turns erratic (on
        # SST-2 in 30 steps the steepest point sat at the edge), and stalls there depend on the seed.
        lr = min(rt.suggestion, rt.lr_at_min / SAFETY)
        why = f"no confirmation trial left the start in {steps} steps" if trials else \
            "the budget left no confirmation trial"
        rule = f"lr from the range test only: {why}; the lower of its pick and its lowest point / {SAFETY:g}"
    else:
        lr = before
        rule = "the finalists' rate: the range test's loss did not fall, and no confirmation trial left the start"
    return {"range_test": rt.summary(), "trials": [{k: v for k, v in t.items() if k != "rows"} for t in trials],
            "chosen_lr": lr, "rule": rule, "finalists_lr": before}


def report(ev: dict, start: float, n_rows: int, cfg) -> list[str]:
    rt = ev["range_test"]
    div = f"diverged at {rt['diverged_at']:.2g}" if rt["diverged_at"] else "did not diverge"
    sug = f"{rt['suggestion']:.2g} ({rt['method']})" if rt["suggestion"] else f"none ({rt['method']})"
    if rt.get("lr_at_min"):
        sug += f"; lowest smoothed loss at {rt['lr_at_min']:.2g}"
    lines = ["## Learning rate (lr stage)", "",
             f"- range test (Smith 2015) on the returned plan from its fresh init (seed {cfg.seed}, as more-train "
             f"starts it): {rt['steps']} steps, lr {rt['lo']:.0e} -> {rt['lrs'][-1] if rt['lrs'] else rt['lo']:.2g}, "
             f"{div} (smoothed loss over {STOP_FACTOR:g}x its minimum, or not finite); suggestion {sug}. "
             f"Plot: `{PLOT_FILE}`."]
    if ev["trials"]:
        lines += [f"- confirmation trials from the same init, scored by held-out loss on {n_rows} held-out rows "
                  f"(start {start:.4f}, the lower of the untrained model's and the labels' prior's; "
                  f"`--min-progress` {cfg.min_progress:g}); a rate that diverged or stalled is dropped:", "",
                  "| lr | steps | held-out loss | progress | verdict |", "|---:|---:|---:|---:|---|"]
        lines += [f"| {t['lr']:.2g} | {t['steps']} | {t['heldout_loss']:.4f} | {t['progress']:.1%} | "
                  f"{t['verdict'] if t['verdict'] == LEFT else 'dropped: ' + t['verdict']} |" for t in ev["trials"]]
        lines.append("")
    lines += [f"- **lr {ev['chosen_lr']:.2g}**: {ev['rule']}; the finalists' rate was {ev['finalists_lr']:g}.", ""]
    return lines


def skipped(cfg) -> list[str]:
    if cfg.lr_test == "off":
        return []
    return ["## Learning rate (lr stage)", "", "- not tested: the budget left no room for a range test of "
            "at least its minimum steps; the plan keeps the finalists' rate (raise `--cost-budget`).", ""]
