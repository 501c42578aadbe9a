"""The paired noise test (nas/search/ranking.py ``worse_beyond_noise``) at its threshold: a gap of
just over z standard errors of the mean paired difference is a cut, just under is not, and a
difference with no spread (sd == 0) is judged by its sign alone."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from nas.search.ranking import worse_beyond_noise

N = 12  # few rows, so a standard deviation with ddof=0 (or n for n - 1) would move the threshold by 4%


def _rows(gap: float, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-row losses of a ``best`` plan and of a plan worse by ``gap`` on average, with a paired
    difference whose spread does not depend on ``gap``."""
    rng = np.random.default_rng(seed)
    best = 0.2 + rng.exponential(0.5, N)  # cross-entropies, all > 0 with the noise
    noise = rng.normal(0.0, 0.05, N)
    noise -= noise.mean()  # mean exactly the gap below
    return (best + gap + noise).tolist(), best.tolist()


@pytest.mark.parametrize("z", [1.0, 2.0, 2.5])  # 2.0 is SearchConfig.noise_z's default
@pytest.mark.parametrize("seed", [0, 1])
def test_cut_flips_at_z_standard_errors_of_the_paired_difference(z, seed):
    rows, best = _rows(0.0, seed)
    diff = [a - b for a, b in zip(rows, best)]
    threshold = z * statistics.stdev(diff) / math.sqrt(N)  # sample sd (n - 1), standard error of the mean
    assert 0.005 < threshold < 0.05  # a realistic gap: a few hundredths of a nat
    for scale, cut in ((1.001, True), (0.999, False)):
        rows, best = _rows(scale * threshold, seed)
        assert bool(worse_beyond_noise(rows, best, z)) is cut, (scale, threshold)
        assert not worse_beyond_noise(best, rows, z)  # the better plan is never the one cut
    # the same gap is a cut at a slightly lower z and not at a slightly higher one
    rows, best = _rows(threshold, seed)
    assert worse_beyond_noise(rows, best, z * 0.999) and not worse_beyond_noise(rows, best, z * 1.001)


def test_no_spread_in_the_difference_is_judged_by_its_sign():
    best = [0.25 * k for k in range(1, N + 1)]  # dyadic values: adding 0.5 is exact, so sd == 0 exactly
    worse, better = [b + 0.5 for b in best], [b - 0.5 for b in best]
    assert np.std(np.subtract(worse, best), ddof=1) == 0.0
    assert not worse_beyond_noise(best, best, 2.0)  # identical rows: no gap, no cut
    for z in (0.0, 2.0, 1e9, math.inf):  # a gap on every row, with no noise, is beyond any z
        assert worse_beyond_noise(worse, best, z)
        assert not worse_beyond_noise(better, best, z)
    assert not worse_beyond_noise(worse[:1], best[:1], 2.0)  # one row: no spread to judge by
