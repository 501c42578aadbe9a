"""Helpers beside the training loop: peak memory, the run's log, RNG state, length grouping."""
from __future__ import annotations

import itertools
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn




# ---- memory -------------------------------------------------------------------------------
def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
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
            self.peak = max(self.peak, rss_bytes())

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


def run_logger(output_dir: Path | None, to_console: bool) -> logging.Logger:
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


def close_logger(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        h.close()
        logger.removeHandler(h)
    logging.Logger.manager.loggerDict.pop(logger.name, None)  # one per run: do not accumulate


# ---- the loop -----------------------------------------------------------------------------
def forward_keys(model: nn.Module) -> set[str] | None:
    """Argument names the model's forward accepts (None: accept anything)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return None
    return {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
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
