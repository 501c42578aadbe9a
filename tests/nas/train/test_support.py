"""nas.train.support: length grouping suited to the run (length_grouped_indices, GroupedSampler)."""
from __future__ import annotations

import numpy as np
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from nas.train.support import GroupedSampler, length_grouped_order


def test_a_long_run_is_ordered_exactly_as_transformers_orders_it():
    lengths = np.random.default_rng(0).integers(1, 100, 3000).tolist()
    torch.manual_seed(0)
    ours = list(GroupedSampler(8, lengths, steps=None))
    torch.manual_seed(0)
    assert ours == list(LengthGroupedSampler(8, lengths=lengths))
    torch.manual_seed(0)
    assert list(GroupedSampler(8, lengths, steps=4 * 50)) == ours  # 4 mega-batches: long enough


def test_a_short_run_trains_on_rows_of_every_length_not_the_longest_of_one_mega_batch():
    """Each mega-batch is sorted longest first: a run of 8 batches inside transformers' first
    mega-batch (50 batches) trains only on its longest rows; shuffled batches do not."""
    lengths = np.random.default_rng(0).integers(1, 101, 2000).tolist()
    steps, batch = 8, 4
    torch.manual_seed(0)
    theirs = list(LengthGroupedSampler(batch, lengths=lengths))[:steps * batch]
    torch.manual_seed(0)
    ours = list(GroupedSampler(batch, lengths, steps=steps))[:steps * batch]
    mean = np.mean(lengths)
    assert np.mean([lengths[i] for i in theirs]) > mean + 25
    assert abs(np.mean([lengths[i] for i in ours]) - mean) < 15
    # still grouped: rows in a batch are close in length
    spread = lambda order: np.mean([np.ptp([lengths[i] for i in order[k:k + batch]])  # noqa: E731
                                    for k in range(0, len(order), batch)])
    assert spread(ours) < 0.2 * spread(np.random.default_rng(1).permutation(2000)[:steps * batch].tolist())
    torch.manual_seed(0)
    whole = list(GroupedSampler(batch, lengths + [5], steps=steps))  # 2001 rows: one partial batch
    assert sorted(whole) == list(range(2001)) and lengths[whole[0]] == max(lengths)
    torch.manual_seed(0)
    assert whole[-1] == list(LengthGroupedSampler(batch, lengths=lengths + [5]))[-1]  # the partial batch stays last


def test_the_seeded_order_is_a_permutation_and_repeats_with_its_seed():
    lengths = np.random.default_rng(0).integers(1, 50, 500).tolist()
    a = length_grouped_order(lengths, 16, 40, seed=3)
    assert sorted(a) == list(range(500)) and a == length_grouped_order(lengths, 16, 40, seed=3)
    assert a != length_grouped_order(lengths, 16, 40, seed=4)
