"""Several processes (``torchrun``, ``accelerate launch``): which one prints and writes.

    main = start_processes(device)    # before anything loads: all ranks meet here
    if main: print(...)

accelerate's ``PartialState`` is what transformers' ``TrainingArguments`` sets up (the process
group, each rank's device).  Setting it up at the start, instead of when the Trainer is built,
lets a run know its rank before the model loads, so that rank 0 alone prints (log, warnings,
progress bars, the summary) and writes (the run folder); TrainingArguments makes its own again
later (it resets the state; the process group stays).  In one process all of this is a no-op.
"""
from __future__ import annotations

import math
from datetime import timedelta

import torch

# TrainingArguments' default ddp_timeout, so the process group is the one the Trainer would make.
DDP_TIMEOUT = timedelta(seconds=1800)


def start_processes(device: torch.device) -> bool:
    """Set up (or join) the process group for ``device``, wait until every rank is here and
    silence the progress bars of all but the main one; -> whether this is the main process."""
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu", timeout=DDP_TIMEOUT)
    # A barrier: every rank has checked the output folder before the main one writes to it.
    state.wait_for_everyone()
    if not state.is_main_process:
        quiet()
    return state.is_main_process


def is_main_process() -> bool:
    """Whether this process prints and writes; True before any process group is set up."""
    from accelerate import PartialState

    return not PartialState._shared_state or PartialState().is_main_process


def world_size() -> int:
    """Processes that share each optimizer step (1 before any process group is set up)."""
    from accelerate import PartialState

    return PartialState().num_processes if PartialState._shared_state else 1


def steps_per_epoch(n_train: int, per_device_batch: int, accumulation: int) -> int:
    """Optimizer steps in an epoch of ``n_train`` rows: each takes a micro-batch from every process."""
    return max(1, math.ceil(math.ceil(n_train / (per_device_batch * world_size())) / accumulation))


def sum_over_ranks(accelerator, *values: float) -> list[float]:
    """``values`` summed over the processes (unchanged in one)."""
    if accelerator.num_processes == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)  # NCCL: on the GPU
    return accelerator.reduce(t, "sum").tolist()


def quiet() -> None:
    """No progress bars (model loading, datasets) in this process: a rank other than the main
    one repeats what the main one shows."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def end_processes() -> None:
    """Tear down the process group a run set up (NCCL warns at exit otherwise); a no-op in
    one process."""
    from accelerate import PartialState

    if PartialState._shared_state:
        PartialState().destroy_process_group()
