"""proxy_quality's tables: <name>.{csv,md} from the per-task results, kept in <name>.json so that
--report-only writes them again (the same bytes) without measuring."""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np

import proxies

TRIAL_STEPS = 200  # a default short search trial: 200 steps, batch 16, max_len 128


def write_tables(results, out: Path, notes=(), name: str = "proxy_quality"):
    """<name>.json (the results and notes: all the tables are made from), then the tables from it."""
    data = {"notes": list(notes), "results": results}
    (out / f"{name}.json").write_text(json.dumps(data, indent=1, default=float) + "\n")
    return write_report(out, name)


def made_by_lines(results) -> list[str]:
    """One line per run that measured these results: its command, date and machine."""
    runs: dict[tuple, list[str]] = {}
    for res in results:
        m = res.get("made_by") or {}
        key = (m.get("command"), m.get("date"), m.get("machine"))
        runs.setdefault(key, []).append(res["task"])
    return [f"Made by `{cmd}` ({', '.join(tasks)}) on {date}; machine: {machine}." if cmd else
            f"Made by `benchmarks/proxy_quality.py` ({', '.join(tasks)}; its command, date and machine were not "
            "recorded)." for (cmd, date, machine), tasks in runs.items()]


def write_report(out: Path, name: str = "proxy_quality"):
    """<name>.csv and <name>.md from the kept <name>.json."""
    data = json.loads((out / f"{name}.json").read_text())
    results, notes = data["results"], data["notes"]
    rows = []
    for res in results:
        for proxy, r in res["proxies"].items():
            rows.append({"proxy": proxy, "task": res["task"], "spearman": r["spearman"], "p_value": r["p_value"],
                         "n_modules": len(res["modules"]), "scoring_s": r["seconds"],
                         "train_step_s": res["train_step_seconds"], "time_per_train_step": r["steps_equivalent"],
                         "trial_fraction": r["trial_fraction"]})
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    names = sorted({r["proxy"] for r in rows})
    mean_rho = {n: statistics.fmean(r["spearman"] for r in rows if r["proxy"] == n) for n in names}
    best = max(names, key=lambda n: mean_rho[n])
    cfg = results[0]["config"]
    lines = [
        "# Proxy quality: do proxy scores rank the modules that matter?",
        "",
        *made_by_lines(results),
        "",
        "On the packaged MiniLM-L6 (BERT, 6 layers, hidden 384), "
        f"CPU, {cfg['threads']} thread(s), machine shared with other jobs (timings are noisy).",
        "",
        f"- Proxy scores: `proxies.score_candidates` on the whole default space "
        f"(SPACES['default'], all kinds incl. shortcuts), {cfg['score_batches']} batches of {cfg['batch']} "
        f"from the task's TRAIN split; the per-module score is its `lora r8` candidate's score.",
        *([f"- `trained` (the importance the super-network search ranks with, not zero-cost): the default "
           f"space as one super-network (every candidate an elastic "
           f"super-adapter, ranks nested) + the head, {cfg['supernet_steps']} AdamW steps (lr {cfg['lr']}) on "
           f"the training part, each on a random sub-plan within {cfg['supernet_budget']} of the model "
           f"(PlanSampler: the largest, then random ones); AdaLoRA's smoothed sensitivity |θ·∇θ| x its "
           f"uncertainty after a {cfg['supernet_steps'] // 10}-step warm-up, summed over each candidate's "
           f"tensors and normalised by its kind's median; its time includes the training."]
          if cfg.get("supernet_steps") else []),
        f"- Measured importance: per module, LoRA r=8 on that module alone + the classifier head "
        f"({'warm-started on frozen features, ' if cfg['head_steps'] else 'from the same random init, '}"
        f"{'frozen' if cfg['freeze_head'] else 'trained'}), {cfg['steps']} steps of batch {cfg['batch']} "
        f"(length-bucketed, max_len {cfg['max_len']}, AdamW lr {cfg['lr']}, dropout off); importance = "
        f"head-only validation loss - validation loss with the module (same data order and head init), "
        f"averaged over the evaluations at {cfg['eval_fracs']} of the run, on {cfg['n_val']} held-out "
        f"TRAIN examples (the GLUE dev set is never used); mean over {cfg['seeds']} seed(s). "
        f"Modules (subsampled to fit ~30 min on 2 shared cores): layers {cfg['layers']} x "
        f"{cfg['roles']} = {len(results[0]['modules'])} per task. Frozen layers below the adapted "
        f"module are computed once and cached (exact).",
        f"- Timing: scoring the whole default space vs one training step (batch 16 padded to 128, "
        f"LoRA r8 on all 36 modules, AdamW) measured in the same process; a default short search "
        f"trial is assumed to be {TRIAL_STEPS} such steps, and the scoring must cost <= 5% of it.",
        "",
        "| proxy | task | Spearman | p-value | scoring time (s) | time / train step | % of a 200-step trial |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["proxy"], r["task"])):
        lines.append(f"| {r['proxy']} | {r['task']} | {r['spearman']:+.3f} | {r['p_value']:.3g} | "
                     f"{r['scoring_s']:.1f} | {r['time_per_train_step']:.2f} | {100 * r['trial_fraction']:.2f}% |")
    lines += ["", "Mean Spearman over tasks: " + ", ".join(f"`{n}` {mean_rho[n]:+.3f}" for n in
                                                           sorted(names, key=lambda n: -mean_rho[n])),
              "", f"Best on average: `{best}` (DEFAULT_PROXY is `{proxies.DEFAULT_PROXY}`).", ""]
    over = [r for r in rows if r["trial_fraction"] > 0.05]
    lines.append("Every proxy scores the whole space in <= 5% of a default trial." if not over else
                 "Over 5% of a trial: " + ", ".join(f"{r['proxy']}/{r['task']}" for r in over))
    lines += ["", "## Notes", ""]
    for res in results:
        imp = np.array(list(res["importance"].values()))
        head = statistics.fmean(np.mean(v) for v in res["head_only_val_loss"].values())
        lines.append(f"- {res['task']}: head-only validation loss {head:.4f} (ln 2 = 0.6931); importance "
                     f"range {imp.min():+.4f} .. {imp.max():+.4f}, median |importance| "
                     f"{np.median(np.abs(imp)):.5f}; run took {res['seconds']:.0f}s; one training step "
                     f"{res['train_step_seconds']:.1f}s.")
        if abs(head - math.log(2)) < 0.005 and np.median(np.abs(imp)) < 5e-4:
            lines.append(f"  {res['task']} stays at chance level in this short budget: its importances are "
                         f"~0 and its correlations are mostly noise; weigh MRPC more.")
    lines += [f"- {n}" for n in notes]
    for res in results:
        lines += ["", f"## {res['task']}: measured importance (head-only val loss "
                      f"{statistics.fmean(np.mean(v) for v in res['head_only_val_loss'].values()):.4f})", "",
                  "| module | importance | " + " | ".join(names) + " |",
                  "|---|---:|" + "---:|" * len(names)]
        for m in res["modules"]:
            cells = []
            for n in names:
                sc = res["proxies"][n]["scores"]
                k = next(k for k in sc if k.startswith(m + "|lora r8"))
                cells.append(f"{sc[k]:.3g}")
            lines.append(f"| {m.split('layer.')[-1]} | {res['importance'][m]:+.4f} | " + " | ".join(cells) + " |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:len(rows) + 14]))
    print(f"best proxy on average: {best} ({mean_rho[best]:+.3f})")
    # the acceptance check: the default proxy scores the whole space in <= 5% of a default trial
    default_rows = [r for r in rows if r["proxy"] == proxies.DEFAULT_PROXY]
    for r in default_rows:
        assert r["trial_fraction"] <= 0.05, f"{r['proxy']} on {r['task']}: {100 * r['trial_fraction']:.1f}% > 5%"
    return 0
