"""Ours vs PEFT LoRA through the SAME transformers.Trainer, and bf16 vs fp32 on this CPU.

Real packaged MiniLM (BERT, 6 layers, hidden 384) on real GLUE MRPC, max length 128, batch 16,
AdamW lr 5e-4, linear schedule, one intra-op thread (the machine is shared: ratios only mean
something side by side):

  peft        LoraConfig(r=8, lora_alpha=16, target_modules=["query","value"],
              modules_to_save=["classifier"], task_type="SEQ_CLS") in nas.train.AdapterTrainer
  ours        the plan {every query and value: lora r 8, alpha 16} via nas.train.prepare
  ours-bf16   the same with bf16=True, bf16_frozen_base=True: frozen base stored in bf16,
              adapters + head fp32 masters
  ours-autocast  bf16=True alone: autocast, the frozen base left in fp32 (re-cast every step)

Timing: short runs of --steps optimizer steps on the same batches, interleaved round-robin for
--rounds rounds; step time = the median over rounds of each run's mean step (StepStats: forward +
backward + optimizer, no evaluation).  Memory: each variant in a fresh process, peak RSS during
its steps minus the RSS before the first step.  Metrics: one run per variant on --metric-train
rows, evaluated on the full dev set.

    python benchmarks/trainer_vs_peft.py [--data-dir ../shared/data/glue] [--rounds 3] [--steps 12]
    python benchmarks/trainer_vs_peft.py --metrics-only     # the metric runs alone
    python benchmarks/trainer_vs_peft.py --report-only      # the md files again, measuring nothing

Writes benchmarks/results/trainer_vs_peft.{csv,json,md} (.json: the command, date, machine,
settings and per-round step times; the md is made from the .csv and .json) and, for the metric
runs, trainer_vs_peft_metrics.{csv,json,md} (--metrics-only writes only these).  --report-only
writes each md again from its kept .csv and .json; a report without its .json (measured before
they were kept) is left as it is.  Running time on 2 shared CPU cores, 1 thread: the kept md's
step medians are 0.46-0.91 s, so the timing part (3 rounds x 12 steps x 4 variants, 4 memory
runs of 6 steps in fresh processes, 16 model loads) takes about 3-4 minutes; the metric runs
(63 steps each, train_s 30-59 s in trainer_vs_peft_metrics.md) about 4 more.
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from search_signal import GLUE  # noqa: E402  (../shared/data/glue beside the repository)

RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = ("peft", "ours", "ours-bf16", "ours-autocast")


def build(variant: str, data, args, **overrides):
    """An AdapterTrainer for ``variant`` (model loaded with the same seeded head)."""
    import torch

    from nas import Plan, discover
    from nas.models import load_model
    from nas.train import TrainConfig, prepare
    from nas.train.callbacks import EvaluateAtEnd
    from nas.train.trainer import trainer_for

    kw = dict(learning_rate=5e-4, per_device_train_batch_size=16, max_length=128, seed=0, progress=False,
              num_train_epochs=1, warmup_ratio=0.06, eval_steps=10**9, export_peft=False,
              bf16=variant in ("ours-bf16", "ours-autocast"), bf16_frozen_base=variant == "ours-bf16",
              device="cpu")
    kw.update(overrides)
    cfg = TrainConfig(**kw)
    torch.manual_seed(0)
    model = load_model(args.model, num_labels=2)
    if variant == "peft":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=["query", "value"],
                                                 modules_to_save=["classifier"], task_type="SEQ_CLS"))
        tr = trainer_for(model, data, cfg)
    else:
        plan = Plan(model={"name_or_path": args.model},
                    modules={m.name: {"type": "lora", "rank": 8, "alpha": 16.0}
                             for m in discover(model).modules if m.role in ("q", "v")})
        tr = prepare(plan, cfg, model=model, data=data)
    tr.remove_callback(EvaluateAtEnd)  # timing runs do not evaluate; metric runs evaluate once
    return tr


def load_data(args, max_train=None):
    from nas.data import load_task
    from nas.models import load_tokenizer

    return load_task("mrpc", load_tokenizer(args.model), data_dir=args.data_dir, max_length=128,
                     max_train_samples=max_train)


def timing(args) -> dict[str, list[float]]:
    data = load_data(args)
    times = {v: [] for v in args.variants}
    for r in range(args.rounds):
        order = args.variants if r % 2 == 0 else list(reversed(args.variants))
        for v in order:
            tr = build(v, data, args, max_steps=args.steps)
            tr.train()
            times[v].append(tr.stats.step_time)
            print(f"round {r} {v}: {tr.stats.step_time * 1000:.0f} ms/step", flush=True)
            del tr
    return times


def memory_child(args) -> None:
    from nas.train.support import rss_bytes

    data = load_data(args)
    tr = build(args.child, data, args, max_steps=args.steps)
    base = rss_bytes()
    tr.train()
    print(json.dumps({"peak_growth": tr.stats.value() - base}))


def metrics(args, variant) -> dict:
    data = load_data(args, args.metric_train)
    tr = build(variant, data, args, learning_rate=args.metric_lr)
    t0 = time.perf_counter()
    tr.train()
    from nas.train.trainer import evaluate_model

    m = evaluate_model(tr.model, data, 64, tr.args.device, tr.autocast_smart_context_manager())
    return {**m, "train_s": time.perf_counter() - t0, "steps": tr.state.global_step}


def metrics_only(args, meta: dict) -> None:
    rows = []
    for v in args.variants:
        m = metrics(args, v)
        rows.append({"variant": v, "lr": args.metric_lr, "train_rows": args.metric_train, "steps": m["steps"],
                     **{k: round(m[k], 4) for k in ("accuracy", "f1", "loss")}, "train_s": round(m["train_s"], 1)})
        print(rows[-1], flush=True)
    print(write_table("trainer_vs_peft_metrics", rows, meta, Path(args.out)))


def made_by(meta: dict) -> str:
    """The md's line under its title: the command that measured it, when and where."""
    note = f" ({meta['command_note']})" if meta.get("command_note") else ""
    return f"Made by `{meta['command']}`{note} on {meta['date']}; machine: {meta['machine']}.\n\n"


def render(name: str, rows: list[dict], meta: dict) -> str:
    """``name``.md from its CSV rows (as read back: strings) and its .json ``meta``."""
    if name == "trainer_vs_peft":
        intro = ("# Ours vs PEFT LoRA through the same transformers.Trainer; bf16 vs fp32 (CPU)\n\n" + made_by(meta)
                 + f"MiniLM-L6 on MRPC, batch 16, max length 128, 1 thread; {meta['rounds']} interleaved rounds of "
                 f"{meta['steps']} steps (median); memory: peak RSS growth over 6 steps in a fresh process; "
                 f"metrics: 1 epoch on {meta['metric_train']} training rows, full dev set (408 rows).\n\n")
        outro = "\nPer-round step times (ms): " + json.dumps(meta["round_ms"]) + "\n"
    else:
        intro = ("# Dev metrics: ours vs PEFT LoRA (same transformers.Trainer), fp32 vs bf16\n\n" + made_by(meta)
                 + f"MiniLM-L6 on MRPC, 1 epoch on {rows[0]['train_rows']} training rows (seeded subset), batch 16, "
                 f"lr {rows[0]['lr']}, full dev set (408 rows).\n\n")
        outro = ""
    head = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    body = "".join("| " + " | ".join(str(r[k]) for k in rows[0]) + " |\n" for r in rows)
    return intro + head + body + outro + "".join(f"\n{n}\n" for n in meta.get("notes", []))


def write_table(name: str, rows: list[dict], meta: dict, res: Path) -> str:
    """``name``.csv and .json (all the md is made from), then the md from them."""
    res.mkdir(parents=True, exist_ok=True)
    with open(res / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (res / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return write_report(name, res)


def write_report(name: str, res: Path) -> str:
    """``name``.md from the kept ``name``.csv and .json: the same bytes every time."""
    meta = json.loads((res / f"{name}.json").read_text())
    with open(res / f"{name}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    md = render(name, rows, meta)
    (res / f"{name}.md").write_text(md)
    return md


def report_only(res: Path) -> int:
    """Every report whose .csv and .json are kept, again; the others are measured records."""
    done = 0
    for name in ("trainer_vs_peft", "trainer_vs_peft_metrics"):
        if (res / f"{name}.json").is_file() and (res / f"{name}.csv").is_file():
            write_report(name, res)
            print(f"wrote {res / name}.md from its .csv and .json")
            done += 1
        elif (res / f"{name}.md").is_file():
            print(f"{res / name}.md: no {name}.json (measured before it was kept): left as it is")
    return 0 if done else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(GLUE), help="GLUE folder with MRPC/ (default: %(default)s)")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--metric-train", type=int, default=1000, help="training rows of the metric runs")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--metric-lr", type=float, default=2e-3, help="learning rate of the metric runs")
    ap.add_argument("--skip-metrics", action="store_true")
    ap.add_argument("--metrics-only", action="store_true",
                    help="only the metric runs, written to trainer_vs_peft_metrics.{csv,json,md}")
    ap.add_argument("--note", action="append", default=[], help="a paragraph for the end of the md (repeatable)")
    ap.add_argument("--out", default=str(RESULTS), help="folder of the results (default: benchmarks/results)")
    ap.add_argument("--report-only", action="store_true",
                    help="write the md files again from their kept .csv and .json, measuring nothing")
    args = ap.parse_args(argv)
    if args.report_only:
        return report_only(Path(args.out))
    import torch

    torch.set_num_threads(1)
    if args.child:
        return memory_child(args)
    from _glue_report import _machine

    argv = sys.argv[1:] if argv is None else argv
    meta = {"command": shlex.join(["python", "benchmarks/trainer_vs_peft.py", *argv]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": _machine("cpu"), "notes": args.note}
    if args.metrics_only:
        return metrics_only(args, meta)
    times = timing(args)
    mem = {}
    for v in args.variants:
        out = subprocess.run([sys.executable, __file__, "--child", v, "--steps", "6", "--model", args.model,
                              "--data-dir", args.data_dir], capture_output=True, text=True, check=True)
        mem[v] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth"]
    mets = {} if args.skip_metrics else {v: metrics(args, v) for v in args.variants}
    rows = []
    ref_t = statistics.median(times["peft"]) if "peft" in times else None
    fp32_t = statistics.median(times["ours"]) if "ours" in times else None
    for v in args.variants:
        t = statistics.median(times[v])
        m = mets.get(v, {})
        rows.append({"variant": v, "step_ms": round(t * 1000, 1),
                     "vs_peft": round(t / ref_t, 3) if ref_t else "", "vs_ours_fp32": round(t / fp32_t, 3) if fp32_t else "",
                     "peak_rss_growth_mb": round(mem[v] / 2**20, 1),
                     "mem_vs_peft": round(mem[v] / mem["peft"], 3) if "peft" in mem and mem["peft"] > 0 else "",
                     "dev_accuracy": round(m.get("accuracy", float("nan")), 4), "dev_f1": round(m.get("f1", float("nan")), 4),
                     "dev_loss": round(m.get("loss", float("nan")), 4), "metric_steps": m.get("steps", "")})
    meta.update(rounds=args.rounds, steps=args.steps, metric_train=args.metric_train,
                round_ms={v: [round(x * 1000) for x in t] for v, t in times.items()})
    print(write_table("trainer_vs_peft", rows, meta, Path(args.out)))


if __name__ == "__main__":
    sys.exit(main())
