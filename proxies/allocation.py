"""Static allocation: scores + a parameter budget -> at most one choice per module.

A multiple-choice knapsack: every module is a group whose options are "off" or one of its
candidates (kind + size); every shortcut is a group with one option.  Maximise the summed
score subject to adapter + shortcut parameters <= budget (the task head is never counted,
never counted against the budget).

Solved exactly by dynamic programming over a parameter grid: the grid unit is the gcd of all
option sizes when that keeps the table small (then the DP is exact), otherwise
ceil(budget / max_cells) with sizes rounded *up* (so the plan can never exceed the budget),
followed by an exact-size repair pass that spends what the rounding left.  The LP bound of
the relaxation (upper convex hull per group, fractional greedy) is reported with the gap.
Ties go to the earlier option in the candidate order; the result is deterministic.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

MAX_CELLS = 20_000


class Allocation(list):
    """The chosen candidates (a plain list, in candidate order) with the knapsack's numbers."""

    budget: int = 0
    params: int = 0
    total_score: float = 0.0
    lp_bound: float = 0.0
    method: str = ""
    grid_unit: int = 1

    @property
    def gap(self) -> float:
        return max(self.lp_bound - self.total_score, 0.0)

    @property
    def relative_gap(self) -> float:
        return self.gap / self.lp_bound if self.lp_bound > 0 else 0.0

    @property
    def fill(self) -> float:
        return self.params / self.budget if self.budget else 0.0

    def summary(self) -> dict:
        return {"method": self.method, "grid_unit": self.grid_unit, "budget": self.budget,
                "params": self.params, "fill": round(self.fill, 6),
                "total_score": self.total_score, "lp_bound": self.lp_bound,
                "gap": self.gap, "relative_gap": self.relative_gap}


@dataclass
class _Option:
    cand: object
    score: float
    params: int


def _groups(candidates, scores, budget) -> "OrderedDict[str, list[_Option]]":
    missing = [c.key for c in candidates if c.key not in scores]
    if missing:
        raise ValueError(f"no score for {len(missing)} candidate(s), e.g. {missing[:3]}")
    groups: OrderedDict[str, list[_Option]] = OrderedDict()
    for c in candidates:
        s = float(scores[c.key])
        if not math.isfinite(s):
            raise ValueError(f"score of {c.key!r} is {s}; scores must be finite")
        groups.setdefault(c.target, [])
        if s > 0 and 0 < c.params <= budget:
            groups[c.target].append(_Option(c, s, int(c.params)))
    return OrderedDict((k, v) for k, v in groups.items() if v)


def lp_bound(groups, budget: int) -> float:
    """Optimum of the LP relaxation: per group the upper concave hull of (params, score)
    from (0, 0), then the hull segments by decreasing efficiency, the last one fractional."""
    segments = []
    for opts in groups.values():
        pts = sorted({(o.params, o.score) for o in opts})
        hull = [(0, 0.0)]
        for w, v in pts:
            if v <= hull[-1][1]:
                continue
            while len(hull) >= 2:
                (w1, v1), (w2, v2) = hull[-2], hull[-1]
                if (v2 - v1) * (w - w1) <= (v - v1) * (w2 - w1):  # hull[-1] under the chord
                    hull.pop()
                else:
                    break
            hull.append((w, v))
        segments += [(b[1] - a[1], b[0] - a[0]) for a, b in zip(hull, hull[1:])]
    segments.sort(key=lambda s: -s[0] / s[1])
    left, total = float(budget), 0.0
    for dv, dw in segments:
        if dw <= left:
            total += dv
            left -= dw
        else:
            total += dv * left / dw
            break
    return total


def allocate(candidates, scores: dict[str, float], budget: int, *,
             max_cells: int = MAX_CELLS) -> Allocation:
    """Choose at most one candidate per module (and shortcuts on/off) to maximise the total
    score with trainable adapter + shortcut parameters <= budget.

    ``budget``: a parameter count.  Candidates with score <= 0 or larger than the budget are
    never chosen.  Returns an ``Allocation`` (a list of Candidates).
    """
    budget = int(budget)
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    groups = _groups(candidates, scores, budget)
    alloc = Allocation()
    alloc.budget = budget
    if not groups or budget == 0:
        alloc.method = "empty"
        return alloc
    sizes = [o.params for opts in groups.values() for o in opts]
    unit = math.gcd(*sizes) if len(sizes) > 1 else sizes[0]
    if budget // unit <= max_cells:
        method = "exact-dp"
    else:
        unit, method = math.ceil(budget / max_cells), "grid-dp"
    cap = budget // unit
    names = list(groups)
    best = np.zeros(cap + 1)
    choice = np.zeros((len(names), cap + 1), dtype=np.int16)
    for gi, name in enumerate(names):
        new = best.copy()
        for oi, o in enumerate(groups[name], start=1):
            w = -(-o.params // unit)  # ceil: never under-count
            if w > cap:
                continue
            cand = best[: cap + 1 - w] + o.score
            better = cand > new[w:]
            new[w:][better] = cand[better]
            choice[gi, w:][better] = oi
        best = new
    picked: dict[str, int] = {}
    c = cap
    for gi in range(len(names) - 1, -1, -1):
        oi = int(choice[gi, c])
        if oi:
            picked[names[gi]] = oi
            c -= -(-groups[names[gi]][oi - 1].params // unit)
    used = sum(groups[n][i - 1].params for n, i in picked.items())
    if method == "grid-dp":  # spend what rounding left, exactly: best upgrade first
        while True:
            best_gain, best_move = 0.0, None
            for n in names:
                cur = picked.get(n, 0)
                cur_s = groups[n][cur - 1].score if cur else 0.0
                cur_p = groups[n][cur - 1].params if cur else 0
                for oi, o in enumerate(groups[n], start=1):
                    gain = o.score - cur_s
                    if gain > best_gain and used - cur_p + o.params <= budget:
                        best_gain, best_move = gain, (n, oi, o.params - cur_p)
            if best_move is None:
                break
            n, oi, dp = best_move
            picked[n] = oi
            used += dp
    order = {c.key: i for i, c in enumerate(candidates)}
    chosen = sorted((groups[n][i - 1] for n, i in picked.items()), key=lambda o: order[o.cand.key])
    alloc.extend(o.cand for o in chosen)
    alloc.params = sum(o.params for o in chosen)
    alloc.total_score = float(sum(o.score for o in chosen))
    alloc.lp_bound = max(lp_bound(groups, budget), alloc.total_score)
    alloc.method, alloc.grid_unit = method, unit
    assert alloc.params <= budget
    return alloc
