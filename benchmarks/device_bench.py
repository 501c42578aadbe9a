"""GPU check: fp32 and bf16 training steps of a real model, a mixed plan vs PEFT LoRA.

For each --model folder: synthetic sentences (the tokenizer's own words, 128 tokens, batch 32)
in a TSV, then short runs through the same transformers.Trainer (nas.train.AdapterTrainer):
  peft    LoRA r 8 on query/value (+ classifier)     ours-mixed  every adapter kind + shortcuts
in fp32 and bf16; step time (StepStats: synchronised) and CUDA peak allocated memory.

    python benchmarks/device_bench.py --model /path/minilm --model /path/mpnet --out $OUT
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tsv(path: Path, tok, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    vocab = [w for w in tok.get_vocab() if w.isalpha() and len(w) > 2][:5000]
    lines = ["sentence\tlabel"] + [" ".join(rng.choice(vocab) for _ in range(150)) + f"\t{rng.randint(0, 1)}"
                                   for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def mixed(layout, name):
    from nas import Plan

    kinds = ("lora", "more", "circulant", "toeplitz", "kronecker", "ldr")
    mods = {m.name: {"type": kinds[i % len(kinds)]} for i, m in enumerate(layout.modules)}
    last = layout.num_layers - 1
    sc = {f"{last}.{k}": {"rank": 8} for k in ("s_res1", "s_res2", "s_in", "s_cut")}
    return Plan(model={"name_or_path": name}, modules=mods, shortcuts=sc if layout.supports_shortcuts else {})


def run(model_dir: str, variant: str, bf16: bool, files, steps: int) -> dict:
    import torch

    from nas import discover
    from nas.data import load_task
    from nas.models import load_model, load_tokenizer
    from nas.train import TrainConfig, prepare
    from nas.train.callbacks import EvaluateAtEnd
    from nas.train.trainer import trainer_for

    tok = load_tokenizer(model_dir)
    data = load_task(None, tok, train_file=str(files[0]), validation_file=str(files[1]), max_length=128)
    cfg = TrainConfig(per_device_train_batch_size=32, max_steps=steps, learning_rate=5e-4, bf16=bf16,
                      device="cuda", progress=False, eval_steps=10**9, max_length=128)
    torch.cuda.empty_cache()
    torch.manual_seed(0)
    model = load_model(model_dir, num_labels=2)
    if variant == "peft":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value", "q", "v"],
                                                 modules_to_save=["classifier"], task_type="SEQ_CLS"))
        tr = trainer_for(model, data, cfg)
        tr.remove_callback(EvaluateAtEnd)  # as before: the PEFT runs do not evaluate
    else:
        tr = prepare(mixed(discover(model), model_dir), cfg, model=model, data=data)
    stats = tr.stats

    class Sync(__import__("transformers").TrainerCallback):  # step times of finished GPU work
        def on_step_end(self, *a, **k):
            torch.cuda.synchronize()

    tr.add_callback(Sync())
    t0 = time.perf_counter()
    tr.train()
    torch.cuda.synchronize()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"model": Path(model_dir).name, "variant": variant, "precision": "bf16" if bf16 else "fp32",
            "steps": steps, "step_ms": round(stats.step_time * 1000, 2),
            "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1), "trainable": trainable,
            "wall_s": round(time.perf_counter() - t0, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    import torch

    from nas.models import load_tokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in args.model:
        tok = load_tokenizer(m)
        d = Path(tempfile.mkdtemp())
        files = tsv(d / "train.tsv", tok, 32 * (args.steps + 2), 0), tsv(d / "dev.tsv", tok, 64, 1)
        for bf16 in (False, True):
            for variant in ("peft", "ours-mixed"):
                torch.cuda.reset_peak_memory_stats()
                try:
                    rows.append(run(m, variant, bf16, files, args.steps))
                except Exception as e:  # noqa: BLE001  (report and go on to the next run)
                    rows.append({"model": Path(m).name, "variant": variant, "precision": "bf16" if bf16 else "fp32",
                                 "error": f"{type(e).__name__}: {e}"[:300]})
                print(json.dumps(rows[-1]), flush=True)
    (out / "device_bench.json").write_text(json.dumps(rows, indent=2) + "\n")
    keys = ["model", "variant", "precision", "steps", "step_ms", "peak_mem_mb", "trainable", "wall_s", "error"]
    md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    md += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    (out / "device_bench.md").write_text(f"# GPU check ({torch.cuda.get_device_name()}, torch {torch.__version__})\n\n"
                                         + "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
