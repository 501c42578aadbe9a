"""benchmarks/placement_ceiling.py --curves: the held-out loss of short trials of each plan, and
how well it ranks the plans' final accuracy at each step."""
from __future__ import annotations

from pathlib import Path

from _glue_bench import Bench

CURVE_STEPS, CURVE_EVERY = 150, 25  # the first 30% of a search split's 400-step run


def curves(bench: Bench, task: str, table: dict, budget: str, lr: float, seed: int, path: Path,
           run_missing: bool = True) -> dict[str, list]:
    """Per plan of ``budget``: held-out loss every CURVE_EVERY steps of the first CURVE_STEPS of a
    full run's schedule (cut short, as a search's short trial would be), trained on the protocol's
    80% of train and scored on its held-out rows, never dev.  Cached in ``path``."""
    import dataclasses
    import json

    from transformers import TrainerCallback

    from nas.io import atomic_write_text
    from nas.train.trainer import run
    from _glue_train import build_trainer, train_config

    done = json.loads(path.read_text()) if path.is_file() else {}
    ctx = bench.ctx(task)

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            control.should_training_stop = state.global_step >= CURVE_STEPS

    for name, spec, _ in table[budget]:
        key = f"{name} | lr {lr:g} | seed {seed}"
        if key in done or not run_missing:  # --report-only: the cached curves only
            continue
        cfg = dataclasses.replace(train_config(spec, bench.proto, task=task, lr=lr, seed=seed, select=False,
                                               device=None), eval_steps=CURVE_EVERY)
        trainer = build_trainer(spec, ctx, ctx.sel, cfg)
        trainer.add_callback(Stop())
        done[key] = [(h["step"], h["loss"]) for h in run(trainer).history]
        print(f"curve {key}: " + " ".join(f"{loss:.3f}" for _, loss in done[key]), flush=True)
        atomic_write_text(path, json.dumps(done, indent=1))
    return {k.split(" | ")[0]: v for k, v in done.items() if k.endswith(f"| lr {lr:g} | seed {seed}")}


def curve_lines(curve: dict[str, list], summary: list[dict], budget: str, lr: float) -> list[str]:
    """The curves beside each plan's final dev accuracy, and per step the Spearman correlation of
    (minus) the held-out loss with it: how well a short trial of that length ranks the plans."""
    from scipy.stats import spearmanr

    final = {r["plan"]: r["mean"] for r in summary if (r["budget"], r["lr"]) == (budget, lr) and r["n"]}
    names = [n for n in curve if n in final]
    steps = [st for st, _ in curve[names[0]]]
    lines = [f"## Short trials: held-out loss in the first {CURVE_STEPS} steps (budget {budget}, lr {lr:g})", "",
             "| plan | final dev accuracy | " + " | ".join(f"step {st}" for st in steps) + " |",
             "|---|---:|" + "---:|" * len(steps)]
    for n in sorted(names, key=lambda n: -final[n]):
        lines.append(f"| {n} | {final[n]:.1f} | " + " | ".join(f"{loss:.3f}" for _, loss in curve[n]) + " |")
    rho = [spearmanr([-dict(curve[n])[st] for n in names], [final[n] for n in names])[0] for st in steps]
    lines += ["| Spearman with the final accuracy | | " + " | ".join(f"{r:+.2f}" for r in rho) + " |", ""]
    return lines
