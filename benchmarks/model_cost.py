"""What one training step costs on each packaged model (MPNet-base against MiniLM), fp32 against
bf16, ours against PEFT LoRA through the same transformers.Trainer, on SST-2 and MRPC rows: the
numbers the MPNet studies are sized from, and the FLOP rate behind the roberta-large estimate in
benchmarks/README.md.

Per model: the plan the search returns without a signal at 0.1% (its rule: uniform LoRA r1 on the
MLP where it fits on half the layers, else the widest placement), and PEFT LoRA on query,value at
the nearest size; the head reads the checkpoint's pooling (mean).  Batch 16, max length 128,
grouped by length, all CPU threads.  Timing: --steps optimizer steps per run (StepStats leaves the
first out), variants interleaved over --rounds rounds on the same batches; the median over rounds.
Tokens: the non-padding tokens of the timed steps, so a step time converts to a rate
(tokens/s) and an epoch's time (the epoch's tokens / rate).  FLOP rate: 4 x the base's linear
weights x tokens per second (a frozen base: forward 2NT, input gradients 2NT; Kaplan et al. 2020).

    python benchmarks/model_cost.py [--models minilm mpnet] [--steps 6] [--rounds 2] [--variants ...]

Writes benchmarks/results/model_cost.{md,json} (--name changes the stem).  bf16 pays only on a CPU
with native bf16 (AVX-512 BF16 or AMX): the machine line says whether this one has it.  bf16's dev
metrics are the GPU check's (device_bench.py); on MiniLM they match fp32 (trainer_vs_peft_metrics.md).
Nothing else may run meanwhile: two torch jobs on 2 cores slow each other by up to 10x.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from search_signal import GLUE  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = ("ours", "ours-bf16", "peft", "peft-bf16")
EPOCHS = {"sst2": (8000, 1), "mrpc": (None, 3)}  # the comparison's training rows and epochs
BUDGET = "0.1%"


def rule_plan(name: str, model, budget: str = BUDGET):
    """The plan a search without a signal returns at ``budget`` (nas.baselines.preferred)."""
    from nas.baselines import baselines_at, preferred
    from nas.budget import parse_budget
    from nas.heads import pooling_of
    from search_spaces.anatomy import base_param_count, discover

    layout = discover(model)
    found = baselines_at(layout, parse_budget(budget, base_param_count(model)))
    return found[preferred(found, layout)[0]].plan(layout, model={"name_or_path": name,
                                                                  "pooling": pooling_of(model)})


def query_value(layout) -> tuple[list[str], int]:
    """PEFT's targets on query,value (nas.baselines' placement) and their LoRA parameters per rank."""
    from nas.baselines import placement_modules

    mods = placement_modules(layout, "qv", 0)[1]
    return [m.name for m in mods], sum(m.d_in + m.d_out for m in mods)


def peft_rank(layout, params: int) -> int:
    """PEFT LoRA's rank on query,value nearest ``params`` (ties: the lower)."""
    per_rank = query_value(layout)[1]
    return max(1, min(range(1, 65), key=lambda r: (abs(r * per_rank - params), r)))


def linear_weights(model) -> int:
    """The linear weights of the transformer blocks: N of the 4NT FLOP count (embeddings, pooler
    and head do no per-token matrix product worth counting)."""
    from torch import nn

    from search_spaces.anatomy import find_layers

    _, layers = find_layers(model)
    return sum(m.weight.numel() for layer in layers for m in layer.modules() if isinstance(m, nn.Linear))


def build(name: str, variant: str, data, budget: str = BUDGET, **overrides):
    """(trainer, plan size, linear weights, token counter) for one variant."""
    import torch

    from nas.models import load_model
    from nas.train import TrainConfig, prepare
    from nas.train.callbacks import EvaluateAtEnd
    from nas.train.trainer import trainer_for

    kw = dict(learning_rate=2e-3, per_device_train_batch_size=16, max_length=128, seed=0, progress=False,
              num_train_epochs=1, warmup_ratio=0.06, eval_steps=10**9, export_peft=False, group_by_length=True,
              bf16=variant.endswith("bf16"), device="cpu")
    kw.update(overrides)
    torch.manual_seed(0)
    model = load_model(name, num_labels=data.num_labels, pooling="auto")
    n_lin = linear_weights(model)
    plan = rule_plan(name, model, budget)
    if variant.startswith("peft"):
        from peft import LoraConfig, get_peft_model

        from search_spaces.anatomy import discover

        layout = discover(model)
        r = peft_rank(layout, plan.trainable_params)
        targets, per_rank = query_value(layout)
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=targets,
                                                 modules_to_save=None, task_type="SEQ_CLS"))
        size = r * per_rank
        tr = trainer_for(model, data, TrainConfig(**kw))
        label = f"PEFT LoRA r{r} on query,value"
    else:
        size, label = plan.trainable_params, plan.provenance["baseline"]
        tr = prepare(plan, TrainConfig(**kw), model=model, data=data)
    tr.remove_callback(EvaluateAtEnd)
    tokens: list[int] = []
    tr.model.register_forward_pre_hook(
        lambda mod, args, kwargs: tokens.append(int(kwargs["attention_mask"].sum())) if mod.training else None,
        with_kwargs=True)
    return tr, size, n_lin, tokens, label


def load(name: str, task: str, rows=None):
    from nas.data import load_task
    from nas.models import load_tokenizer

    return load_task(task, load_tokenizer(name), data_dir=GLUE, max_length=128, max_train_samples=rows)


def timing(args) -> list[dict]:
    rows = []
    for name in args.models:
        for task in args.tasks:
            data = load(name, task, EPOCHS[task][0])
            epoch_tokens = sum(len(x) for x in data.train["input_ids"])
            got = {v: [] for v in args.variants}
            for r in range(args.rounds):
                for v in (args.variants if r % 2 == 0 else list(reversed(args.variants))):
                    tr, size, n_lin, tokens, label = build(name, v, data, max_steps=args.steps)
                    tr.train()
                    rate = sum(tokens[1:]) / ((len(tokens) - 1) * tr.stats.step_time)  # first step left out
                    got[v].append({"step_s": tr.stats.step_time, "tok_s": rate, "size": size, "n_lin": n_lin,
                                   "method": label})
                    print(f"{name} {task} round {r} {v}: {tr.stats.step_time:.2f} s/step, {rate:.0f} tokens/s",
                          flush=True)
                    del tr
            steps_per_epoch = -(-len(data.train) // 16)
            for v, runs in got.items():
                step_s = statistics.median(x["step_s"] for x in runs)
                tok_s = statistics.median(x["tok_s"] for x in runs)
                n_train, epochs = len(data.train), EPOCHS[task][1]
                rows.append({"model": name, "task": task, "variant": v, "adapter_params": runs[0]["size"],
                             "step_s": round(step_s, 3), "tokens_per_s": round(tok_s),
                             "gflop_per_s": round(4 * runs[0]["n_lin"] * tok_s / 1e9, 1),
                             "train_rows": n_train, "epochs": epochs, "steps": steps_per_epoch * epochs,
                             "tokens_per_row": round(epoch_tokens / n_train, 1),
                             "training_min": round(epochs * epoch_tokens / tok_s / 60, 1),
                             "linear_weights": runs[0]["n_lin"], "method": runs[0]["method"]})
    return rows


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    return head + "".join("| " + " | ".join(str(r[k]) for k in rows[0]) + " |\n" for r in rows)


def write(name: str, title: str, intro: str, rows: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    md = f"# {title}\n\n`{meta['command']}` on {meta['date']}; {meta['machine']}.\n\n{intro}\n\n{table(rows)}"
    (out / f"{name}.md").write_text(md)
    print(md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["minilm", "mpnet"])
    ap.add_argument("--tasks", nargs="+", default=list(EPOCHS), choices=list(EPOCHS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per timing run (the first is left out)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--name", default="model_cost", help="report name (model_cost_bf16 for a bf16 table apart)")
    args = ap.parse_args(argv)
    import torch

    from _glue_report import _machine
    from nas.train.precision import native_cpu_bf16

    argv = sys.argv[1:] if argv is None else argv
    meta = {"command": shlex.join(["python", "benchmarks/model_cost.py", *argv]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{_machine('cpu')}; torch {torch.__version__}, CPU kernels "
                       f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native_cpu_bf16()}"}
    write(args.name, "Step cost per model, precision and method (CPU)",
          f"Plan: the search's no-signal rule at {BUDGET}; PEFT: LoRA on query,value at the nearest size. "
          "Batch 16, max length 128, grouped by length, mean-pooling head. step_s: median over rounds of the "
          "mean step (first step left out); gflop_per_s: 4 x linear weights x tokens/s; training_min: one "
          "training of the comparison (SST-2 8k rows 1 epoch, MRPC 3 epochs) at the measured tokens/s.",
          timing(args), meta, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
