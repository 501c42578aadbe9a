"""The reports of benchmarks/glue.py: <prefix>.csv (every run), <prefix>.md (the command, protocol,
date, machine, mean ± std per task x method; the search vs uniform LoRA baselines comparison when its
methods are there) and <prefix>_pareto.png (trainable parameters vs dev score per task)."""
from __future__ import annotations

import csv
import datetime
import io
import math
import os
import platform
import statistics
import time
from pathlib import Path

from nas.search import SearchConfig

from _glue_bench import CSV_FIELDS, Bench
from _glue_methods import head_params, lora_ranks
from _runs_archive import where

METHOD_NOTES = {  # method-name prefix -> its line in the protocol
    "heterolora": "- HeteroLoRA: the pool is SPACES['heterolora'] (r=8 LoRA on every projection + the 4 "
                  "shortcuts); budget 25% of the pool's parameters. Static: proxy grad-norm on 4 training "
                  "batches, proxies.allocate. Dynamic: the whole pool built, allocation='dynamic', re-scored "
                  "every 1/5 epoch with the live grad-norm.",
    "peft-lora@": "- peft-lora@B: the uniform PEFT LoRA rank (on query,value or on all attention projections) "
                  "whose size is closest to the more-search@B plan's; alpha = 2 x rank, as our LoRA. Every "
                  "method, PEFT included, trains in nas.train's loop.",
    "new-search@": "- new-search@B: SearchConfig(strategy='supernet'), old-search@B: strategy='trials' "
                   "(today's engine), same budget and settings; (a) peft-qv@B: PEFT LoRA on query,value, "
                   "the largest rank that fits the new plan's size (rank 1 on the top layers where it does "
                   "not fit on every layer; peft-qv-all@B: the rank closest to the plan's size on every "
                   "layer); (b) widest-lora@B: PEFT LoRA on the widest placement where rank 1 fits within "
                   "the new plan's size (all linear layers, else "
                   "all attention projections, else query,value, else value, else value on the top layers), at "
                   "the largest rank that fits (never above the plan's size); (b') mlp-lora@B: the same on "
                   "the MLP's projections (the top layers where rank 1 does not fit on all). alpha = 2 x rank. "
                   "Every method, PEFT included, trains in nas.train's loop.",
}


def _fmt_params(n) -> str:
    n = float(n)
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def _ms(values, scale=100.0) -> str:
    vals = [v * scale for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.1f} ± {sd:.1f}" + ("" if len(vals) > 1 else " (n=1)")


def kept_line(md: Path, start: str, line: str) -> str:
    """The line of the report ``md`` that begins with ``start`` where there is one, else ``line``: a
    report rewritten from saved runs keeps the date and machine they were made on."""
    old = md.read_text().splitlines() if md.is_file() else []
    return next((x for x in old if x.startswith(start)), line)


def summarize(rows: list[dict]) -> dict[tuple[str, str], dict]:
    groups: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r["phase"] != "final":
            continue
        g = groups.setdefault((r["task"], r["method"]), {"runs": []})
        g["runs"].append(r)
    for g in groups.values():
        runs = g["runs"]
        first = runs[0]
        mem = [r["step_tensor_peak_bytes"] for r in runs if r.get("step_tensor_peak_bytes")]
        cuda = [r["peak_memory_bytes"] for r in runs if r.get("peak_memory_kind") == "cuda_allocated"]
        g.update(family=first["family"], variant=first["variant"], lr=first["lr"],
                 holdout=first["holdout_score"], params=first["trainable_params"],
                 adapter_params=first["adapter_params"], main_metric=first["main_metric"],
                 scores=[r["score"] for r in runs], by_seed={r["seed"]: r["score"] for r in runs},
                 f1=[r.get("f1") for r in runs],
                 acc=[r.get("accuracy") for r in runs],
                 train_time=statistics.fmean(r["train_time_s"] for r in runs if r.get("train_time_s") is not None)
                 if any(r.get("train_time_s") is not None for r in runs) else None,
                 search_time=first.get("search_time_s"), search_multiple=first.get("search_multiple"),
                 spec=first["spec"],
                 memory=(max(cuda) if cuda else (mem[0] if mem else None)),
                 memory_kind="CUDA allocator peak" if cuda else "step tensor peak")
        sc = [s for s in g["scores"] if s is not None and math.isfinite(s)]
        g["mean"] = statistics.fmean(sc) if sc else float("nan")
        g["std"] = statistics.stdev(sc) if len(sc) > 1 else 0.0
    return groups


TASK_LABEL = {"rte": "RTE", "mrpc": "MRPC", "cola": "CoLA", "sst2": "SST-2"}


def _machine(device) -> str:
    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    dev = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if dev.startswith("cuda") and torch.cuda.is_available() else ""
    return f"{platform.node()}: {cpu}, {os.cpu_count()} CPU cores{gpu}; Python {platform.python_version()}"


def write_reports(bench: Bench, rows: list[dict], prefix: Path, started: float | None = None, *,
                  command: str = "python benchmarks/glue.py", rewrite: bool = False,
                  from_csv: bool = False) -> None:
    """The CSV (not when the rows were read ``from_csv``), md and plot; ``rewrite``: from saved runs,
    keeping the md's date and machine line."""
    import peft
    import torch
    import transformers

    from nas.io import atomic_write_text

    p = bench.proto
    if not from_csv:
        table = io.StringIO(newline="")
        w = csv.DictWriter(table, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(f"{prefix}.csv", table.getvalue())
    groups = summarize(rows)
    names = [m.name for m in bench.methods]
    tasks = [t for t in p.tasks if any((t, n) in groups for n in names)]
    # Methods that train the same thing share its runs: count each run once.
    unique = {(r["phase"], r["task"], r["spec"], r["lr"], r["seed"]): r for r in rows}.values()
    wall = sum(r.get("wall_s") or 0 for r in unique)
    searches = {(r["task"], r["method"]): r["search_time_s"] for r in rows if r.get("search_time_s")}
    threads = sorted({r["threads"] for r in rows if r.get("threads")}) or [bench.threads]  # the runs', not ours
    made = (f"- date: {datetime.date.today().isoformat()}; machine: {_machine(bench.device)}; torch {torch.__version__} "
            f"({'/'.join(map(str, threads))} thread(s) per run), transformers {transformers.__version__}, "
            f"peft {peft.__version__}; device {bench.device or 'auto'}")
    csv_name = Path(f"{prefix}.csv").name
    lines = [
        "# GLUE on the packaged MiniLM: every method, one protocol"
        + {"quick": " (QUICK mode: a check of the script, not results)",
           "search-15min": " (a 15-minute more-search vs PEFT LoRA)",
           "search-vs-baselines": " (the search vs uniform LoRA baselines at the plan's size)",
           "search-vs-baselines-quick": " (the search vs uniform LoRA baselines, QUICK mode: a check of the "
                                        "pipeline, not results)",
           }.get(p.name.removesuffix("-cuda"), ""),
        "",
        f"Made by `{command}`; "
        + (f"its per-run records were not kept: add `--report-only --from-csv` to rewrite this report from {csv_name}."
           if from_csv else "add `--report-only` to rewrite this report from its saved runs."),
        "",
        kept_line(Path(f"{prefix}.md"), "- date: ", made) if rewrite else made,
        f"- compute: {wall / 3600:.2f} h of training/evaluation runs and {sum(searches.values()) / 3600:.2f} h of "
        f"search in the saved runs ({len(unique)} runs: {sum(r['phase'] == 'select' for r in unique)} lr-selection, "
        f"{sum(r['phase'] == 'final' for r in unique)} final)",
        "",
        "## Protocol",
        "",
        f"- model: the packaged MiniLM (BERT, 6 layers, hidden 384, 22.7M parameters); the task head "
        f"({head_params(bench.ctx(tasks[0]).template) if tasks else 770} parameters) is trainable in every method and counted in 'params'.",
        f"- data: {bench.data_dir}; training rows: " + ", ".join(
            f"{TASK_LABEL.get(t, t)} {len(bench.ctx(t).data.train):,}" for t in tasks)
        + (f" (fixed subsets, data seed 0: {', '.join(TASK_LABEL.get(t, t) for t in tasks if p.train_rows.get(t))})"
           if any(p.train_rows.get(t) for t in tasks) else " (the full train sets)")
        + "; dev rows: " + ", ".join(
            f"{TASK_LABEL.get(t, t)} {len(bench.ctx(t).data.eval):,}" for t in tasks)
        + (" (a dev subset)" if p.eval_rows else " (the full dev sets)") + ".",
        f"- training, the same for every method: max length {p.max_length} (dynamic padding"
        + (", batches grouped by length" if p.group_by_length else "") + f"), batch {p.batch_size}, "
        + (f"{p.epochs:g} epoch(s)" if len({p.epochs_for(t) for t in tasks}) <= 1 else
           ", ".join(f"{TASK_LABEL.get(t, t)} {p.epochs_for(t):g} epoch(s)" for t in tasks)) + (f" capped at {p.final_max_steps} steps" if p.final_max_steps else "")
        + f", AdamW, {p.scheduler} schedule, warmup {p.warmup_ratio:.0%}, weight decay {p.weight_decay:g}, "
        f"grad-clip 1.0; seeds {', '.join(map(str, p.seeds))} (head init, data order, dropout); "
        f"dev evaluated once per epoch, the last evaluation reported (no early stopping on dev).",
        "- learning rate: picked per method"
        + (f" on {TASK_LABEL.get(p.select_task, p.select_task)} and used for every task"
           if p.select_task else " and task")
        + f" from {{{', '.join(f'{x:g}' for x in p.lr_grid)}}} on held-out TRAIN: {p.holdout:.0%} of the training rows held out (seed 0), one run of {p.select_length()} per lr "
        f"(seed {p.seeds[0]}) on the other {1 - p.holdout:.0%}, scored on <= {p.select_eval_rows} held-out rows by "
        f"the main metric (ties: lower held-out loss). SURM's kind (circulant / kronecker r8 / toeplitz / ldr r1) is "
        f"picked together with the lr the same way. Dev never chooses anything.",
        f"- search: run_search per task and budget ({', '.join(p.budgets)} of the model's "
        f"{bench.ctx(tasks[0]).base_params if tasks else 0:,} parameters), default space and proxy, "
        + (f"trials of {p.search_steps} steps until {p.search_timeout_s / 60:g} min of trial stage, "
           if p.search_timeout_s else f"{p.search_trials} trials x {p.search_steps} steps, ")
        + f"{p.search_evals} evaluations per trial, the engine's default pruner ({SearchConfig.pruner}), "
        f"trials scored on the same held-out TRAIN rows; search seed 0, so one plan per task and budget, "
        f"trained with every seed. 'search s' is the search's wall time.",
        *[note for prefix, note in METHOD_NOTES.items() if any(n.startswith(prefix) for n in names)],
        "- metrics: accuracy (x100); CoLA: Matthews correlation (x100); MRPC: accuracy and F1. mean ± std over "
        "seeds. Memory: the peak tensor memory of one training step (forward + backward + AdamW) on the longest "
        "training batch (torch profiler, CPU), or the CUDA allocator's peak of the run on a GPU.",
        "",
        "## Summary: dev score, mean ± std over seeds",
        "",
    ]
    head = ["method"] + [f"{TASK_LABEL.get(t, t)} {'MCC' if t == 'cola' else 'acc'}" for t in tasks]
    if "mrpc" in tasks:
        head.insert(1 + tasks.index("mrpc") + 1, "MRPC F1")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        cells = [n]
        for t in tasks:
            g = groups.get((t, n))
            cells.append(_ms(g["scores"]) if g else "-")
            if t == "mrpc":
                cells.append(_ms(g["f1"]) if g else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if any(n.startswith("new-search@") for n in names):
        lines += comparison_summary(bench, groups, tasks)
    for t in tasks:
        ctx = bench.ctx(t)
        lines += ["", f"## {TASK_LABEL.get(t, t)} (train {len(ctx.data.train):,}, dev {len(ctx.data.eval):,}; "
                      f"main metric {ctx.data.main_metric})", "",
                  "| method | what is trained | lr (held-out score) | params | dev " + ctx.data.main_metric
                  + (" | dev F1" if t == "mrpc" else "") + " | train s | search s | memory MiB |",
                  "|---|---|---|---|---|" + ("---|" if t == "mrpc" else "") + "---|---|---|"]
        for n in [m.name for m in bench.methods_for(t) if m.name in names]:
            g = groups.get((t, n))
            if not g:
                lines.append(f"| {n} | (not run yet) |")
                continue
            lines.append(
                f"| {n} | {g['spec']} | {g['lr']:g} ({g['holdout'] * 100:.1f}) | {g['params']:,} | "
                f"{_ms(g['scores'])}" + (f" | {_ms(g['f1'])}" if t == "mrpc" else "")
                + f" | {g['train_time']:.0f} | " + (f"{g['search_time']:.0f}" if g["search_time"] else "")
                + " | " + (f"{g['memory'] / 2**20:.0f}" if g["memory"] else "n/a") + " |")
    shared = {}
    for (t, n), g in groups.items():
        shared.setdefault((t, g["spec"], g["lr"]), []).append(n)
    dups = [f"{TASK_LABEL.get(t, t)}: {', '.join(ns)} train the same thing ({s}, lr {lr:g}) and share its runs"
            for (t, s, lr), ns in shared.items() if len(ns) > 1]
    if dups:
        lines += ["", "Shared runs: " + "; ".join(dups) + "."]
    lines += ["", f"Per-run records: {'not kept' if from_csv else where(bench.runs_dir)}; all runs (lr selection "
                  f"included): {csv_name}; plot: {Path(str(prefix) + '_pareto.png').name}."]
    if started is not None:
        lines += [f"This invocation ran {bench.ran} run(s)/search(es) and reused {bench.skipped} in "
                  f"{(time.time() - started) / 60:.1f} min."]
    atomic_write_text(f"{prefix}.md", "\n".join(lines) + "\n")
    plot_pareto(groups, tasks, names, Path(f"{prefix}_pareto.png"))


FAMILY_STYLE = {"baseline": ("tab:gray", "x"), "peft": ("tab:blue", "s"), "ours": ("tab:green", "o"),
                "heterolora": ("tab:purple", "D"), "search": ("tab:red", "*"),
                "peft-matched": ("tab:cyan", "s"), "search-new": ("tab:orange", "*"),
                "peft-widest": ("tab:olive", "s"), "peft-mlp": ("tab:brown", "s"),
                "peft-qv": ("tab:pink", "s")}


def plot_pareto(groups: dict, tasks: list[str], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not tasks:
        return
    cols = min(2, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.8 * rows), squeeze=False)
    for ax, t in zip(axes.flat, tasks):
        pts = []
        for n in names:
            g = groups.get((t, n))
            if not g or not math.isfinite(g["mean"]):
                continue
            color, marker = FAMILY_STYLE.get(g["family"], ("black", "o"))
            x, y, e = g["params"], g["mean"] * 100, g["std"] * 100
            ax.errorbar(x, y, yerr=e, fmt=marker, color=color, ms=8 if marker == "*" else 6, capsize=3)
            dy = (-12, 2, 14)[len(pts) % 3]  # stagger the labels of neighbouring points
            ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, dy), fontsize=6.5,
                        rotation=15, color=color)
            pts.append((x, y))
        front, best = [], -math.inf
        for x, y in sorted(pts):
            if y > best:
                front.append((x, y))
                best = y
        if len(front) > 1:
            ax.step(*zip(*front), where="post", color="k", alpha=0.3, lw=1)
        metric = "MCC" if t == "cola" else "accuracy"
        ax.set(xscale="log", xlabel="trainable parameters (adapters + task head)",
               ylabel=f"dev {metric} (x100)", title=TASK_LABEL.get(t, t))
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    used = {g["family"] for g in groups.values()}
    handles = [plt.Line2D([], [], color=c, marker=mk, ls="", label=f) for f, (c, mk) in FAMILY_STYLE.items()
               if f in used]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120, metadata={"Software": None})  # the same plot, the same bytes
    plt.close(fig)


def paired(x: dict, y: dict) -> list[float]:
    """Per-seed differences x − y (points), over the seeds both ran with a finite score."""
    xs, ys = x.get("by_seed", {}), y.get("by_seed", {})
    return [(xs[s] - ys[s]) * 100 for s in sorted(set(xs) & set(ys)) if math.isfinite(xs[s]) and math.isfinite(ys[s])]


def _p(d: list[float]) -> str:  # a two-sided one-sample t-test of the differences
    if len(d) < 2 or statistics.stdev(d) == 0:
        return ""
    from scipy.stats import ttest_1samp

    return f" (p = {ttest_1samp(d, 0.0).pvalue:.2f})"


def comparison_summary(bench: Bench, groups: dict, tasks: list[str]) -> list[str]:
    """The search vs uniform LoRA baselines: per task and budget, the new plan against the better of
    (a) and (b), today's search and PEFT LoRA r=8, and each search's cost in trainings of its own plan."""
    def cell(g, same=""):
        return f"{_ms(g['scores'])} ({_fmt_params(g['params'])}){same}" if g else "-"

    def same_as(t, b):  # the baselines whose adapters are the plan's: a gap to them is seed noise
        def ranks(k):
            return lora_ranks(bench.spec(t, bench.method(f"{k}@{b}"), build=False))
        plan = ranks("new-search")
        ran = {m.name for m in bench.methods}  # --methods may leave a baseline out
        hits = [tag for tag, k in (("(a)", "peft-qv"), ("(b)", "widest-lora"), ("(b')", "mlp-lora"))
                if plan is not None and f"{k}@{b}" in ran and ranks(k) == plan]
        return f"; = {', '.join(hits)}" if hits else ""

    def cost(g):  # search seconds / the plan's final-run train seconds (same device); the search's own
        if not (g and g["search_time"] and g["train_time"]):
            return "-"
        own = g.get("search_multiple")
        return f"{g['search_time'] / g['train_time']:.2f}x" + (f" ({own:.2f}x)" if own else "")

    lines = ["", "## The new search's plan vs uniform LoRA at its size", "",
             "Dev score mean ± std (trainable parameters, head included; '= (b)': the plan's adapters are that "
             "baseline's, so the gap to it is seed noise). gap = new − the better of (a), (b) "
             "in points of the mean; cost = search seconds / one final training of that plan (same device; "
             "where searches and finals ran as parallel processes sharing it, both are slowed, so the ratio "
             "is approximate), and in brackets the search's own estimate (its stages' time over the full "
             "run's steps x the plan's step time in its trials, one process, so steadier on a shared machine).", "",
             "| task | budget | new plan | (a) PEFT q,v | (b) widest LoRA | gap vs max(a,b) | (b') MLP LoRA "
             "| gap vs max(a,b,b') | (c) today's search | new − (c) | PEFT r8 q,v | new − r8 | new cost | (c) cost |",
             "|" + "---|" * 14]
    gaps, gaps_all, gaps_qv_all, missing, pairs = [], [], [], [], []

    def finite(*gs):
        return [g for g in gs if g and math.isfinite(g["mean"])]

    def diff(x, y):
        return f"{(x['mean'] - y['mean']) * 100:+.1f}" if len(finite(x, y)) == 2 else "-"

    for t in tasks:
        for b in [m.name.split("@", 1)[1] for m in bench.methods_for(t) if m.name.startswith("new-search@")]:
            new, a, w, mlp, old = (groups.get((t, f"{k}@{b}")) for k in (
                "new-search", "peft-qv", "widest-lora", "mlp-lora", "old-search"))
            r8 = groups.get((t, "peft-lora-r8"))
            spec = bench.spec(t, bench.method(f"new-search@{b}"), build=False)
            if spec is not None and spec.info.get("strategy_applied") is False:
                missing.append(f"{t} {b}")
            best = max(finite(a, w), key=lambda g: g["mean"], default=None)
            best_all = max(finite(a, w, mlp), key=lambda g: g["mean"], default=None)
            best_qv_all = max(finite(groups.get((t, f"peft-qv-all@{b}")), w), key=lambda g: g["mean"],
                              default=None)
            for into, ref in ((gaps, best), (gaps_all, best_all), (gaps_qv_all, best_qv_all)):
                if finite(new) and ref:
                    into.append((new["mean"] - ref["mean"]) * 100)
            if finite(new) and best and (d := paired(new, best)):
                pairs.append((f"{TASK_LABEL.get(t, t)} {b}", d))
            lines.append(f"| {TASK_LABEL.get(t, t)} | {b} | {cell(new, same_as(t, b))} | {cell(a)} | {cell(w)} | "
                         f"{diff(new, best)} | {cell(mlp)} | {diff(new, best_all)} | {cell(old)} | {diff(new, old)} | {cell(r8)} | "
                         f"{diff(new, r8)} | {cost(new)} | {cost(old)} |")
    if gaps:
        lines += ["", f"Mean gap of the new plan over the better of (a), (b): {statistics.fmean(gaps):+.2f} points "
                      f"over {len(gaps)} task x budget cell(s) (the search's goal: >= +1.0)."]
    if pairs:
        se = math.sqrt(sum(statistics.stdev(d) ** 2 / len(d) if len(d) > 1 else float("nan")
                           for _, d in pairs)) / len(pairs)
        lines += [f"Paired by seed (same head init, data order and dropout), new − the better of (a), (b): "
                  + "; ".join(f"{name} {statistics.fmean(d):+.1f} ± {statistics.stdev(d) if len(d) > 1 else 0:.1f} "
                              f"over {len(d)} seeds{_p(d)}" for name, d in pairs)
                  + f". The mean gap's standard error: {se:.2f} points."]
    if gaps_qv_all and gaps_qv_all != gaps:
        lines += [f"With (a) on every layer at the rank closest to the plan's size (peft-qv-all: above the "
                  f"plan's size where rank 1 on every layer is): {statistics.fmean(gaps_qv_all):+.2f} points."]
    if gaps_all:
        lines += [f"Over the best of (a), (b), (b'), the best simple placement: {statistics.fmean(gaps_all):+.2f} "
                  f"points over {len(gaps_all)} cell(s)."]
    if bench.inapplicable:
        lines += ["", "Not run ('-'): " + "; ".join(f"{name} on {TASK_LABEL.get(t, t)}: {why}"
                                                  for (t, name), why in sorted(bench.inapplicable.items())) + "."]
    if missing:
        lines += ["", f"**SearchConfig has no `strategy` field in this checkout: the 'new' search ran today's "
                      f"engine** ({', '.join(missing)}); these rows do not measure the super-network search."]
    return lines
