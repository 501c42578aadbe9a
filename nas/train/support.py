"""Helpers beside the trainer: process memory, the run's log, what a model's forward takes, what
is enabled, length grouping."""
from __future__ import annotations

import itertools
import logging
import logging.handlers
import os
import sys
from pathlib import Path

import torch
from torch import nn
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from search_spaces.attach import adapters, shortcut_set

from .distributed import is_main_process


# ---- memory -------------------------------------------------------------------------------
def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- logging ------------------------------------------------------------------------------
class _TqdmHandler(logging.Handler):
    def emit(self, record):
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001
            self.handleError(record)


_RUN_IDS = itertools.count()


def run_logger(output_dir: Path | None, to_console: bool, *, deferred: bool = False) -> logging.Logger:
    """The run's logger: ``output_dir/train.log`` and the console.  ``deferred``: hold the file's
    records in memory until ``open_log_file`` (a run that fails its checks writes nothing)."""
    logger = logging.getLogger(f"nas.trainer.run{next(_RUN_IDS)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if output_dir is not None and not deferred:
        open_log_file(logger, output_dir)
    elif output_dir is not None:
        logger.addHandler(logging.handlers.MemoryHandler(10_000, flushLevel=logging.CRITICAL + 1))
    if to_console:
        ch = _TqdmHandler()
        ch.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(ch)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def open_log_file(logger: logging.Logger, output_dir: Path) -> None:
    """Start writing ``output_dir/train.log`` (appending), with the records held back so far."""
    output_dir.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(output_dir / "train.log", encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for h in [h for h in logger.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
        h.setTarget(fh)
        h.flush()
        logger.removeHandler(h)
    logger.addHandler(fh)


def close_logger(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        h.close()
        logger.removeHandler(h)
    logging.Logger.manager.loggerDict.pop(logger.name, None)  # one per run: do not accumulate


def warn_over_budget(plan, used: int, log: logging.Logger) -> None:
    """A warning, not a refusal, for a plan over its own budget: the budget is the search's
    target and a hand-edited plan a deliberate experiment (results.json records what trained)."""
    budget = (plan.budget or {}).get("params")
    if isinstance(budget, int) and used > budget:
        msg = (f"warning: the plan switches on {used:,} adapter parameters, over its own budget of "
               f"{budget:,} ({(plan.budget or {}).get('spec', '?')}); training it anyway (re-run more-search "
               f"for a plan within budget, or --allocation dynamic to keep to it)")
        if is_main_process():  # DDP: once, not once per rank
            print(msg, file=sys.stderr, flush=True)
        log.info(msg)


# ---- models ---------------------------------------------------------------------------------
def forward_keys(model: nn.Module) -> set[str] | None:
    """Argument names the model's forward accepts (None: accept anything)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return None
    return {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def mega_batches(n_rows: int, batch_size: int) -> int:
    """Batches per mega-batch in transformers' length grouping: 50, or 4 mega-batches on small data."""
    return max(1, min(50, n_rows // (batch_size * 4)))


def group_by_length(perm: list[int], lengths: list[int], batch_size: int) -> list[int]:
    """transformers' LengthGroupedSampler rule: cut the shuffled rows into mega-batches of up
    to 50 batches and sort each by length, longest first, so a batch pads little while the
    data order stays random at the mega-batch scale."""
    mega = batch_size * mega_batches(len(perm), batch_size)
    return [i for k in range(0, len(perm), mega)
            for i in sorted(perm[k:k + mega], key=lambda i: -lengths[i])]


def length_grouped_indices(lengths: list[int], batch_size: int, steps: int | None, generator=None) -> list[int]:
    """transformers' length-grouped order (random mega-batches of up to 50 batches, each sorted
    longest first).  A run of ``steps`` batches that ends within its first 4 mega-batches would
    train on the longest rows of each only (and time its slowest steps), so for such a short run
    the full batches, still grouped, are shuffled; the longest stays first, a partial one last."""
    order = get_length_grouped_indices(lengths, batch_size, generator=generator)
    if not steps or steps <= 0 or steps >= 4 * mega_batches(len(lengths), batch_size):
        return order
    full = len(order) // batch_size
    batches = [order[k * batch_size:(k + 1) * batch_size] for k in range(full)]
    rest = torch.randperm(full - 1, generator=generator).tolist() if full > 1 else []
    return [i for b in batches[:1] + [batches[k + 1] for k in rest] for i in b] + order[full * batch_size:]


def length_grouped_order(lengths, batch_size: int, steps: int | None, seed: int) -> list[int]:
    """A seeded pass over the rows in length-grouped order for a run of ``steps`` batches."""
    return length_grouped_indices(list(lengths), batch_size, steps, torch.Generator().manual_seed(seed))


class GroupedSampler(LengthGroupedSampler):
    """transformers' LengthGroupedSampler, given the lengths (never measured row by row), its
    order suited to a run of ``steps`` batches (length_grouped_indices)."""

    def __init__(self, batch_size: int, lengths: list[int], steps: int | None):
        super().__init__(batch_size, lengths=lengths)
        self.steps = steps

    def __iter__(self):
        return iter(length_grouped_indices(self.lengths, self.batch_size, self.steps, self.generator))


def is_causal_lm(model: nn.Module) -> bool:
    return hasattr(model, "lm_head") or type(model).__name__.endswith("ForCausalLM")


def enabled_adapter_params(model: nn.Module) -> int:
    """Parameters of the enabled adapters and shortcuts (the budget's unit)."""
    total = sum(sum(p.numel() for p in a.trainable_parameters())
                for a in adapters(model).values() if a.enabled)
    sset = shortcut_set(model)
    if sset is not None:
        total += sum(sum(p.numel() for p in sc.parameters()) for _, sc in sset.items() if sc.enabled)
    return total
