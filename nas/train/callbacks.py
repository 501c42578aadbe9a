"""TrainerCallbacks for what is ours: the search's on_eval hook (Optuna pruning), dynamic
allocation, metrics.jsonl, step time and peak memory, and what a resume must match."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import TrainerCallback

from ..errors import UserError
from ..io import atomic_write_text
from .support import rss_bytes


RESUME_STATE = "more_state.pt"  # beside each checkpoint: what a resume must match


class OnEval(TrainerCallback):
    """Calls ``on_eval(step, entry)`` after each evaluation; its exceptions propagate (the
    search raises optuna.TrialPruned from it) and the entry goes to metrics.jsonl."""

    def __init__(self, history: list[dict], on_eval: Callable[[int, dict], None] | None,
                 out: Path | None):
        self.history, self.on_eval, self.out = history, on_eval, out

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        entry = self.history[-1]
        if self.out is not None and args.should_save:
            atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))
        if self.on_eval is not None:
            self.on_eval(entry["step"], dict(entry))


class EvaluateAtEnd(TrainerCallback):
    """Evaluate (and save) after the last step too, whatever the eval interval."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
            control.should_save = args.save_strategy != "no"
        return control


class DynamicAllocation(TrainerCallback):
    """HeteroLoRA-style dynamic allocation: re-score the candidate pool every ``every`` steps
    and switch on the best within the budget (nas.train.dynamic.DynamicAllocator)."""

    def __init__(self, allocator, scoring_batches: Callable[[int], list], every: int, logger=None):
        self.allocator, self.batches, self.every, self.log = allocator, scoring_batches, every, logger

    def on_train_begin(self, args, state, control, **kwargs):
        a = self.allocator
        if state.global_step == 0 and sum(a.sizes[n] for n in a.enabled_names()) > a.budget:
            info = a.reallocate(self.batches(0), 0)  # the plan switches on more than the budget
            self._report(0, info)

    def on_step_begin(self, args, state, control, **kwargs):
        self.allocator.tick()

    def on_step_end(self, args, state, control, **kwargs):
        s = state.global_step
        if s % self.every == 0 and s < state.max_steps:
            self._report(s, self.allocator.reallocate(self.batches(s), s))

    def _report(self, step, info):
        if self.log is not None:
            self.log.info("step %d: reallocated (%s): %d on, %d params", step, self.allocator.score_name,
                          info["enabled"], info["params"])


class StepStats(TrainerCallback):
    """Mean optimizer-step time (forward + backward + update, evaluation excluded) and peak
    memory: CUDA's allocator peak, or the process RSS sampled around each step on CPU.  The first
    step pays one-time costs (allocations, the optimizer's state, lazy initialisation): it is left
    out of the mean when there are others, so a short trial's step time is that of a long run."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.kind = "cuda_allocated" if self.cuda else "rss"
        self.peak, self.count, self._t0 = 0, 0, None
        self.total, self.first = [0.0, 0.0], [0.0, 0.0]  # seconds: [wall, this process's CPU]
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def _sample(self):
        if not self.cuda:
            self.peak = max(self.peak, rss_bytes())

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = (time.perf_counter(), time.process_time())

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._sample()

    def on_step_end(self, args, state, control, **kwargs):
        self._sample()
        if self._t0 is not None:
            took = (time.perf_counter() - self._t0[0], time.process_time() - self._t0[1])
            for i in (0, 1):
                self.total[i] += took[i]
                if self.count == 0:
                    self.first[i] = took[i]
            self.count += 1
            self._t0 = None

    def _mean(self, i: int) -> float:
        if self.count > 1:
            return (self.total[i] - self.first[i]) / (self.count - 1)
        return self.total[i] / max(self.count, 1)

    @property
    def step_time(self) -> float:
        return self._mean(0)

    @property
    def step_cpu(self) -> float:
        return self._mean(1)

    def value(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.device)) if self.cuda else int(self.peak)


class ResumeState(TrainerCallback):
    """Beside each checkpoint: what must match to resume it, the metrics history and the
    dynamic allocator's state."""

    def __init__(self, identity: dict[str, Any], history: list[dict], allocator=None):
        self.identity, self.history, self.allocator = identity, history, allocator
        self.parts: dict[str, Any] = {}  # more state to save (state_dict / load_state_dict), by key

    def write(self, ckpt: Path) -> None:
        """Into a checkpoint being written (its presence marks the checkpoint complete)."""
        torch.save({**self.identity, "history": list(self.history),
                    "allocator": self.allocator.state_dict() if self.allocator is not None else None,
                    **{k: p.state_dict() for k, p in self.parts.items()}}, ckpt / RESUME_STATE)

    def check_and_load(self, ckpt: Path) -> None:
        path = ckpt / RESUME_STATE
        if not path.is_file():
            raise UserError(f"cannot resume from {str(ckpt)!r}: it holds no {RESUME_STATE} (not a more-train "
                            f"checkpoint)")
        state = torch.load(path, map_location="cpu", weights_only=False)
        old, now = state["config"], self.identity["config"]
        diff = [f"{k}: checkpoint {old.get(k)!r}, now {now[k]!r}" for k in now if old.get(k) != now[k]]
        if diff:
            raise UserError(f"cannot resume from {str(ckpt)!r}: the settings differ (" + "; ".join(diff)
                            + "); use the same settings or start without --resume")
        if state["data"] != self.identity["data"]:
            raise UserError(f"cannot resume from {str(ckpt)!r}: the training data differs from the data "
                            f"the checkpoint was trained on")
        if state["plan_keys"] != self.identity["plan_keys"]:
            raise UserError(f"cannot resume from {str(ckpt)!r}: it was made with a different plan")
        self.history[:] = state["history"]
        if self.allocator is not None and state["allocator"] is not None:
            self.allocator.load_state_dict(state["allocator"])
        for k, p in self.parts.items():
            if state.get(k) is not None:
                p.load_state_dict(state[k])
