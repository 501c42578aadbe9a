"""Weight-sharing stages of the search: the whole space trained as one super-network (a
budget-feasible sub-plan each step; LoNAS / Shears / SQFT), importance measured on its trained
weights (AdaLoRA sensitivity, normalised within kind), then many plans scored on the shared
weights by held-out loss (inference only) in an Optuna study."""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import statistics
import time
import warnings
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
from .study import make_sampler, sampler_seed
from .trials import plan_hash, reweight, suggest_weights
from .workers import JOB_ATTR, Job, heartbeat, pop_job, round_kw, run_round

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
    def train_or_load(self, stages: optuna.Study, name: str) -> dict[str, Any]:
        """Trained once for all the workers of ``stages`` (a job: workers.run_round): the worker
        that takes the job trains it and writes it to its output folder, the others wait and read
        it from there, so workers share -o (one machine, or a shared file system); a worker whose
        -o lacks it trains the same network itself (same seed).  A resumed or retried job reuses
        saved weights of the same fingerprint instead of training again."""
        cfg, key, mine = self.s.cfg, f"supernet {self.fingerprint}", {}

        def run(job):
            trial = pop_job(stages, key)
            if trial is None:
                return
            with heartbeat(trial):
                again = cfg.resume or any(t.user_attrs.get(JOB_ATTR) == key and t.number != trial.number
                                          for t in stages.get_trials(deepcopy=False))
                meta = (self._load() if again else None) or self._train_and_save()
                for k in ("steps", "seconds", "step_time_s", "loss_first", "loss_last"):
                    trial.set_user_attr(k, meta[k])
                stages.tell(trial, meta["loss_last"])
            mine["meta"] = meta

        run_round(stages, [Job(key)], run, **round_kw(cfg, name))
        self.meta = mine.get("meta") or self._load()
        if self.meta is None:
            print(f"note: the super-network was trained by another worker, and {self.s.out} does not "
                  f"hold it (workers share -o); training it here too")
            self.meta = self._train_and_save()
        return self.meta

    def _load(self) -> dict[str, Any] | None:
        """The saved super-network of this fingerprint, loaded into the model (None: none)."""
        weights, meta_path = self.s.out / WEIGHTS_FILE, self.s.out / META_FILE
        if not (weights.is_file() and meta_path.is_file()):
            return None
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != self.fingerprint:
            return None
        from safetensors.torch import load_file

        missing, unexpected = self.model.load_state_dict(load_file(str(weights)), strict=False)
        if unexpected or set(self.trainable()) & set(missing):
            return None
        return {**meta, "reused": bool(self.s.cfg.resume)}

    def _train_and_save(self) -> dict[str, Any]:
        meta = self._train()
        from safetensors.torch import save

        weights, meta_path = self.s.out / WEIGHTS_FILE, self.s.out / META_FILE
        atomic_write_bytes(weights, save({n: p.detach().contiguous().clone()
                                          for n, p in self.trainable().items()}))
        atomic_write_text(meta_path, json.dumps(meta, indent=1))  # written last: marks it complete
        return meta

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


SCORING_ROUND = 4  # sampled plans drawn at once (TPE's random start is 4 plans)


def score_plans(search, shared: SharedWeights, sizes: StageSizes, storage, name: str,
                rows) -> optuna.Study:
    """Plans scored on the shared weights: the importance plan, the proxy plan and the
    baselines, then plans Optuna samples (re-weighted importance -> knapsack), until
    ``sizes.scored_plans`` are scored.  Every score is a finished trial in the storage.

    The workers of the study split the scoring (workers.run_round): each round's plans are
    drawn by a sampler seeded with the round, from the scores of the rounds before it only, so
    every worker queues the same plans and one worker scores the same plans as several (a sampler
    passed as an Optuna instance keeps its own state: the same plans only in one process)."""
    cfg, data = search.cfg, search.trial_data
    study = optuna.create_study(study_name=f"{name}.scoring", storage=storage, direction="minimize",
                                load_if_exists=True, sampler=make_sampler(cfg.sampler, cfg.seed))
    imp = size_neutral(shared.meta["importance"], search.candidates)
    fixed = [("importance plan", search._allocate(imp)),
             ("importance plan, kind medians equal", search._allocate(shared.meta["importance"]))]
    if search.proxy_plan is not None:
        fixed.append(("proxy plan", search.proxy_plan))
    fixed += [(baseline_origin(p), shared.baseline_plan(p)) for p in shared.baselines]
    hashes: set[str] = set()

    def job(key, origin, plan, params=None, distributions=None) -> Job:
        h = plan_hash(plan)
        attrs = {"origin": origin, "plan_hash": h, "main_metric": data.main_metric,
                 "trainable_params": plan.trainable_params, PLAN_ATTR: plan.to_dict()}
        if h in hashes:  # scored again only if its twin is not done yet (the same loss)
            attrs["duplicate"] = True
        hashes.add(h)
        return Job(key, attrs, params, distributions)

    def score(j: Job) -> None:
        trial = pop_job(study, j.key)
        if trial is None:
            return
        with heartbeat(trial):
            twin = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.user_attrs.get("plan_hash") == j.attrs["plan_hash"]]
            if j.attrs.get("duplicate") and twin:
                study.tell(trial, twin[0])
                return
            activate(shared.model, Selection.of(j.attrs[PLAN_ATTR]))
            pause_for_test("scoring", search.out)
            ho = heldout(shared.model, data, rows, batch_size=cfg.batch_size)
            trial.set_user_attr("metrics", {**ho.metrics, "loss": ho.loss, "loss_se": ho.se})
            study.tell(trial, ho.loss)

    jobs = [job(f"fixed {origin}", origin, plan) for origin, plan in fixed]
    n_sampled, done = max(0, sizes.scored_plans - len(fixed)), {}
    for r in range(max(1, math.ceil(n_sampled / SCORING_ROUND))):
        history = [done[j.key] for j in jobs if done.get(j.key) is not None]
        slots = range(r * SCORING_ROUND, min(n_sampled, (r + 1) * SCORING_ROUND))
        batch = [j for j in jobs if j.key not in done]
        for k, (params, dists) in zip(slots, draw(cfg, search.candidates, history, r, len(slots))):
            # the jitter's seed: the trial number this plan had when one process scored in order
            plan = search._allocate(reweight(search.candidates, imp, params, search.layout.num_layers,
                                             cfg.seed + len(fixed) + k))
            batch.append(job(f"sampled {k}", "sampled", plan, params, dists))
        jobs += [j for j in batch if j not in jobs]
        done.update(run_round(study, batch, score, **round_kw(cfg, name)))
    activate(shared.model, Selection())
    return study


def draw(cfg, candidates, history: list, seed: int, n: int) -> list[tuple[dict, dict]]:
    """``n`` plans' parameters (and their distributions) from a sampler seeded with ``seed`` that
    has seen only ``history`` (finished trials): the same for every worker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = make_sampler(cfg.sampler, sampler_seed(cfg.seed, seed)) if isinstance(cfg.sampler, str) \
            else cfg.sampler
        mem = optuna.create_study(direction="minimize", sampler=sampler)
        mem.add_trials(history)
        out = []
        for _ in range(n):
            t = mem.ask()
            out.append((suggest_weights(t, candidates), dict(t.distributions)))
    return out
