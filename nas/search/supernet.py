"""Weight-sharing stages of the search: the whole space trained as one super-network (a
budget-feasible sub-plan each step; LoNAS / Shears / SQFT), importance measured on its trained
weights (AdaLoRA sensitivity, normalised within kind), then many plans scored on the shared
weights by held-out loss (inference only) in an Optuna study."""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import statistics
import time
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

import proxies
from search_spaces.anatomy import task_head_parameters
from search_spaces.shortcuts import ShortcutSet
from search_spaces.space import kind_of
from search_spaces.supernet import (PlanSampler, Selection, activate, attach_supernet,
                                    plan_state_dict, shortcut_choices, train_supernet_steps)

from ..baselines import baselines_at, preferred
from ..data import row_lengths
from ..io import atomic_write_bytes, atomic_write_text, pause_for_test
from ..plan import Plan
from ..train.precision import resolve_device
from ..train.support import length_grouped_order
from .config import PLAN_ATTR
from .cost import StageSizes
from .ranking import heldout
from .study import make_sampler
from .trials import plan_hash, reweight, suggest_weights
from .workers import ask_tagged, fail_dead_running

WEIGHTS_FILE, META_FILE = "supernet.safetensors", "supernet.json"


class FixedCycle:
    """The sub-plan of each super-network step: the largest that fits, then one of the fixed
    plans (proxy plan, uniform-LoRA baselines) in turn, then two random ones."""

    def __init__(self, sampler: PlanSampler, fixed: list[Selection]):
        self.sampler, self.fixed, self.step = sampler, fixed, 0

    def sample(self) -> Selection:
        i, self.step = self.step, self.step + 1
        if i % 4 == 0:
            return self.sampler.largest()
        if i % 4 == 1 and self.fixed:
            return self.fixed[(i // 4) % len(self.fixed)]
        return self.sampler.random()


def _batches(data, batch_size: int, seed: int, steps: int | None = None, grouped: bool = False):
    """Training batches for ever: a fresh seeded order per pass, full batches only; ``grouped``:
    rows of similar lengths together, as the trials batch them (length_grouped_order for a run of
    ``steps``), so a super-network step pads as little as a plan's."""
    collate, train = data.collator(), data.train
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in train.column_names]
    g, size = np.random.default_rng(seed), min(batch_size, len(train))
    lengths = row_lengths(train) if grouped and "input_ids" in cols else None
    for n in itertools.count():
        perm = g.permutation(len(train)).tolist() if lengths is None else \
            length_grouped_order(lengths, size, steps, seed + n)
        for i in range(0, len(perm) - size + 1, size):
            part = train[perm[i:i + size]]
            yield collate([{c: part[c][j] for c in cols} for j in range(size)])


def baseline_origin(placement: str) -> str:
    """The origin of a uniform-LoRA baseline's trials ("baseline mlp"; finalists append " #<n>")."""
    return f"baseline {placement}"


class SharedWeights:
    """The super-network of a search: build, train (or reload), importance, warm starts."""

    def __init__(self, search):
        self.s, cfg = search, search.cfg
        self.baselines = baselines_at(search.layout, search.budget)
        self.preferred = tuple(baseline_origin(p) for p in preferred(self.baselines, search.layout))
        extra = [c for b in self.baselines.values() for c in b.candidates(search.layout)]
        known = {c.key for c in search.candidates}
        # The baselines' choices join the super-network so they are trained and warm-started
        # like every plan; the knapsack still only sees the space's candidates.
        self.net_candidates = list(search.candidates) + [c for c in extra if c.key not in known]
        self.fingerprint = hashlib.sha1(json.dumps(
            [sorted(c.key for c in self.net_candidates), search.budget, cfg.seed, cfg.supernet_lr,
             cfg.batch_size, cfg.max_length, search.sizes.supernet_steps, cfg.group_by_length], sort_keys=True
        ).encode()).hexdigest()[:16]
        self.model = self._build()

    def _build(self):
        torch.manual_seed(self.s.cfg.seed)
        model = copy.deepcopy(self.s.base)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in task_head_parameters(model):
            p.requires_grad_(True)
        sc = shortcut_choices(self.net_candidates)
        sset = ShortcutSet(model, self.s.layout, sc) if sc else None
        attach_supernet(model, self.net_candidates, shortcuts=sset)
        return model.to(resolve_device(self.s.cfg.device))

    def trainable(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def baseline_plan(self, placement: str) -> Plan:
        plan = self.baselines[placement].plan(self.s.layout, **copy.deepcopy(self.s.plan_fields()))
        plan.provenance["origin"] = baseline_origin(placement)
        return plan

    # -- train or reload --
    def train_or_load(self) -> dict[str, Any]:
        s, cfg = self.s, self.s.cfg
        weights, meta_path = s.out / WEIGHTS_FILE, s.out / META_FILE
        if cfg.resume and weights.is_file() and meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("fingerprint") == self.fingerprint:
                from safetensors.torch import load_file

                missing, unexpected = self.model.load_state_dict(load_file(str(weights)), strict=False)
                if not unexpected and not set(self.trainable()) & set(missing):
                    self.meta = {**meta, "reused": True}
                    return self.meta
        self.meta = self._train()
        from safetensors.torch import save

        atomic_write_bytes(weights, save({n: p.detach().contiguous().clone()
                                          for n, p in self.trainable().items()}))
        atomic_write_text(meta_path, json.dumps(self.meta, indent=1))  # written last: marks it complete
        return self.meta

    def _train(self) -> dict[str, Any]:
        from transformers import get_scheduler

        s, cfg = self.s, self.s.cfg
        steps = s.sizes.supernet_steps
        fixed = [Selection.of(self.baseline_plan(p)) for p in self.baselines]
        if s.proxy_plan is not None:
            fixed.insert(0, Selection.of(s.proxy_plan))
        sampler = FixedCycle(PlanSampler(s.candidates, s.budget, seed=cfg.seed), fixed)
        sens = proxies.Sensitivity(self.model, warmup_steps=int(0.15 * steps))
        params = list(self.trainable().values())
        opt = torch.optim.AdamW(params, lr=cfg.supernet_lr, weight_decay=0.0)
        sched = get_scheduler("linear", opt, num_warmup_steps=max(1, steps // 10), num_training_steps=steps)

        def after_backward(model):
            sens.update(model)
            torch.nn.utils.clip_grad_norm_(params, 1.0)

        torch.manual_seed(cfg.seed)
        dev = next(self.model.parameters()).device
        it = ({k: v.to(dev) for k, v in b.items()}
              for b in _batches(s.trial_data, cfg.batch_size, cfg.seed, steps, cfg.group_by_length))
        # Mixed precision as the trials train (the frozen base in fp32, autocast as transformers does).
        dtype = torch.bfloat16 if cfg.bf16 else torch.float16
        amp = torch.autocast(dev.type, dtype=dtype, enabled=cfg.bf16 or cfg.fp16)
        losses, t0 = [], time.perf_counter()
        from tqdm.auto import tqdm

        for _ in tqdm(range(steps), desc="super-network", unit="step", disable=not cfg.progress, leave=False):
            with amp:
                losses += train_supernet_steps(self.model, it, opt, sampler, 1, after_backward=after_backward)
            sched.step()
            pause_for_test("supernet", s.out)
        seconds = time.perf_counter() - t0
        raw = sens.raw_scores(s.candidates)
        imp = proxies.trained_importance(sens, s.candidates, normalise=cfg.normalise)
        # A candidate no sampled sub-plan ever used has no signal: it gets its kind's median
        # (the knapsack would skip a 0 score), and the report says how many there were.
        never = [k for k, v in raw.items() if v == 0]
        kinds = {c.key: kind_of(c) for c in s.candidates}
        for k in never:
            seen = [imp[j] for j in imp if kinds[j] == kinds[k] and raw[j] > 0]
            imp[k] = statistics.median(seen) if seen else 1.0
        return {"fingerprint": self.fingerprint, "steps": steps, "seconds": seconds,
                "step_time_s": seconds / max(steps, 1), "loss_first": float(np.mean(losses[:10])),
                "loss_last": float(np.mean(losses[-10:])), "importance": imp,
                "never_trained": len(never), "n_candidates": len(raw), "reused": False}

    def warm_state(self, plan: Plan) -> dict[str, torch.Tensor]:
        """The plan's adapter and shortcut weights plus the task head, named as the plan's own
        model names them."""
        sd = plan_state_dict(self.model, plan)
        head = {id(p) for p in task_head_parameters(self.model)}
        sd.update({n: p.detach().clone() for n, p in self.model.named_parameters() if id(p) in head})
        return sd


# ---- cheap scoring -------------------------------------------------------------------------
def size_neutral(importance: dict[str, float], candidates) -> dict[str, float]:
    """Importance rescaled so that every kind's typical candidate has the same importance per
    parameter.  Normalised within kind, a kind's median candidate scores 1 whatever its size, so
    the knapsack (summed score under a parameter budget) would take the cheapest kind everywhere
    by construction; rescaled, the prior prefers no kind, and the kind weights that Optuna
    samples, judged by held-out loss on the shared weights, decide between kinds."""
    by: dict[str, list[int]] = {}
    for c in candidates:
        by.setdefault(kind_of(c), []).append(c.params)
    med = {k: statistics.median(v) for k, v in by.items()}
    ref = statistics.median(c.params for c in candidates)
    return {c.key: importance[c.key] * med[kind_of(c)] / ref for c in candidates}


def score_plans(search, shared: SharedWeights, sizes: StageSizes, storage, name: str,
                rows) -> optuna.Study:
    """Plans scored on the shared weights: the importance plan, the proxy plan and the
    baselines first, then plans Optuna samples (re-weighted importance -> knapsack), until
    ``sizes.scored_plans`` are scored.  Every score is a finished trial in the storage."""
    cfg, data = search.cfg, search.trial_data
    study = optuna.create_study(study_name=f"{name}.scoring", storage=storage, direction="minimize",
                                load_if_exists=True, sampler=make_sampler(cfg.sampler, cfg.seed))
    fail_dead_running(study)  # an interrupted run's: its plan is scored again
    imp = size_neutral(shared.meta["importance"], search.candidates)
    fixed = [("importance plan", search._allocate(imp)),
             ("importance plan, kind medians equal", search._allocate(shared.meta["importance"]))]
    if search.proxy_plan is not None:
        fixed.append(("proxy plan", search.proxy_plan))
    fixed += [(baseline_origin(p), shared.baseline_plan(p)) for p in shared.baselines]
    done = {t.user_attrs.get("origin"): t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    seen = {t.user_attrs["plan_hash"]: t.value for t in done.values()}

    def run(trial, plan, origin):
        h = plan_hash(plan)
        trial.set_user_attr("origin", origin)
        trial.set_user_attr("plan_hash", h)
        trial.set_user_attr("main_metric", data.main_metric)
        trial.set_user_attr("trainable_params", plan.trainable_params)
        trial.set_user_attr(PLAN_ATTR, plan.to_dict())
        if h in seen:
            trial.set_user_attr("duplicate", True)
            study.tell(trial, seen[h])
            return
        activate(shared.model, plan)
        pause_for_test("scoring", search.out)
        ho = heldout(shared.model, data, rows, batch_size=cfg.batch_size)
        trial.set_user_attr("metrics", {**ho.metrics, "loss": ho.loss, "loss_se": ho.se})
        seen[h] = ho.loss
        study.tell(trial, ho.loss)

    for origin, plan in fixed:
        if origin not in done:
            run(ask_tagged(study), plan, origin)
    n_done = lambda: len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))  # noqa: E731
    while n_done() < sizes.scored_plans:
        trial = ask_tagged(study)
        params = suggest_weights(trial, search.candidates)
        run(trial, search._allocate(reweight(search.candidates, imp, params, search.layout.num_layers,
                                                 cfg.seed + trial.number)), "sampled")
    activate(shared.model, Selection())
    return study
