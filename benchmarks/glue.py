"""GLUE benchmark: every method on the packaged MiniLM, the same protocol for all.

The entry point; the parts: _glue_methods.py (Protocol, Spec, fixed methods), _glue_search.py
(searched methods, method tables), _glue_train.py (Spec -> Trainer), _glue_bench.py (runs, lr
selection, jobs), _glue_estimate.py (time model), _glue_report.py (csv, md, plot).

Methods of the full protocol (``make_methods``; name -> a builder of what is trained):

  head-only            the task head alone (no adapters)
  peft-lora-r8         PEFT LoRA r=8 (alpha 16) on query,value
  lora-r8              our LoRA r=8 on query,value, as a Plan
  more-N4r4            our MoRe, N=4 blocks of rank 4 on query,key,value (the MoRe paper's GLUE setup)
  surm-best            SURM on query,value: circulant / kronecker(r8) / toeplitz / ldr(r1), the kind
                       picked together with the lr on held-out TRAIN (never dev)
  heterolora-static    SPACES['heterolora'] (r=8 LoRA on every projection + the 4 shortcuts), scored
                       with proxy 'grad-norm', the top set within 25% of the pool's parameters
  heterolora-dynamic   the same pool and 25% budget, allocation='dynamic' (re-scored every 1/5
                       epoch with the live grad-norm, HeteroLoRA's rule)
  more-search@B        run_search at budget B (0.02%, 0.05%, 0.1%, 0.3% of the model; default
                       space; trials score on held-out TRAIN); search wall time recorded
  peft-lora@B          PEFT LoRA with the uniform rank (on query,value or on all attention
                       projections) whose size is closest to the more-search@B plan's

The search vs uniform LoRA baselines comparison (``--protocol search-vs-baselines``,
``comparison_methods``): per task and budget (SST-2 8,000 rows, 1 epoch: 0.1% and 0.02%; MRPC full
train, 3 epochs: 0.1%) new-search@B (SearchConfig strategy 'supernet'), peft-qv@B, widest-lora@B and
mlp-lora@B (PEFT LoRA at the new plan's size on query,value / on the widest placement that fits it /
on the MLP), peft-qv-all@B (query,value on every layer, the rank closest to the plan's size),
old-search@B (strategy 'trials'), and peft-lora-r8; lr grid 5e-4..5e-3, 5 seeds.
benchmarks/search_vs_baselines_parallel.sh runs it in parallel processes on one GPU (--phase
search|select|final with --shard K/N, then --report-only).  ``--protocol search-15min``: a
~15-minute more-search on MRPC against PEFT LoRA (3 seeds).

Protocol (the constants are FULL and QUICK below, and are repeated in the report):
  * data: /work/shared/data/glue; fixed training subsets (data seed 0): SST-2 8,000 rows, CoLA
    2,000, MRPC 1,000, RTE 600 (sized to 2.5 h of 2 CPU cores; it took 3.1 h, see FULL); every dev set in
    full.  Max length 128, batch 16, dynamic padding, batches grouped by length (transformers'
    rule), AdamW, linear schedule with 6% warmup, no weight decay, grad-clip 1.
  * lr: every method's lr (and SURM's kind) is picked from LR_GRID on a held-out 20% of TRAIN
    (TaskData.holdout, seed 0; the part the search holds out too): one short run per (variant,
    lr) with seed 0 on the other 80%, scored on <= 400 held-out rows (main metric, ties: lower
    held-out loss).  FULL picks once per method on SST-2 and uses it for every task
    (Protocol.select_task); SEARCH15 and QUICK pick on their own task.  Dev never chooses anything.
  * final: the picked lr, trained on the whole training subset for EPOCHS epochs, evaluated on
    dev; SEEDS seeds (data order, dropout and head init); mean +- std over seeds.
  * everything resumable: each finished run is saved atomically as its own JSON under
    <runs>/<task>/<phase>/ and skipped on a rerun (keyed by what is trained and every setting
    that decides the result); searches resume their Optuna journal.  <runs> is by default the
    study's folder benchmarks/.cache/runs/glue[/<protocol>]/ (search-vs-baselines:
    .cache/runs/search_vs_baselines/), extracted from benchmarks/results/runs/<study>.tar.xz and
    packed into it again when a run that trains ends; an explicit --runs-dir is used as it is.

    python benchmarks/glue.py                 # the full CPU protocol (prints a time estimate first)
    python benchmarks/glue.py --quick         # <= ~10 min on 2 free cores: checks the script
    python benchmarks/glue.py --estimate-only # just the estimate
    python benchmarks/glue.py --report-only   # tables/plot from the runs saved so far
    python benchmarks/glue.py --device cuda --full   # GPU: 3 seeds, full SST-2 train set
                                              # (-> glue_sst2all_cuda.*, runs in glue/full-sst2all-cuda/)

Writes benchmarks/results/glue.csv (one row per run, lr-selection runs with phase=select),
glue.md (the command, then mean +- std per task x method, with the protocol, date and machine) and
glue_pareto.png (trainable parameters vs dev score per task, log-x); search-15min writes
glue_search_15min.*, search-vs-baselines search_vs_baselines.*; --quick writes
benchmarks/.cache/glue_quick.* (or search_vs_baselines_quick.*) and keeps its runs in
benchmarks/.cache/runs/ (never packed).
--report-only rewrites a report from the saved runs, keeping its date and machine line (the runs
were made then and there); --from-csv takes the runs from the report's CSV instead, for the
reports whose per-run records were not kept (search_vs_baselines, search_vs_baselines_lr_ext).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _glue_bench import DATA_DIR, Bench, csv_rows  # noqa: E402
from _glue_estimate import calibrate, print_estimate  # noqa: E402
from _glue_methods import Protocol  # noqa: E402
from _glue_report import write_reports  # noqa: E402
from nas.options import float_list  # noqa: E402
from _glue_search import BUDGETS, comparison_methods, make_methods  # noqa: E402
from _runs_archive import CACHE, pack, runs_dir  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

# ---- the protocol ---------------------------------------------------------------------------
# Sized to ~2.5 h on 2 free cores at the measured step cost (12.7 ms per padded token at batch 16,
# 2 threads, AMD EPYC dev VM, 2026-11; `--ms-per-token 12.7 --estimate-only` reprints it): 15
# methods x 2 seeds x 4 tasks is 120 final runs, ~75 s each.  SST-2 keeps 8,000 rows
# (short sentences: 500 steps are cheap); the long-sequence tasks get subsets (an RTE step costs
# 5x an SST-2 step), and every method's lr is picked once, on SST-2's held-out train, since
# selecting on RTE/MRPC would cost more than training on them.  Measured 2026-11-23: 3.1 h
# (2.56 h of runs + 0.56 h of searches; SST-2 finals took ~140 s, not ~100 s); to get back to
# 2.5 h, SST-2's 8,000 rows are what to trim.
FULL = Protocol(
    name="full",
    tasks=("rte", "mrpc", "cola", "sst2"),
    seeds=(0, 1),
    epochs=1.0,  # RTE 38, MRPC 63, CoLA 125, SST-2 500 optimizer steps
    lr_grid=(5e-4, 2e-3),
    batch_size=16,
    max_length=128,
    train_rows={"sst2": 8000, "cola": 2000, "mrpc": 1000, "rte": 600},
    holdout=0.2,
    select_steps=80,
    select_eval_rows=400,
    budgets=BUDGETS,
    search_trials=4,  # the proxy plan, its LoRA-preferred variant, then 2 TPE trials
    search_steps=30,
    search_evals=2,
    select_task="sst2",
)
# Checks the script itself (one task, one seed, a few steps per run, dev subset).
QUICK = replace(
    FULL, name="quick", tasks=("mrpc",), seeds=(0,), max_length=64, select_steps=4,
    select_eval_rows=64, final_max_steps=12, eval_rows=128, search_trials=2, search_steps=6,
    select_task=None, train_rows={},
)
# A check of the main job: a ~15-minute more-search on real MRPC (trial stage capped at 13 min;
# the proxy stage and the last running trial make up the rest), its plan trained in full (3 epochs,
# 3 seeds) next to PEFT LoRA r=8 on query,value and PEFT LoRA at the plan's size.  Measured
# 2026-11-23: 2.9 h of runs and 0.25 h of search on 2 CPU cores (15 runs; a final ~16-21 min).
SEARCH_15MIN = replace(
    FULL, name="search-15min", tasks=("mrpc",), seeds=(0, 1, 2), epochs=3.0, budgets=("0.1%",),
    train_rows={}, select_task=None, select_steps=100,  # the full MRPC train set, lr picked on it
    search_trials=1000, search_steps=120, search_evals=3, search_timeout_s=13 * 60,
)
# The search vs uniform LoRA baselines on real data: SST-2's 8,000-row subset for 1 epoch (500
# steps), MRPC's full train set for 3 epochs (690 steps); budgets per task; every lr from a grid
# spanning 5e-4..5e-3, picked on held-out TRAIN with runs as long as a final (150-step runs picked
# 5e-3 for q,v and the widest on MRPC, where every 150-step run sat at the majority class, and
# 5e-3 stalls there over 3 epochs); the searches with the engine's default trial settings.  Sized
# for one GPU in parallel processes: search_vs_baselines_parallel.sh.  5 seeds: the gaps sit near
# the goal's 1 point, and with 3 seeds one method's std reached 3.5 points.  On 2 CPU cores (1
# thread per run, 2026-11-30): 8.6 h of runs and 0.4 h of searches (171 runs; a final takes ~1.5
# min on SST-2, ~6.5 min on MRPC).
SEARCH_VS_BASELINES_BUDGETS = {"sst2": ("0.1%", "0.02%"), "mrpc": ("0.1%",)}
SEARCH_VS_BASELINES = replace(
    FULL, name="search-vs-baselines", tasks=("sst2", "mrpc"), seeds=(0, 1, 2, 3, 4), epochs=1.0,
    task_epochs={"mrpc": 3.0}, lr_grid=(5e-4, 1e-3, 2e-3, 5e-3), train_rows={"sst2": 8000},
    select_steps=None, budgets=("0.1%", "0.02%"), search_trials=10, search_steps=120,
    search_evals=3, select_task=None,
)
# The whole pipeline at a tiny scale (minutes on 2 CPU cores): a check, not results.
SEARCH_VS_BASELINES_QUICK = replace(
    SEARCH_VS_BASELINES, name="search-vs-baselines-quick", seeds=(0,), max_length=64, lr_grid=(5e-4, 5e-3),
    train_rows={"sst2": 400, "mrpc": 400}, select_steps=4, select_eval_rows=32,
    final_max_steps=8, eval_rows=64, search_trials=2, search_steps=6, search_evals=2,
)
PROTOCOLS = {"full": FULL, "quick": QUICK, "search-15min": SEARCH_15MIN,
             "search-vs-baselines": SEARCH_VS_BASELINES}
QUICK_OF = {"search-vs-baselines": SEARCH_VS_BASELINES_QUICK}  # --quick with --protocol P (others: QUICK)
PROTOCOL_METHODS = {"search-15min": ("peft-lora-r8", "more-search@0.1%", "peft-lora@0.1%")}
# protocol -> (the study whose archive keeps its runs, their folder in it, the report prefix)
STUDIES = {"full": ("glue", "", "glue"), "search-15min": ("glue", "search-15min", "glue_search_15min"),
           "search-vs-baselines": ("search_vs_baselines", "", "search_vs_baselines")}
# flags that change neither the runs nor the report (left out of the command a report names)
NOT_IN_COMMAND = {"--report-only": 0, "--from-csv": 0, "--no-calibrate": 0, "--threads": 1, "--ms-per-token": 1}


def protocol_methods(proto: Protocol) -> list:
    if proto.name.startswith("search-vs-baselines"):
        return comparison_methods(SEARCH_VS_BASELINES_BUDGETS)
    methods = make_methods(proto.budgets)
    keep = PROTOCOL_METHODS.get(proto.name)
    return [m for m in methods if m.name in keep] if keep else methods


def default_places(name: str) -> tuple[str | None, Path, Path]:
    """(study, runs folder, report prefix) of protocol ``name`` by default: a quick check's in the
    cache, never packed; a variant (-sst2all, -cuda) in its own folder of its protocol's study."""
    if "quick" in name:
        out = name.replace("-", "_")
        out = f"glue_{out}" if out.startswith("quick") else out
        return None, CACHE / "runs" / out, CACHE / out
    base = max((b for b in STUDIES if name == b or name.startswith(b + "-")), key=len)
    study, sub, prefix = STUDIES[base]
    folder = runs_dir(study) / (sub if name == base else name)
    return study, folder, RESULTS / (prefix + name[len(base):].replace("-", "_"))


def report_command(argv: list[str]) -> str:
    """The command a report names: this one less the flags that change neither its runs nor it."""
    out, skip = [], 0
    for a in argv:
        flag, eq, _ = a.partition("=")
        if skip or flag in NOT_IN_COMMAND:
            skip = (skip - 1) if skip else (0 if eq else NOT_IN_COMMAND[flag])
            continue
        out.append(a)
    return " ".join(["python benchmarks/glue.py", *map(shlex.quote, out)])

# ---- main -------------------------------------------------------------------------------------
def pick_threads(requested: int | None) -> tuple[int, str]:
    cores = os.cpu_count() or 1
    if requested:
        return requested, "as requested"
    load = os.getloadavg()[0]
    if load > 0.5 * cores:  # a busy machine: a 2nd OpenMP thread waiting for a core costs a lot
        return 1, f"the machine is busy (load {load:.1f} on {cores} cores)"
    return cores, f"load {load:.1f} on {cores} cores"


def select_jobs(bench: Bench, phase: str | None, shard: str | None, error) -> list[tuple]:
    """The jobs of this process.  Without --phase: all, and --shard K/N keeps every N-th final
    run (shards other than 0 need the searches and selections done).  With --phase: that phase's
    jobs, every N-th from the K-th, once the phases before it are done."""
    jobs = bench.jobs()
    k, n = 0, 1
    if shard:
        try:
            k, n = map(int, shard.split("/"))
            assert 0 <= k < n
        except (ValueError, AssertionError):
            error(f"--shard {shard!r}: expected K/N with 0 <= K < N, e.g. 0/2")
    if phase:
        order = ("search", "select", "final")
        before = [j for j in jobs if order.index(j[0]) < order.index(phase)]
        if not all(bench.done(j) for j in before):
            error(f"--phase {phase}: the phases before it are not finished; run --phase "
                  f"{order[order.index(phase) - 1]} first")
        return [j for j in jobs if j[0] == phase][k::n]
    if not shard:
        return jobs
    before = [j for j in jobs if j[0] != "final"]
    if k and not all(bench.done(j) for j in before):
        error(f"--shard {shard}: searches or lr selections are not finished yet; "
              f"run --shard 0/{n} first until its final runs begin")
    return before + [j for j in jobs if j[0] == "final"][k::n]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protocol", choices=PROTOCOLS, default="full",
                    help="full (the GLUE table: 4 tasks, 15 methods), quick (checks the script: MRPC, "
                         "1 seed, a few steps), search-15min (a 15-min search on MRPC vs PEFT, 3 seeds) "
                         "or search-vs-baselines (the search vs uniform LoRA baselines at the plan's "
                         "size; benchmarks/search_vs_baselines_parallel.sh runs it)")
    ap.add_argument("--quick", action="store_true", help="the protocol's quick check "
                    "(search-vs-baselines: search-vs-baselines-quick; others: quick)")
    ap.add_argument("--phase", choices=("search", "select", "final"),
                    help="only this phase's jobs (with --shard: every N-th of them); the phases "
                         "before it must be done (search_vs_baselines_parallel.sh runs them in turn)")
    ap.add_argument("--full", action="store_true", help="the full SST-2 training set (for a GPU run)")
    ap.add_argument("--device", default=None, help="TrainConfig.device: cpu, cuda (at least 3 seeds by default)")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--lr-grid", type=float_list, metavar="LR,LR,...",
                    help="the lr grid of the selection instead of the protocol's (e.g. to test past its "
                         "edge when a method picks the largest rate); use its own --runs-dir and --out")
    ap.add_argument("--tasks", nargs="+", help="a subset of the protocol's tasks")
    ap.add_argument("--methods", nargs="+", help="a subset of the methods (names as in the table)")
    ap.add_argument("--data-dir", default=DATA_DIR)
    ap.add_argument("--runs-dir", help="per-run JSONs (default: the protocol's study folder under "
                    "benchmarks/.cache/runs/, from and packed into benchmarks/results/runs/<study>.tar.xz)")
    ap.add_argument("--out", help="report prefix (default benchmarks/results/glue, glue_search_15min, "
                    "search_vs_baselines; quick checks: benchmarks/.cache/...)")
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores, 1 on a busy machine)")
    ap.add_argument("--shard", metavar="K/N",
                    help="run every N-th final run from the K-th (0-based), e.g. two processes with "
                         "--threads 1 --shard 0/2 and --shard 1/2; shards other than 0 need the "
                         "searches and lr selections done (run shard 0 first until its finals begin)")
    ap.add_argument("--estimate-only", action="store_true")
    ap.add_argument("--no-calibrate", action="store_true", help="skip timing a few steps for the estimate")
    ap.add_argument("--ms-per-token", type=float, metavar="MS",
                    help="estimate with this step cost per padded token instead of timing it now "
                         "(for sizing a protocol while the machine is busy)")
    ap.add_argument("--report-only", action="store_true", help="write the reports from the saved runs")
    ap.add_argument("--from-csv", action="store_true", help="with --report-only: the runs from the "
                    "report's CSV (where the per-run records were not kept)")
    args = ap.parse_args(argv)
    if args.from_csv and not args.report_only:
        ap.error("--from-csv goes with --report-only")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations via peft
    import torch
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    proto = PROTOCOLS[args.protocol]
    if args.quick:
        proto = QUICK_OF.get(args.protocol, QUICK)
    if args.full:
        proto = replace(proto, name=f"{proto.name}-sst2all", train_rows={})
    if args.device and args.device.startswith("cuda"):  # own runs and reports: timings differ
        proto = replace(proto, name=f"{proto.name}-cuda", seeds=proto.seeds if args.quick or len(proto.seeds) >= 3 else (0, 1, 2))
    if args.seeds:
        proto = replace(proto, seeds=tuple(args.seeds))
    if args.lr_grid:
        proto = replace(proto, lr_grid=args.lr_grid)
    if args.tasks:
        bad = set(args.tasks) - set(proto.tasks)
        if bad:
            ap.error(f"tasks {sorted(bad)} are not in the protocol {list(proto.tasks)}")
        proto = replace(proto, tasks=tuple(t for t in proto.tasks if t in args.tasks))
    methods = protocol_methods(proto)
    if args.methods:
        known = {m.name for m in methods}
        bad = set(args.methods) - known
        if bad:
            ap.error(f"unknown methods {sorted(bad)}; known: {sorted(known)}")
        methods = [m for m in methods if m.name in args.methods]
    threads, why = pick_threads(args.threads)
    torch.set_num_threads(threads)
    study, runs, prefix = default_places(proto.name)
    runs = Path(args.runs_dir) if args.runs_dir else runs
    prefix = Path(args.out) if args.out else prefix
    command = report_command(sys.argv[1:] if argv is None else argv)
    bench = Bench(proto, methods, runs, device=args.device, data_dir=args.data_dir, threads=threads)
    print(f"protocol {proto.name}: tasks {', '.join(proto.tasks)}; seeds {list(proto.seeds)}; "
          "epochs " + ", ".join(f"{t} {proto.epochs_for(t):g}" for t in proto.tasks)
          + f"{f' (max {proto.final_max_steps} steps)' if proto.final_max_steps else ''}; "
          f"lr grid {list(proto.lr_grid)} (runs of {proto.select_length()} on {proto.holdout:.0%} held-out train); "
          f"batch {proto.batch_size}, max length {proto.max_length}; {len(methods)} methods; "
          f"torch threads {threads} ({why}); runs in {runs}", flush=True)
    started = time.time()
    if args.report_only:
        if args.from_csv and not Path(f"{prefix}.csv").is_file():
            ap.error(f"--from-csv: no {prefix}.csv to read the runs from")
        rows = csv_rows(Path(f"{prefix}.csv")) if args.from_csv else bench.rows()
        write_reports(bench, rows, prefix, command=command, rewrite=True, from_csv=args.from_csv)
        print(f"wrote {'' if args.from_csv else f'{prefix}.csv, '}{prefix}.md, {prefix}_pareto.png")
        return 0
    if args.ms_per_token:
        calibration = (0.0, args.ms_per_token / 1000)
    else:
        calibration = None if args.no_calibrate else calibrate(bench)
    print_estimate(bench, calibration, "given" if args.ms_per_token else "measured now")
    if args.estimate_only:
        return 0
    jobs = select_jobs(bench, args.phase, args.shard, ap.error)
    bar = tqdm(jobs, desc="runs", unit="run", dynamic_ncols=True, disable=None)  # off without a tty
    try:
        for job in bar:
            bar.set_postfix_str(f"{job[0]} {job[1]} {job[2]}", refresh=True)
            line = bench.execute(job)
            if line:
                tqdm.write(line)
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: every finished run is saved; run the same command again to resume",
              file=sys.stderr)
        return 130
    finally:
        if bench.ran and study and not args.runs_dir:  # the same runs pack to the same bytes
            pack(study)
    bar.close()
    if args.phase or args.shard:  # one of several processes: --report-only writes the reports
        print(f"done in {(time.time() - started) / 60:.1f} min ({bench.ran} new, {bench.skipped} reused)")
        return 0
    write_reports(bench, bench.rows(), prefix, started, command=command)
    print(f"done in {(time.time() - started) / 60:.1f} min ({bench.ran} new, {bench.skipped} reused); "
          f"wrote {prefix}.csv, {prefix}.md, {prefix}_pareto.png")
    print(Path(f"{prefix}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
