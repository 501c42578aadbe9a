"""The time model of benchmarks/glue.py: a protocol's seconds and optimizer steps per task and
phase, from a step time measured now (or given) at the mean padded batch length."""
from __future__ import annotations

import math
import time

from nas.data import row_lengths
from nas.search.cost import full_run_steps

from _glue_bench import Bench, is_search
from _glue_methods import uniform
from _glue_train import build_trainer, train_config

PHASES = ("search", "select", "final")
ASSUMED_STEP_S = 0.15  # the planned "0.1-0.2 s per step of batch 16 / max_len 128 on 2 free cores"
EVAL_FRACTION = 0.41  # a forward-only batch / a training step (measured on MiniLM)
PREP_S = 1.0  # copy the model, wrap it, build the optimizer
SEARCH_SETUP_S = 8.0


def assumed_step_time(length: float) -> float:
    """The planned figure at 128 tokens, scaled to the mean padded batch length."""
    return ASSUMED_STEP_S * (0.2 + 0.8 * length / 128)


def mean_padded_length(data, batch_size: int, grouped: bool, seed: int = 0) -> float:
    import numpy as np

    from nas.train import group_by_length

    lens = np.array(row_lengths(data.train))
    perm = np.random.default_rng(seed).permutation(len(lens))
    if grouped:
        perm = np.array(group_by_length(perm.tolist(), lens.tolist(), batch_size))
    return float(np.mean([lens[perm[i:i + batch_size]].max() for i in range(0, len(lens), batch_size)]))


def estimate(bench: Bench, step_time) -> dict[str, dict[str, float]]:
    """Seconds per task and phase: steps x step_time(mean padded length), evaluations at
    EVAL_FRACTION of a step per batch, PREP_S per run (duplicate runs counted twice)."""
    p = bench.proto
    out = {}
    for task in dict.fromkeys([*p.tasks, *([p.select_task] if p.select_task else [])]):
        ctx = bench.ctx(task)
        t = step_time(mean_padded_length(ctx.data, p.batch_size, p.group_by_length))
        t_long = step_time(min(p.max_length, max(row_lengths(ctx.data.train))))
        bs = p.batch_size
        spe = math.ceil(len(ctx.data.train) / bs)
        steps = p.final_max_steps or math.ceil(p.epochs_for(task) * spe)
        n_evals = steps // spe + (1 if steps % spe else 0)
        dev = math.ceil(len(ctx.data.eval) / bs) * EVAL_FRACTION * t
        held = math.ceil(len(ctx.sel.eval) / bs) * EVAL_FRACTION * t
        sel_steps = p.select_steps or full_run_steps(len(ctx.sel.train), bs, p.epochs_for(task))
        if not p.select_steps:  # a full-length selection run is scored once per epoch
            held *= math.ceil(p.epochs_for(task))
        row = {"search": 0.0, "select": 0.0, "final": 0.0}
        n = {"search": 0, "select": 0, "final": 0}  # optimizer steps
        for m in bench.methods_for(task):
            if p.selection_task(task) == task:
                row["select"] += len(m.variants) * len(p.lr_grid) * (m.cost * sel_steps * t + held + PREP_S)
                n["select"] += len(m.variants) * len(p.lr_grid) * sel_steps
            if task in p.tasks:
                row["final"] += len(p.seeds) * (m.cost * steps * t + n_evals * dev + PREP_S) + 4 * t_long + 2
                n["final"] += len(p.seeds) * steps
            if is_search(m):
                n["search"] += p.search_trials * p.search_steps
                trials = p.search_trials * (m.cost * p.search_steps * t + p.search_evals * held + PREP_S)
                if p.search_timeout_s:
                    trials = min(trials, p.search_timeout_s + m.cost * p.search_steps * t)
                row["search"] += SEARCH_SETUP_S + 4 * 3 * t + trials
        out[task] = {**row, "steps": n}
    return out


def calibrate(bench: Bench, lengths=(32, 128)) -> tuple[float, float]:
    """(a, b) of step_time(L) = a + b L, timed now on this machine: LoRA r=8 q,v, batch 16."""
    import torch

    ctx = bench.ctx(bench.proto.tasks[0])
    spec = uniform({"type": "lora", "rank": 8}, ("q", "v"), "lora-qv-r8")(ctx, "")
    tr = build_trainer(spec, ctx, ctx.data, train_config(spec, bench.proto, task=ctx.task, lr=1e-4, seed=0, select=True,
                                                          device=bench.device))
    tr.create_optimizer()
    times = []
    for L in lengths:
        L = min(L, bench.proto.max_length)
        ids = torch.randint(1000, 2000, (bench.proto.batch_size, L), device=tr.args.device)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                 "labels": torch.zeros(len(ids), dtype=torch.long, device=tr.args.device)}
        ts = []
        for i in range(3):
            t0 = time.perf_counter()
            tr.model(**batch).loss.backward()
            tr.optimizer.step()
            tr.optimizer.zero_grad(set_to_none=True)
            if tr.args.device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                ts.append(time.perf_counter() - t0)
        times.append((L, min(ts)))
    (l1, t1), (l2, t2) = times
    b = (t2 - t1) / (l2 - l1) if l2 != l1 else 0.0
    return max(t1 - b * l1, 0.0), max(b, 0.0)


def print_estimate(bench: Bench, calibration: tuple[float, float] | None, source: str = "measured now") -> float:
    models = {"assumed step time (0.15 s at 128 tokens, scaled by length)": assumed_step_time}
    if calibration:
        a, b = calibration
        models[f"{source} ({a:.3f} s + {b * 1000:.2f} ms/token per step)"] = lambda L: a + b * L
    total_first = None
    for label, fn in models.items():
        est = estimate(bench, fn)
        tot = sum(r[k] for r in est.values() for k in PHASES)
        total_first = tot if total_first is None else total_first
        print(f"estimate, {label}: total {tot / 3600:.2f} h")
        for task, r in est.items():
            print(f"    {task:5s} search {r['search'] / 60:6.1f} min, lr selection {r['select'] / 60:6.1f} min, "
                  f"final {r['final'] / 60:6.1f} min; optimizer steps: "
                  + ", ".join(f"{k} {v:,}" for k, v in r["steps"].items()))
    return total_first
