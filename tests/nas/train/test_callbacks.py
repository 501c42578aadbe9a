"""nas.train.callbacks: what the step statistics report."""
from __future__ import annotations

import torch

from nas.train import callbacks


def test_step_time_leaves_out_the_first_step(monkeypatch):
    """A short search trial's first step pays one-time costs; its mean step time must be that of
    the steps after it, or the search's cost multiple (search time / full-run estimate) shrinks."""
    wall = iter([0.0, 1.0, 2.0, 2.1, 3.0, 3.1, 4.0, 4.1])  # begin/end: 1.0 s, then 0.1 s x 3
    cpu = iter([0.0, 0.8, 1.0, 1.2, 2.0, 2.2, 3.0, 3.2])  # 0.8 s, then 0.2 s x 3 (2 threads)
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(wall))
    monkeypatch.setattr(callbacks.time, "process_time", lambda: next(cpu))
    stats = callbacks.StepStats(torch.device("cpu"))
    for _ in range(4):
        stats.on_step_begin(None, None, None)
        stats.on_step_end(None, None, None)
    assert stats.count == 4
    assert abs(stats.step_time - 0.1) < 1e-9 and abs(stats.step_cpu - 0.2) < 1e-9


def test_step_time_of_a_single_step():
    stats = callbacks.StepStats(torch.device("cpu"))
    assert stats.step_time == 0.0
    stats.on_step_begin(None, None, None)
    stats.on_step_end(None, None, None)
    assert stats.step_time == stats.total[0] > 0 and stats.step_cpu == stats.total[1] >= 0
