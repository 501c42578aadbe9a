"""The hand-written training loop from before transformers.Trainer, kept for benchmarks/glue.py,
which drives it step by step (``train_step``, ``batch_indices``, ``evaluate``) until it is ported.

``nas.train.train`` runs on transformers.Trainer (nas/train/trainer.py); this loop trains any model
whose trainable parameters are set (a PEFT model too): AdamW, warmup schedules, dynamic padding,
its own ``checkpoint.pt`` resume.
"""
from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..discovery import ModelLayout
from ..errors import UserError
from ..inject import HEAD_NAMES, adapters, shortcut_set, trainable_state_dict
from ..plan import Plan, atomic_write_bytes, atomic_write_text
from .callbacks import rss_bytes as _rss_bytes
from .config import NonFiniteLoss, TrainConfig, TrainResult

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1

# Settings that must match to resume a run.
_RESUME_KEYS = ("epochs", "lr", "batch_size", "max_length", "seed", "allocation", "max_steps",
                "eval_every", "warmup_ratio", "weight_decay", "scheduler", "dynamic_every",
                "dynamic_batches", "dynamic_proxy", "max_grad_norm")


# ---- memory -------------------------------------------------------------------------------
class _Memory:
    """Peak memory during the run: CUDA's allocator peak, or the sampled RSS on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.kind = "cuda_allocated" if self.cuda else "rss"
        self.peak = 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device

    def sample(self) -> None:
        if not self.cuda:
            self.peak = max(self.peak, _rss_bytes())

    def value(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(self.peak)


# ---- logging ------------------------------------------------------------------------------
class _TqdmHandler(logging.Handler):
    def emit(self, record):
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001
            self.handleError(record)


_RUN_IDS = itertools.count()


def _run_logger(output_dir: Path | None, to_console: bool) -> logging.Logger:
    logger = logging.getLogger(f"nas.trainer.run{next(_RUN_IDS)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(output_dir / "train.log", encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    if to_console:
        ch = _TqdmHandler()
        ch.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(ch)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def _close_logger(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        h.close()
        logger.removeHandler(h)
    logging.Logger.manager.loggerDict.pop(logger.name, None)  # one per run: do not accumulate


# ---- the loop -----------------------------------------------------------------------------
def _forward_keys(model: nn.Module) -> set[str] | None:
    """Argument names the model's forward accepts (None: accept anything)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return None
    return {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def group_by_length(perm: list[int], lengths: list[int], batch_size: int) -> list[int]:
    """transformers' LengthGroupedSampler rule: cut the shuffled rows into mega-batches of up
    to 50 batches and sort each by length, longest first, so a batch pads little while the
    data order stays random at the mega-batch scale."""
    mega = batch_size * max(1, min(50, len(perm) // (batch_size * 4)))
    return [i for k in range(0, len(perm), mega)
            for i in sorted(perm[k:k + mega], key=lambda i: -lengths[i])]


class Trainer:
    """The training loop for one model (any model: its trainable parameters are what trains).

    ``train_step()`` runs one optimizer step, ``evaluate()`` one evaluation, ``run()`` the whole
    schedule with evaluation, dynamic reallocation, checkpoints and progress.
    """

    def __init__(self, model: nn.Module, data, cfg: TrainConfig, *, plan: Plan | None = None,
                 layout: ModelLayout | None = None, allocator=None,
                 on_eval: Callable[[int, dict], None] | None = None,
                 output_dir: str | os.PathLike | None = None):
        self.cfg, self.data, self.plan, self.layout = cfg, data, plan, layout
        self.allocator, self.on_eval = allocator, on_eval
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device)
        self.output_dir = Path(output_dir) if output_dir else None
        self.collate = data.collator()
        self.keys = _forward_keys(model)
        self.n_train = len(data.train)
        if self.n_train == 0:
            raise UserError(f"task {data.name!r} has no training rows")
        self.steps_per_epoch = math.ceil(self.n_train / cfg.batch_size)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.eval_every = cfg.eval_every or self.steps_per_epoch
        self.dynamic_every = max(1, round(cfg.dynamic_every * self.steps_per_epoch))

        # Trainable tensors: whatever requires grad, plus every adapter's own (a disabled
        # adapter is still trained when it is switched on again).
        seen, named = set(), []
        for n, p in model.named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                named.append((n, p))
        if not named:
            raise UserError("the model has no trainable parameters")
        decay = [p for n, p in named if not _no_decay(n)]
        no_decay = [p for n, p in named if _no_decay(n)]
        groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        self.params = [p for _, p in named]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        from transformers import get_scheduler

        self.warmup_steps = math.ceil(cfg.warmup_ratio * self.total_steps)
        self.scheduler = get_scheduler(cfg.scheduler, self.optimizer, num_warmup_steps=self.warmup_steps,
                                       num_training_steps=self.total_steps)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._loss_sum, self._loss_n = 0.0, 0
        self._step_time, self._step_count = 0.0, 0
        self._train_time_prev = 0.0
        self._perm_cache: tuple[int, list[int]] | None = None
        self._train_lengths: list[int] | None = None
        self.memory = _Memory(self.device)
        self.log = logging.getLogger("nas.trainer")

    # ---- data --------------------------------------------------------------------------
    def _perm(self, epoch: int) -> list[int]:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n_train, generator=g).tolist()
            if self.cfg.group_by_length:
                perm = self._group_by_length(perm)
            self._perm_cache = (epoch, perm)
        return self._perm_cache[1]

    def _group_by_length(self, perm: list[int]) -> list[int]:
        if self._train_lengths is None:
            self._train_lengths = [len(x) for x in self.data.train["input_ids"]]
        return group_by_length(perm, self._train_lengths, self.cfg.batch_size)

    def batch_indices(self, step: int) -> list[int]:
        """Rows of the training batch for optimizer step ``step`` (0-based): a fixed function
        of (seed, step), so a resumed run sees exactly the same batches."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        bs = self.cfg.batch_size
        return self._perm(epoch)[pos * bs:(pos + 1) * bs]

    def make_batch(self, split, indices: list[int]) -> dict[str, torch.Tensor]:
        cols = split[indices]
        rows = [{k: cols[k][i] for k in cols} for i in range(len(indices))]
        batch = self.collate(rows)
        return {k: v.to(self.device) for k, v in batch.items()
                if self.keys is None or k in self.keys}

    def scoring_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + step)
        perm = torch.randperm(self.n_train, generator=g).tolist()
        bs = self.cfg.batch_size
        return [self.make_batch(self.data.train, perm[i * bs:(i + 1) * bs])
                for i in range(max(1, self.cfg.dynamic_batches)) if perm[i * bs:(i + 1) * bs]]

    # ---- one step ------------------------------------------------------------------------
    def train_step(self, indices: list[int] | None = None) -> float:
        """One optimizer step on batch ``self.step`` (or on the given training rows); returns
        its loss."""
        batch = self.make_batch(self.data.train, self.batch_indices(self.step) if indices is None else indices)
        t0 = time.perf_counter()
        self.model.train()
        if self.allocator is not None:
            self.allocator.tick()
        loss = self.model(**batch).loss
        self.memory.sample()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLoss(self.step + 1, value)
        loss.backward()
        self.memory.sample()
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._step_time += time.perf_counter() - t0
        self._step_count += 1
        self.step += 1
        self._loss_sum += value
        self._loss_n += 1
        return value

    # ---- evaluation ----------------------------------------------------------------------
    def evaluate(self, split=None) -> dict[str, float]:
        """The task's metrics on ``split`` (default: the eval split), as nas.train.train reports them."""
        from dataclasses import replace

        from .trainer import evaluate_model

        data = self.data if split is None else replace(self.data, eval=split)
        metrics = evaluate_model(self.model, data, self.cfg.eval_batch_size or self.cfg.batch_size, self.device)
        self.memory.sample()
        return metrics

    # ---- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION, "step": self.step,
            "trainable": {k: v.detach().cpu().clone() for k, v in trainable_state_dict(self.model).items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(), "history": self.history,
            "loss_acc": [self._loss_sum, self._loss_n],
            "timing": [self._step_time, self._step_count, self._train_time_prev + self._elapsed()],
            "peak_memory": self.memory.peak,
            "allocator": self.allocator.state_dict() if self.allocator is not None else None,
            "config": {k: getattr(self.cfg, k) for k in _RESUME_KEYS},
            "data": self.data.fingerprint(),
            "plan_keys": sorted(self.plan.modules) + sorted(self.plan.shortcuts) if self.plan else None,
        }

    def save_checkpoint(self) -> Path | None:
        if self.output_dir is None:
            return None
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        return atomic_write_bytes(self.output_dir / CHECKPOINT, buf.getvalue())

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("version") != CHECKPOINT_VERSION:
            raise UserError(f"checkpoint {str(path)!r} has version {state.get('version')}; "
                            f"this more-nas writes version {CHECKPOINT_VERSION}")
        now = {k: getattr(self.cfg, k) for k in _RESUME_KEYS}
        diff = [f"{k}: checkpoint {state['config'].get(k)!r}, now {now[k]!r}"
                for k in _RESUME_KEYS if state["config"].get(k) != now[k]]
        if diff:
            raise UserError(f"cannot resume from {str(path)!r}: the settings differ ("
                            + "; ".join(diff) + "); use the same settings or start without --resume")
        if state["data"] != self.data.fingerprint():
            raise UserError(f"cannot resume from {str(path)!r}: the training data differs from the "
                            f"data the checkpoint was trained on")
        keys = sorted(self.plan.modules) + sorted(self.plan.shortcuts) if self.plan else None
        if state["plan_keys"] != keys:
            raise UserError(f"cannot resume from {str(path)!r}: it was made with a different plan")
        missing, unexpected = self.model.load_state_dict(state["trainable"], strict=False)
        if unexpected:
            raise UserError(f"cannot resume from {str(path)!r}: tensors {unexpected[:3]} do not fit the model")
        if self.allocator is not None and state["allocator"] is not None:
            self.allocator.load_state_dict(state["allocator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self._loss_sum, self._loss_n = state["loss_acc"]
        self._step_time, self._step_count, self._train_time_prev = state["timing"]
        self.memory.peak = max(self.memory.peak, int(state.get("peak_memory", 0)))
        self._resumed = True

    # ---- the schedule --------------------------------------------------------------------
    def _elapsed(self) -> float:
        return time.perf_counter() - self._t_start if getattr(self, "_t_start", None) else 0.0

    def _write_metrics(self) -> None:
        if self.output_dir is None:
            return
        text = "".join(json.dumps(h) + "\n" for h in self.history)
        atomic_write_text(self.output_dir / "metrics.jsonl", text)

    def run(self, logger: logging.Logger | None = None) -> TrainResult:
        """Train to ``total_steps`` (from the current step: 0, or the resumed one)."""
        from tqdm.auto import tqdm

        log = logger or self.log
        self.log = log
        cfg = self.cfg
        if self.step == 0:
            torch.manual_seed(cfg.seed)  # the dropout stream starts from the seed, whatever
            random.seed(cfg.seed)        # loading the model consumed
            np.random.seed(cfg.seed % 2**32)
        self._t_start = time.perf_counter()
        save_every = cfg.save_every
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not cfg.progress, desc="train",
                   unit="step", dynamic_ncols=True, file=sys.stderr, leave=False)
        samples, t_loop = 0, time.perf_counter()
        try:
            if self.step == 0 and self.allocator is not None and \
                    sum(self.allocator.sizes[n] for n in self.allocator.enabled_names()) > self.allocator.budget:
                # The plan switches on more than the budget: allocate before the first step.
                info = self.allocator.reallocate(self.scoring_batches(0), 0)
                log.info("step 0: the plan's enabled set exceeds the budget; allocated %d candidates, "
                         "%d params (%s)", info["enabled"], info["params"], self.allocator.score_name)
            while self.step < self.total_steps:
                loss = self.train_step()
                samples += len(self.batch_indices(self.step - 1))
                s = self.step
                if cfg.progress:
                    rate = samples / max(time.perf_counter() - t_loop, 1e-9)
                    bar.set_postfix_str(f"loss={loss:.4f}, lr={self.scheduler.get_last_lr()[0]:.2e}, "
                                        f"{rate:.1f} samples/s", refresh=False)
                bar.update(1)
                evaluated = s % self.eval_every == 0 or s == self.total_steps
                entry = None
                if evaluated:
                    metrics = self.evaluate()
                    entry = {"step": s, "epoch": round(s / self.steps_per_epoch, 4),
                             **metrics, "train_loss": self._loss_sum / max(self._loss_n, 1),
                             "lr": self.scheduler.get_last_lr()[0]}
                    self._loss_sum, self._loss_n = 0.0, 0
                    self.history.append(entry)
                    self._write_metrics()
                    log.info("step %d/%d epoch %.2f: %s", s, self.total_steps, entry["epoch"],
                             ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                if (self.allocator is not None and s % self.dynamic_every == 0
                        and s < self.total_steps):
                    info = self.allocator.reallocate(self.scoring_batches(s), s)
                    log.info("step %d: reallocated (%s): %d on, %d params; on %s off %s", s,
                             self.allocator.score_name, info["enabled"], info["params"],
                             _short(info["on"]), _short(info["off"]))
                if evaluated or (save_every and s % save_every == 0) or s == self.total_steps:
                    self.save_checkpoint()
                if entry is not None and self.on_eval is not None:
                    self.on_eval(s, dict(entry))
        finally:
            bar.close()
        if not self.history:  # resumed after the end: nothing ran
            self.history.append({"step": self.step, **self.evaluate()})
        final = {k: v for k, v in self.history[-1].items()
                 if k not in ("step", "epoch", "train_loss", "lr")}
        main = self.data.main_metric
        train_time = self._train_time_prev + self._elapsed()
        enabled_ad = _enabled_adapter_params(self.model)
        head = sum(p.numel() for n, c in self.model.named_children() if n in HEAD_NAMES
                   for p in c.parameters() if p.requires_grad)
        trainable = enabled_ad + head if (enabled_ad or self.plan is not None) else \
            sum(p.numel() for p in self.params)
        return TrainResult(
            metrics=final, main_metric=main, score=float(final.get(main, float("nan"))),
            history=list(self.history), steps=self.step, train_time_s=train_time,
            step_time_s=self._step_time / max(self._step_count, 1),
            peak_memory_bytes=self.memory.value(), trainable_params=int(trainable),
            output_dir=str(self.output_dir) if self.output_dir else None,
            enable_counts=dict(self.allocator.counts) if self.allocator is not None else None,
            adapter_params=int(enabled_ad), peak_memory_kind=self.memory.kind,
        )


def _short(names: list[str], k: int = 4) -> str:
    return "[" + ", ".join(names[:k]) + (f", +{len(names) - k}" if len(names) > k else "") + "]"


def _no_decay(name: str) -> bool:
    low = name.lower()
    return low.endswith("bias") or "layernorm" in low or "layer_norm" in low or ".norm" in low


def _enabled_adapter_params(model: nn.Module) -> int:
    total = sum(sum(p.numel() for p in a.trainable_parameters())
                for a in adapters(model).values() if a.enabled)
    sset = shortcut_set(model)
    if sset is not None:
        total += sum(sum(p.numel() for p in sc.parameters()) for _, sc in sset.items() if sc.enabled)
    return total


# ---- train(plan) --------------------------------------------------------------------------
def _is_causal_lm(model: nn.Module) -> bool:
    return hasattr(model, "lm_head") or type(model).__name__.endswith("ForCausalLM")


def prepare(plan: Plan, cfg: TrainConfig, *, model=None, tokenizer=None, data=None,
            on_eval: Callable[[int, dict], None] | None = None,
            logger: logging.Logger | None = None) -> Trainer:
    """Load (or take) model, tokenizer and task, inject the plan, and build the hand loop."""
    from .trainer import setup

    cfg.validate()
    model, data, layout, allocator = setup(plan, cfg, model=model, tokenizer=tokenizer, data=data,
                                           log=logger or logging.getLogger("nas.train.loop"))
    return Trainer(model, data, cfg, plan=plan, layout=layout, allocator=allocator,
                   on_eval=on_eval, output_dir=cfg.output_dir)
