"""Our trainer with a LoRA plan vs PEFT LoRA, through the SAME training loop.

Real packaged MiniLM (BERT, 6 layers, hidden 384) on real GLUE MRPC (3,668 train / 408 dev):

  PEFT:  LoraConfig(r=8, lora_alpha=16, lora_dropout=0, target_modules=["query", "value"],
         modules_to_save=["classifier"], task_type="SEQ_CLS") -> nas.train.Trainer
  ours:  the plan {every query and value: {"type": "lora", "rank": 8, "alpha": 16}}
         -> nas.train.prepare (apply_plan) -> the same nas.train.Trainer

Same seed (same head init, same data order, same dropout stream: each method keeps its own
copy of the seeded torch RNG), AdamW lr 5e-4, linear schedule with 6% warmup, batch 16,
max length 128, dynamic padding.  The two runs are interleaved step by step in one process
(ours, PEFT, PEFT, ours, ...), so both see the same machine load; per-step times are paired
on identical batches.  Several seeds run as parallel processes (--jobs).

Memory, measured two ways (both methods, identical batches: the 16 longest training rows):
  * peak tensor memory of one steady-state training step (forward + backward + AdamW step,
    after a warm-up step), from the torch profiler's memory timeline on CPU;
  * peak RSS (ru_maxrss) of a fresh process that loads the model, builds the method and runs
    3 steps on the longest batch, and its RSS growth over the post-build baseline.

    python benchmarks/trainer_vs_peft.py --data-dir /work/shared/data/glue --epochs 1 --seeds 0 1 --jobs 2

Writes benchmarks/results/trainer_vs_peft.csv and .md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("ours", "peft")


def _setup(args):
    import torch

    torch.set_num_threads(args.threads)
    from nas.data import load_task
    from nas.models import load_tokenizer

    tok = load_tokenizer(None)
    return load_task(args.task, tok, data_dir=args.data_dir, max_length=args.max_length,
                     max_eval_samples=args.max_eval_samples)


def _config(args, seed):
    from nas.train import TrainConfig

    return TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                       max_length=args.max_length, seed=seed, max_steps=args.max_steps,
                       warmup_ratio=0.06, scheduler="linear", weight_decay=0.0, progress=False,
                       device="cpu")


def build(method: str, data, cfg):
    """A Trainer for ``method``; the base model is loaded under the same seed for both."""
    from transformers import set_seed

    from nas import Plan, discover
    from nas.models import load_model
    from nas.train.loop import Trainer, prepare

    set_seed(cfg.seed)
    base = load_model(None, num_labels=data.num_labels)
    if method == "peft":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(base, LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"],
            modules_to_save=["classifier"], task_type="SEQ_CLS"))
        return Trainer(model, data, cfg)
    layout = discover(base)
    plan = Plan(model={"name_or_path": "minilm"},
                modules={m.name: {"type": "lora", "rank": 8, "alpha": 16.0}
                         for m in layout.modules if m.role in ("q", "v")})
    return prepare(plan, cfg, model=base, data=data)


def _trainable(tr) -> int:
    return sum(p.numel() for p in tr.params)


def run_seed(args, seed: int) -> dict:
    """Both methods, interleaved step by step; dev metrics after every epoch."""
    import torch

    data = _setup(args)
    cfg = _config(args, seed)
    trainers = {m: build(m, data, cfg) for m in METHODS}
    torch.manual_seed(seed)
    rng = {m: torch.get_rng_state() for m in METHODS}  # the stream Trainer.run starts from
    total, per_epoch = trainers["ours"].total_steps, trainers["ours"].steps_per_epoch
    times = {m: [] for m in METHODS}
    losses = {m: [] for m in METHODS}
    evals = {m: [] for m in METHODS}
    t0 = time.perf_counter()
    for step in range(total):
        order = METHODS if step % 2 == 0 else METHODS[::-1]
        for m in order:
            tr = trainers[m]
            torch.set_rng_state(rng[m])
            before = tr._step_time
            losses[m].append(tr.train_step())
            times[m].append(tr._step_time - before)  # forward + backward + update
            rng[m] = torch.get_rng_state()
        s = step + 1
        if s % per_epoch == 0 or s == total:
            for m in order:
                evals[m].append({"step": s, **trainers[m].evaluate()})
            print(f"[seed {seed}] step {s}: " + "; ".join(
                f"{m} acc {evals[m][-1]['accuracy']:.4f} f1 {evals[m][-1]['f1']:.4f}" for m in METHODS),
                file=sys.stderr, flush=True)
        if s % 10 == 0:
            el = time.perf_counter() - t0
            print(f"[seed {seed}] {s}/{total} steps, {el:.0f} s, "
                  f"ours {statistics.fmean(times['ours'][-10:]):.3f} s/step, "
                  f"peft {statistics.fmean(times['peft'][-10:]):.3f} s/step", file=sys.stderr, flush=True)
    return {"seed": seed, "steps": total, "n_train": len(data.train), "n_eval": len(data.eval), "steps_per_epoch": per_epoch, "times": times,
            "losses": losses, "evals": evals, "wall_s": time.perf_counter() - t0,
            "trainable": {m: _trainable(trainers[m]) for m in METHODS}}


def _longest_rows(data, k):
    lens = [len(x) for x in data.train["input_ids"]]
    return sorted(range(len(lens)), key=lambda i: -lens[i])[:k]


def profile_memory(args) -> dict:
    """Peak tensor bytes of one steady-state step, from the profiler's CPU memory timeline."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    data = _setup(args)
    rows = _longest_rows(data, args.batch_size)
    out = {}
    for m in METHODS:
        tr = build(m, data, _config(args, 0))
        tr.train_step(rows)  # warm-up: AdamW state exists from here on
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            tr.train_step(rows)
        with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = os.path.join(d, "timeline.json")
            prof.export_memory_timeline(path, device="cpu")
            _, sizes = json.load(open(path))
        out[m] = max(sum(s) for s in sizes)
        del tr, prof
    return out


def rss_child(args, method: str) -> dict:
    import resource

    from nas.train.loop import _rss_bytes

    data = _setup(args)
    tr = build(method, data, _config(args, 0))
    rows = _longest_rows(data, args.batch_size)
    base = _rss_bytes()
    peak = base
    for _ in range(3):
        tr.train_step(rows)
        peak = max(peak, tr.memory.peak, _rss_bytes())
    return {"method": method, "baseline_rss": base, "peak_rss_sampled": peak,
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _child(args, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--data-dir", str(args.data_dir), "--task", args.task,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--max-length", str(args.max_length), "--threads", str(args.threads)]
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    if args.max_eval_samples:
        cmd += ["--max-eval-samples", str(args.max_eval_samples)]
    return subprocess.Popen(cmd + extra)


def _gmean(xs):
    import math

    return math.exp(statistics.fmean(math.log(x) for x in xs))


def summarize(args, seeds: list[dict], mem: dict | None, rss: dict | None) -> None:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in seeds:
        for m in METHODS:
            t = r["times"][m]
            final = r["evals"][m][-1]
            rows.append({
                "seed": r["seed"], "method": m, "epochs": args.epochs, "steps": r["steps"],
                "dev_accuracy": round(final["accuracy"], 4), "dev_f1": round(final["f1"], 4),
                "dev_loss": round(final["loss"], 4),
                "step_time_mean_s": round(statistics.fmean(t), 4),
                "step_time_median_s": round(statistics.median(t), 4),
                "trainable_params": r["trainable"][m],
                "peak_step_tensor_mem_bytes": mem[m] if mem else "",
                "peak_rss_bytes": rss[m]["ru_maxrss"] if rss else "",
                "rss_growth_bytes": rss[m]["peak_rss_sampled"] - rss[m]["baseline_rss"] if rss else "",
            })
    with open(out_dir / "trainer_vs_peft.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    def mean(m, k):
        return statistics.fmean(float(r[k]) for r in rows if r["method"] == m)

    paired = [o / p for r in seeds for o, p in zip(r["times"]["ours"], r["times"]["peft"])]
    lines = [
        "# Our trainer + LoRA plan vs PEFT LoRA (same training loop)",
        "",
        f"Real packaged MiniLM (BERT, 6 layers, hidden 384) on real GLUE {args.task.upper()} "
        f"({seeds[0]['n_train']} train rows, {seeds[0]['n_eval']} dev rows, evaluated after each epoch). LoRA r=8, alpha 16, dropout 0 on every query and "
        f"value; classifier trainable (PEFT: modules_to_save). AdamW lr {args.lr}, linear schedule, "
        f"6% warmup, batch {args.batch_size}, max length {args.max_length}, grad-clip 1.0, "
        f"{args.epochs:g} epoch(s), seeds {', '.join(str(r['seed']) for r in seeds)}. "
        f"CPU, torch {args.threads} thread(s) per process; the two methods alternate step by step "
        f"in one process (seeds in parallel processes) on a shared 2-core machine.",
        "",
        "| seed | method | steps | dev acc | dev F1 | dev loss | step time mean (s) | median (s) | "
        "trainable params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['method']} | {r['steps']} | {r['dev_accuracy']:.4f} | "
                     f"{r['dev_f1']:.4f} | {r['dev_loss']:.4f} | {r['step_time_mean_s']:.3f} | "
                     f"{r['step_time_median_s']:.3f} | {r['trainable_params']:,} |")
    lines += ["", "| | ours | PEFT | ours / PEFT |", "|---|---|---|---|"]
    for k, label in (("dev_accuracy", "dev accuracy (mean over seeds)"), ("dev_f1", "dev F1 (mean)"),
                     ("step_time_mean_s", "step time, mean s")):
        o, p = mean("ours", k), mean("peft", k)
        lines.append(f"| {label} | {o:.4f} | {p:.4f} | {o / p:.3f} |")
    lines.append(f"| step time, paired per-step ratio (geometric mean over {len(paired)} steps) | | | "
                 f"{_gmean(paired):.3f} |")
    if mem:
        lines.append(f"| peak tensor memory of one training step (torch profiler, CPU), MiB | "
                     f"{mem['ours'] / 2**20:.1f} | {mem['peft'] / 2**20:.1f} | {mem['ours'] / mem['peft']:.3f} |")
    if rss:
        lines.append(f"| peak RSS of a fresh process (ru_maxrss), MiB | {rss['ours']['ru_maxrss'] / 2**20:.1f} | "
                     f"{rss['peft']['ru_maxrss'] / 2**20:.1f} | "
                     f"{rss['ours']['ru_maxrss'] / rss['peft']['ru_maxrss']:.3f} |")
        go = rss['ours']['peak_rss_sampled'] - rss['ours']['baseline_rss']
        gp = rss['peft']['peak_rss_sampled'] - rss['peft']['baseline_rss']
        lines.append(f"| RSS growth during 3 steps over the post-build baseline, MiB | {go / 2**20:.1f} | "
                     f"{gp / 2**20:.1f} | {go / gp:.3f} |" if gp > 0 else
                     f"| RSS growth during 3 steps, MiB | {go / 2**20:.1f} | {gp / 2**20:.1f} | n/a |")
    lines += ["", "Dev metrics per epoch:", ""]
    for r in seeds:
        for m in METHODS:
            ev = ", ".join(f"step {e['step']}: acc {e['accuracy']:.4f} / F1 {e['f1']:.4f}" for e in r["evals"][m])
            lines.append(f"- seed {r['seed']}, {m}: {ev}")
    diffs = [abs(a - b) for r in seeds for a, b in zip(r["losses"]["ours"], r["losses"]["peft"])]
    lines += ["", f"Training losses, ours vs PEFT at the same step: mean |difference| "
              f"{statistics.fmean(diffs):.4f} (different LoRA A inits: each library draws its own), "
              f"final-step losses " + ", ".join(
                  f"seed {r['seed']}: {r['losses']['ours'][-1]:.4f} vs {r['losses']['peft'][-1]:.4f}"
                  for r in seeds) + ".", ""]
    lines += [args.note, ""] if args.note else []
    (out_dir / "trainer_vs_peft.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="/work/shared/data/glue")
    ap.add_argument("--task", default="mrpc")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--max-eval-samples", type=int, help="(smoke tests) evaluate on a dev subset")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run as this many parallel processes")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--note", default="", help="a line appended to the report")
    ap.add_argument("--_seed", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_rss", help=argparse.SUPPRESS)
    ap.add_argument("--_mem", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._seed is not None:
        Path(args._json).write_text(json.dumps(run_seed(args, args._seed)))
        return
    if args._rss:
        Path(args._json).write_text(json.dumps(rss_child(args, args._rss)))
        return
    if args._mem:
        Path(args._json).write_text(json.dumps(profile_memory(args)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="trainer_vs_peft_"))
    print(f"intermediate results in {tmp}", file=sys.stderr)
    results, pending = [], list(args.seeds)
    running: list[tuple[int, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < max(1, args.jobs):
            s = pending.pop(0)
            running.append((s, _child(args, ["--_seed", str(s), "--_json", str(tmp / f"seed{s}.json")])))
        for s, p in list(running):
            if p.poll() is not None:
                running.remove((s, p))
                if p.returncode != 0:
                    raise SystemExit(f"seed {s} failed with exit code {p.returncode}")
                results.append(json.loads((tmp / f"seed{s}.json").read_text()))
        time.sleep(2)
    results.sort(key=lambda r: r["seed"])
    mem = rss = None
    if not args.skip_memory:
        p = _child(args, ["--_mem", "--_json", str(tmp / "mem.json")])
        if p.wait() == 0:
            mem = json.loads((tmp / "mem.json").read_text())
        rss = {}
        for m in ("ours", "peft", "peft", "ours"):  # alternate; keep the lower of two runs each
            p = _child(args, ["--_rss", m, "--_json", str(tmp / f"rss_{m}.json")])
            if p.wait() == 0:
                r = json.loads((tmp / f"rss_{m}.json").read_text())
                if m not in rss or r["ru_maxrss"] < rss[m]["ru_maxrss"]:
                    rss[m] = r
    summarize(args, results, mem, rss or None)


if __name__ == "__main__":
    main()
