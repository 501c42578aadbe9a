"""The super-network: every adaptable module of a model as an ElasticLinear, plus shortcuts.

    attach_supernet(model, candidates, shortcuts=None) -> {name: ElasticLinear}
    activate(model, selection)          one sub-plan for the next forwards (absent = off)
    extract(model, selection, copy)     standalone adapters / shortcuts with the same weights
    plan_state_dict(model, selection)   those weights named as the plan's own model names them
    PlanSampler(candidates, budget, seed=..., prior=...)   budget-feasible sub-plans
    train_supernet_steps(model, batches, optimizer, sampler, n_steps, after_backward=None)

A selection has a plan's two fields: ``modules`` {module name: choice dict with 'type'} and
``shortcuts`` {'<layer>.<kind>': {'rank', 'alpha'}}; a Plan works as a selection as it is.
Shortcuts are modules built by the caller with every shortcut candidate on (HeteroLoRA's
ShortcutSet: ``items()`` yields (key, module with ``enabled``)); a sub-plan switches them.
"""
from __future__ import annotations

import copy as copylib
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from .attach import SHORTCUTS_ATTR
from .elastic import ElasticLinear, split_choice
from .registry import count_params



@dataclass
class Selection:
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    shortcuts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, obj) -> "Selection":
        """A Selection from a Selection, a Plan (or anything with .modules/.shortcuts), a dict
        with those keys, or a list of Candidates."""
        if isinstance(obj, Selection):
            return obj
        if isinstance(obj, dict):
            return cls(dict(obj.get("modules", {})), dict(obj.get("shortcuts", {})))
        if hasattr(obj, "modules") and hasattr(obj, "shortcuts"):
            return cls(dict(obj.modules), dict(obj.shortcuts))
        sel = cls()
        for c in obj:
            if c.is_shortcut:
                sel.shortcuts[c.target] = {k: v for k, v in c.choice if k != "type"}
            else:
                sel.modules[c.target] = c.choice_dict
        return sel


def shortcut_choices(candidates) -> dict[str, dict[str, Any]]:
    """{key: hparams} of every shortcut candidate: what to build the shortcut set with."""
    return Selection.of([c for c in candidates if c.is_shortcut]).shortcuts


def attach_supernet(model: nn.Module, candidates, shortcuts: nn.Module | None = None
                    ) -> dict[str, ElasticLinear]:
    """Wrap every module that has candidates in an ElasticLinear holding all of them.

    ``shortcuts`` (optional): the model's shortcut set, built with every shortcut candidate;
    it is stored as ``model.more_shortcuts`` and switched off.  Base weights are frozen; the
    rest of the model (e.g. the task head) is left as it is.  Nothing is active afterwards.
    """
    per_module: dict[str, list[dict]] = {}
    for c in candidates:
        if not c.is_shortcut:
            per_module.setdefault(c.target, []).append(c.choice_dict)
    built = {name: ElasticLinear(model.get_submodule(name), choices)
             for name, choices in per_module.items()}  # all built before any is swapped in
    for name, em in built.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, em)
    if shortcuts is not None:
        setattr(model, SHORTCUTS_ATTR, shortcuts)
        for _, sc in shortcuts.items():
            sc.enabled = False
    return built


def elastic_modules(model: nn.Module) -> dict[str, ElasticLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, ElasticLinear)}


def shortcut_modules(model: nn.Module) -> dict[str, nn.Module]:
    sset = getattr(model, SHORTCUTS_ATTR, None)
    return dict(sset.items()) if sset is not None else {}


def _check_shortcut(key: str, hp: dict, sc: nn.Module) -> None:
    want = {k: v for k, v in hp.items() if k != "enabled"}
    have = {k: v for k, v in sc.hparams.items() if k in want}
    if {k: float(v) for k, v in want.items()} != {k: float(v) for k, v in have.items()}:
        raise ValueError(f"shortcut {key}: the selection asks for {want}, the super-network "
                         f"holds {sc.hparams}")


def activate(model: nn.Module, selection) -> None:
    """Make ``selection`` the sub-plan of the next forwards; every other module and shortcut is off."""
    sel = Selection.of(selection)
    ems, scs = elastic_modules(model), shortcut_modules(model)
    unknown = [n for n in sel.modules if n not in ems] + [k for k in sel.shortcuts if k not in scs]
    if unknown:
        raise ValueError(f"the selection names {unknown[:3]} ({len(unknown)} in all), which the "
                         f"super-network does not hold; attach_supernet with those candidates")
    for key, hp in sel.shortcuts.items():
        _check_shortcut(key, hp, scs[key])
    for name, em in ems.items():
        em.activate(sel.modules.get(name))
    for key, sc in scs.items():
        sc.enabled = key in sel.shortcuts


def extract(model: nn.Module, selection, copy: bool = True) -> Selection:
    """The selection's standalone adapters ({name: Adapter}) and shortcuts ({key: module}),
    carrying the super-network's weights (cloned unless ``copy=False``)."""
    sel = Selection.of(selection)
    ems, scs = elastic_modules(model), shortcut_modules(model)
    out = Selection()
    for name, choice in sel.modules.items():
        out.modules[name] = ems[name].extract(choice, copy=copy)
    for key, hp in sel.shortcuts.items():
        _check_shortcut(key, hp, scs[key])
        sc = copylib.deepcopy(scs[key]) if copy else scs[key]
        sc.enabled = True
        out.shortcuts[key] = sc
    return out


def plan_state_dict(model: nn.Module, selection) -> dict[str, torch.Tensor]:
    """The selection's weights (cloned), named as a model with that plan applied names them:
    load with ``load_state_dict(sd, strict=False)`` to warm-start a standalone trial."""
    sel = Selection.of(selection)
    sd = {}
    for name, adapter in extract(model, Selection(sel.modules)).modules.items():
        sd.update({f"{name}.{k}": p.detach() for k, p in adapter.named_parameters(recurse=False)})
    names = {id(p): n for n, p in model.named_parameters()}
    for key, sc in extract(model, Selection({}, sel.shortcuts), copy=False).shortcuts.items():
        sd.update({names[id(p)]: p.detach().clone() for p in sc.parameters()})
    return sd


def selection_params(model: nn.Module, selection) -> int:
    """Trainable adapter + shortcut parameters of the selection on this super-network."""
    sel = Selection.of(selection)
    ems, scs = elastic_modules(model), shortcut_modules(model)
    n = 0
    for name, choice in sel.modules.items():
        kind, hp = split_choice(choice)
        n += count_params(kind, ems[name].d_in, ems[name].d_out, **hp)
    return n + sum(p.numel() for k in sel.shortcuts for p in scs[k].parameters())


class PlanSampler:
    """Budget-feasible random sub-plans: uniform over kinds, then over that kind's sizes.

    ``random()``: modules (and shortcuts) in a random order; each is off with probability
    ``p_off``, otherwise takes a kind drawn uniformly among those with a size that still fits
    the budget left, then a size uniformly among that kind's fitting sizes (none fits: off).
    ``largest()``: modules in a random order, each taking its largest option that still fits
    (a sandwich-rule "max" sub-network under the budget).  ``sample()`` cycles through
    ``cycle`` (default: largest, prior if given, then randoms).  One seed, one sequence.
    """

    def __init__(self, candidates, budget: int, *, seed: int = 0, p_off: float = 0.25,
                 prior=None, cycle: tuple[str, ...] | None = None):
        if not isinstance(budget, int) or budget < 0:
            raise ValueError(f"budget must be a parameter count >= 0, got {budget!r}")
        self.budget, self.p_off = budget, p_off
        self.groups: dict[str, list] = {}
        for c in candidates:
            self.groups.setdefault(c.target, []).append(c)
        self.prior = None
        if prior is not None:
            self.prior = Selection.of(prior)
            n = self.params(self.prior)
            if n > budget:
                raise ValueError(f"the prior plan has {n} parameters, over the budget {budget}")
        self.cycle = cycle or (("largest", "prior", "random", "random") if prior is not None
                               else ("largest", "random", "random", "random"))
        self.rng = random.Random(seed)
        self.step = 0

    @staticmethod
    def _key(target: str, choice: dict) -> tuple:
        return target, tuple(sorted((k, v) for k, v in choice.items() if k != "enabled"))

    def sizes(self, sel: Selection) -> dict[str, int]:
        """{target: parameters} of a selection made of this sampler's candidates."""
        known = {self._key(c.target, c.choice_dict): c.params
                 for g in self.groups.values() for c in g}
        out = {}
        for target, choice in list(sel.modules.items()) + [
                (k, {"type": "shortcut", **hp}) for k, hp in sel.shortcuts.items()]:
            key = self._key(target, choice)
            if key not in known:
                raise ValueError(f"{target}: {choice} is not a candidate of this sampler")
            out[target] = known[key]
        return out

    def params(self, sel: Selection) -> int:
        return sum(self.sizes(sel).values())

    def _draw(self, pick: Callable[[list], Any]) -> Selection:
        order = list(self.groups)
        self.rng.shuffle(order)
        left, chosen = self.budget, []
        for target in order:
            fits = [c for c in self.groups[target] if c.params <= left]
            c = pick(fits) if fits else None
            if c is not None:
                chosen.append(c)
                left -= c.params
        return Selection.of(chosen)

    def _random_pick(self, fits: list):
        if self.rng.random() < self.p_off:
            return None
        kinds = sorted({c.kind for c in fits})
        kind = self.rng.choice(kinds)
        return self.rng.choice([c for c in fits if c.kind == kind])

    def random(self) -> Selection:
        return self._draw(self._random_pick)

    def largest(self) -> Selection:
        return self._draw(lambda fits: max(fits, key=lambda c: c.params))

    def sample(self) -> Selection:
        what = self.cycle[self.step % len(self.cycle)]
        self.step += 1
        if what == "prior" and self.prior is not None:
            return self.prior
        return self.largest() if what == "largest" else self.random()

    def __iter__(self) -> Iterator[Selection]:
        while True:
            yield self.sample()


def train_supernet_steps(model: nn.Module, batches: Iterable[dict], optimizer, sampler,
                         n_steps: int, *, loss_fn: Callable | None = None,
                         after_backward: Callable[[nn.Module], None] | None = None) -> list[float]:
    """``n_steps`` optimizer steps, each on a fresh sub-plan from ``sampler`` and one batch.

    ``loss_fn(model, batch)`` defaults to ``model(**batch).loss`` (HF models given labels);
    ``after_backward(model)`` runs between backward and step (e.g. a sensitivity update).
    Returns the training losses.  The caller owns the schedule, precision and evaluation.
    """
    loss_fn = loss_fn or (lambda m, b: m(**b).loss)
    losses, it = [], iter(batches)
    model.train()
    for _ in range(n_steps):
        batch = next(it)
        activate(model, sampler.sample())
        loss = loss_fn(model, batch)
        loss.backward()
        if after_backward is not None:
            after_backward(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses
