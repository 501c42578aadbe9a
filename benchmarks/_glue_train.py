"""A Spec -> a nas.train AdapterTrainer (a transformers.Trainer: every method, PEFT included, in
the same loop, as benchmarks/trainer_vs_peft.py does), and the side measurements of a run (step
memory)."""
from __future__ import annotations

import contextlib
import copy
import json
import math

from nas import Plan
from nas.heads import pooling_of
from nas.data import row_lengths
from search_spaces.anatomy import HEAD_NAMES

from _glue_methods import Protocol, Spec, TaskCtx, fresh_model


# ---- a Spec -> a Trainer --------------------------------------------------------------------
# Spec kinds a benchmark adds (kind -> builder(spec, ctx, data, cfg, model) -> trainer), e.g.
# benchmarks/beyond_space.py's methods outside the search space.
BUILDERS: dict = {}


def build_trainer(spec: Spec, ctx: TaskCtx, data, cfg):
    """The model for ``spec`` (head initialised from ``cfg.seed``) in nas.train's AdapterTrainer."""
    from transformers import set_seed

    from nas.train import prepare
    from nas.train.trainer import trainer_for

    set_seed(cfg.seed)
    model = fresh_model(ctx, cfg.seed)
    if spec.kind == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.split(".")[0] in HEAD_NAMES)
        return trainer_for(model, data, cfg)
    if spec.kind == "peft":  # as benchmarks/trainer_vs_peft.py's PEFT baseline, any rank/targets
        from peft import LoraConfig, get_peft_model

        pl = spec.payload
        model = get_peft_model(model, LoraConfig(
            r=pl["rank"], lora_alpha=pl["alpha"], lora_dropout=pl["dropout"],
            target_modules=list(pl["targets"]), modules_to_save=list(HEAD_NAMES[:1]),
            task_type="SEQ_CLS"))
        return trainer_for(model, data, cfg)
    if spec.kind == "plan":  # the head reads what the protocol's template reads (Protocol.pooling)
        plan = Plan.from_dict(copy.deepcopy(spec.payload["plan"]))  # the spec (its run key) stays as it is
        plan.model["pooling"] = pooling_of(model)
        return prepare(plan, cfg, model=model, data=data)
    if spec.kind in BUILDERS:
        return BUILDERS[spec.kind](spec, ctx, data, cfg, model)
    raise ValueError(f"unknown spec kind {spec.kind!r}")


def train_config(spec: Spec, proto: Protocol, *, task: str, lr: float, seed: int, select: bool,
                 device: str | None):
    from nas.train import TrainConfig

    return TrainConfig(
        num_train_epochs=proto.epochs_for(task), learning_rate=lr, per_device_train_batch_size=proto.batch_size,
        max_length=proto.max_length, seed=seed, max_steps=proto.select_steps if select else proto.final_max_steps,
        eval_steps=proto.select_steps if select else None, warmup_ratio=proto.warmup_ratio,
        weight_decay=proto.weight_decay, lr_scheduler_type=proto.scheduler,
        allocation=spec.payload.get("allocation", "static"),
        dynamic_proxy=spec.payload.get("dynamic_proxy"), progress=False, device=device,
        group_by_length=proto.group_by_length,
        export_peft=False)


def trainable_count(trainer) -> int:
    return sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)


def train_step(trainer, rows: list[int]) -> None:
    """One optimizer step on the given training rows (after ``trainer.train()``: AdamW exists)."""
    trainer.training_step(trainer.model, trainer.data.collator()([trainer.data.train[i] for i in rows]))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def longest_rows(data, k: int) -> list[int]:
    lens = row_lengths(data.train)
    return sorted(range(len(lens)), key=lambda i: -lens[i])[:k]


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop lines) for the block."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def step_tensor_peak(trainer) -> int | None:
    """Peak tensor bytes of one steady-state training step (forward + backward + AdamW) on
    the longest training batch, from the torch profiler's memory timeline (CPU only), as
    benchmarks/trainer_vs_peft.py measures it.  Runs after training: it takes 2 extra steps."""
    import os
    import tempfile
    import warnings

    from torch.profiler import ProfilerActivity, profile

    if trainer.args.device.type != "cpu":
        return None
    rows = longest_rows(trainer.data, trainer.args.per_device_train_batch_size)
    try:
        train_step(trainer, rows)  # warm-up: AdamW state exists from here on
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                      record_shapes=True, with_stack=True) as prof:
            train_step(trainer, rows)
        with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = os.path.join(d, "timeline.json")
            prof.export_memory_timeline(path, device="cpu")
            _, sizes = json.load(open(path))
        return int(max(sum(s) for s in sizes))
    except Exception as e:  # noqa: BLE001 - memory is a side measurement; never lose the run
        print(f"(memory profile failed: {type(e).__name__}: {e})")
        return None


def finite(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return -math.inf
    return x if math.isfinite(x) else -math.inf
