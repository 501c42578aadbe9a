"""Wall time of the finalist stage of the default search (--strategy supernet) on 1 and on 2 CPU
workers (one torch thread each: OMP_NUM_THREADS=1), on the same search, and whether both return the
same plan.

The packaged MiniLM on the bundled SST-2 sample (or ../shared/data/glue/SST-2 with --data glue),
--max-train-samples rows.  One worker runs the whole search first (its finalist stage is the
1-worker time).  For N workers, the study's super-network and scoring (trials, sizes, start) are
copied into a fresh journal with the output folder, and N copies of the same command with --resume
run the finalists again from there: the same finalists, at the same sizes, split over N processes.
The stage's wall time is from its first finalist trial's start to its last one's end (the study's
timestamps); the trials' own time summed is the compute.  Exits 1 when a plan differs.

    python benchmarks/finalists_speedup.py --max-train-samples 2000 --n-finalists 4 --cost-budget 1.5
        # -> benchmarks/results/finalists_speedup.md (the command at the top); minutes on an idle
        #    machine with at least 2 cores: run it on one, the times are meaningless on a busy one
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # this checkout's nas, installed or not
RESULTS = ROOT / "benchmarks" / "results"
STUDY = "more-search"


def search_cmd(args, out: Path, storage: Path, resume: bool) -> list[str]:
    data = ["--task", "sst2-sample"] if args.data == "sample" else \
        ["--task", "sst2", "--data-dir", str(args.glue_dir)]
    return [sys.executable, "-m", "nas.cli.search", "--model", "minilm", *data,
            "--max-train-samples", str(args.max_train_samples), "--max-length", str(args.max_length),
            "--n-finalists", str(args.n_finalists), "--cost-budget", str(args.cost_budget),
            "--seed", str(args.seed), "--device", "cpu", "-q", "--storage", f"journal:{storage}",
            "-o", str(out), *(["--resume"] if resume else [])]


def run_workers(cmd: list[str], n: int, log: Path) -> float:
    """``n`` copies of ``cmd`` at once, one thread each; their wall time."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    t0, procs = time.perf_counter(), []
    for i in range(n):
        f = open(log.with_name(f"{log.name}.{i}"), "w")
        procs.append((subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True), f))
    for p, f in procs:
        p.wait()
        f.close()
        if p.returncode:
            sys.exit(f"a worker failed ({p.returncode}): {f.name}\n{Path(f.name).read_text()[-3000:]}")
    return time.perf_counter() - t0


def load(storage: Path, name: str):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(storage))))


def copy_before_finalists(src_out: Path, src: Path, dst_out: Path, dst: Path) -> None:
    """The search up to its finalists in a fresh journal and output folder: the scoring study whole,
    the super-network's job and the agreed sizes; no finalist and no report."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shutil.copytree(src_out, dst_out, ignore=shutil.ignore_patterns("plan.json", "report.md", "*.png", "lr_*"))
    storage = JournalStorage(JournalFileBackend(str(dst)))
    for name, keep in ((f"{STUDY}.scoring", lambda t: True),
                       (f"{STUDY}.stages", lambda t: t.user_attrs.get("job", "").startswith("supernet"))):
        old = load(src, name)
        new = optuna.create_study(study_name=name, storage=storage, direction="minimize")
        for k, v in old.user_attrs.items():
            new.set_user_attr(k, v)
        new.add_trials([t for t in old.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if keep(t)])
    new = optuna.create_study(study_name=STUDY, storage=storage, direction="minimize")
    new.set_user_attr("settings", load(src, STUDY).user_attrs["settings"])


def finalist_stage(storage: Path) -> dict:
    from optuna.trial import TrialState

    ts = [t for t in load(storage, STUDY).get_trials(deepcopy=False) if "rung" in t.user_attrs
          and t.state == TrialState.COMPLETE]
    start, end = min(t.datetime_start for t in ts), max(t.datetime_complete for t in ts)
    per = {}
    for t in ts:
        per[t.user_attrs["worker"]["pid"]] = per.get(t.user_attrs["worker"]["pid"], 0) + 1
    return {"trials": len(ts), "rungs": len({t.user_attrs["rung"] for t in ts}),
            "wall_s": (end - start).total_seconds(),
            "compute_s": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in ts),
            "per_worker": sorted(per.values(), reverse=True)}


def plan_key(out: Path):
    p = json.loads((out / "plan.json").read_text())
    return [p["modules"], p["shortcuts"], p["training"]["lr"]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["sample", "glue"], default="sample",
                    help="the bundled SST-2 sample, or ../shared/data/glue/SST-2")
    ap.add_argument("--glue-dir", type=Path, default=ROOT.parent / "shared" / "data" / "glue")
    ap.add_argument("--max-train-samples", type=int, default=2000)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--n-finalists", type=int, default=4)
    ap.add_argument("--cost-budget", type=float, default=1.5, help="enough for the finalists to split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", default="2", help="worker counts to compare with one, e.g. 2,4")
    ap.add_argument("--work", type=Path, help="folder for the searches (default: a temporary one, removed)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of finalists_speedup.md")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    work = args.work or Path(tempfile.mkdtemp(prefix="finalists-speedup-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        one = work / "w1"
        t_one = run_workers(search_cmd(args, one, work / "w1.journal", False), 1, work / "w1.log")
        rows = [{"workers": 1, "process_s": t_one, **finalist_stage(work / "w1.journal"), "plan": plan_key(one)}]
        for n in (int(x) for x in args.workers.split(",")):
            out, journal = work / f"w{n}", work / f"w{n}.journal"
            copy_before_finalists(one, work / "w1.journal", out, journal)
            t = run_workers(search_cmd(args, out, journal, True), n, work / f"w{n}.log")
            rows.append({"workers": n, "process_s": t, **finalist_stage(journal), "plan": plan_key(out)})
        sizes = json.loads((one / "stage_sizes.json").read_text())["sizes"]
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    same = all(r["plan"] == rows[0]["plan"] for r in rows)
    from _glue_report import _machine

    lines = [f"# Finalist stage on 1 and {args.workers} CPU worker(s) (one thread each)", "",
             f"Made by `{shlex.join(['python', 'benchmarks/finalists_speedup.py', *argv])}` on "
             f"{time.strftime('%Y-%m-%d %H:%M')}; machine: {_machine('cpu')}; see the script's docstring.", "",
             f"Packaged MiniLM, {'bundled SST-2 sample' if args.data == 'sample' else 'GLUE SST-2'}, "
             f"{args.max_train_samples} train rows, max length {args.max_length}; {sizes['finalists']} finalist "
             f"candidates, {sizes['finalist_step_budget']} finalist steps over {sizes['rungs']} rungs. "
             f"Same plan on every worker count: **{'yes' if same else 'NO'}**.", "",
             "| workers | finalist trials | rungs | stage wall (s) | speed-up | trials' compute (s) | "
             "trials per worker | worker processes' wall (s) |", "|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['trials']} | {r['rungs']} | {r['wall_s']:.1f} | "
                     f"{rows[0]['wall_s'] / r['wall_s']:.2f} | {r['compute_s']:.1f} | "
                     f"{', '.join(map(str, r['per_worker']))} | {r['process_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finalists_speedup.md").write_text(text)
    print(text)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
