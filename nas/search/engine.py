"""The search engine: proxy stage, then (strategy "supernet", the default) a weight-sharing
search or (strategy "trials") an Optuna study of short trials, then the best plan.

Stages
  1. proxy: score every candidate of the space jointly (proxies.score_candidates) and
     allocate the budget (proxies.allocate) -> the static proxy plan;
  2a. supernet (weight_sharing.py, its stages listed there): the whole space trained as one
     super-network, importance on its trained weights, many plans scored on the shared weights
     by held-out loss, the best few and the uniform-LoRA baselines trained briefly at a small
     lr grid (successive halving); every stage sized from ``cost_budget`` full runs of the plan;
  2b. trials: each Optuna trial is a plan.  The sampler re-weights the proxy scores (a weight
     per adapter kind, per module role, a depth bias and a per-candidate jitter: trials.py) and
     the knapsack turns them into a plan that always fits the budget.  Each plan is trained for a
     short budget on part of the training data and scored by its held-out loss (never on dev);
     the pruner's cuts need a gap beyond the held-out loss's noise;
  3. result: the plan with the lowest held-out loss (plan.json), report.md (with the search's
     cost in full runs of the plan), pareto.png and proxy_vs_trial.png.

Storage is an Optuna journal file in the output folder by default, so ``--resume`` loses no
finished trial (the super-network's weights are kept in supernet.safetensors);
``--storage postgresql://...`` lets workers on several machines share a study; the weight-sharing
search's workers split each of its stages (weight_sharing.py: they share -o).
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

import proxies
from search_spaces import load_space
from search_spaces.anatomy import base_param_count, discover

from .. import train as training
from ..budget import parse_budget
from ..errors import UserError
from ..heads import pooling_of, set_pooling
from ..io import atomic_write_text, pause_for_test
from ..models import load_model, load_tokenizer, model_pooling
from ..plan import BUDGET_COUNTS, Plan
from .config import PLAN_ATTR, STRATEGIES, SearchConfig, SearchResult
from .report import SearchFacts, write_report
from .checks import check_max_length, check_output, check_settings, make_output, remove_unless_resumable
from .cost import full_run_steps, proxy_affordable, search_cost
from .ranking import gap_beyond_noise, heldout
from .supernet import META_FILE
from .study import (check_study_settings, journal_path, make_pruner, make_sampler, open_checked_storage,
                    open_storage, sampler_seed, shown_storage, study_settings)
from .workers import drain, fail_dead_trials, plan_seed, requeue_interrupted, same_plan_trial
from .trials import enqueue_proxy_trials, plan_hash, reweight, suggest_params, trial_rank
from .weight_sharing import check_config, weight_sharing_search


# ---- the engine ----------------------------------------------------------------------------
class Search:
    def __init__(self, cfg: SearchConfig, *, model=None, tokenizer=None, data=None):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self._model, self._tokenizer, self._data = model, tokenizer, data
        self.stage_seconds: dict[str, float] = {}  # wall time
        self.stage_cpu: dict[str, float] = {}  # this process's CPU time: robust to a shared machine
        self.signal: dict | None = None  # did the finalists' training take off (weight-sharing search)
        self.finalists_stopped: tuple[int, str] | None = None  # (rung, why): the finalists stopped early

    # -- setup --
    def prepare(self) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(cfg.model)
        if self._data is None:
            self._data = cfg.load(self._tokenizer, data_seed=cfg.seed)
        # Trials never see dev: they train on part of train and score on the rest.
        self.trial_data = self._data.holdout(cfg.holdout, seed=cfg.seed).subsample(
            max_eval_samples=cfg.trial_eval_samples, seed=cfg.seed)
        if self._model is None:
            from transformers import set_seed

            set_seed(cfg.seed)  # the new task head is randomly initialised: make it repeatable
            self._model = load_model(cfg.model, task_type=self._data.task_type,
                                     num_labels=self._data.num_labels, pooling=cfg.pooling)
        elif self._data.task_type != "causal_lm":
            set_pooling(self._model, model_pooling(cfg.model, cfg.pooling))
        self.base = self._model.eval()
        self.layout = discover(self.base)
        self.base_params = base_param_count(self.base)
        self.budget = parse_budget(cfg.budget, self.base_params)
        try:
            self.space = load_space(cfg.space)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.candidates = self.space.candidates(self.layout)
        if not self.candidates:
            raise UserError(f"search space {self.space.name!r} has no candidate for this model")
        cheapest = min(c.params for c in self.candidates)
        if cheapest > self.budget:
            raise UserError(
                f"budget {cfg.budget} = {self.budget:,} parameters is below the cheapest candidate "
                f"({cheapest:,}); raise --budget or use a space with smaller choices"
            )
        self.stage_seconds["setup"] = time.perf_counter() - t0

    def plan_fields(self) -> dict[str, Any]:
        cfg = self.cfg
        name = cfg.model or "minilm"
        return dict(
            model={"name_or_path": name, "revision": None, "family": self.layout.family,
                   "base_params": self.base_params, "pooling": pooling_of(self.base)},
            task=cfg.plan_section(self._data),
            budget={"spec": str(cfg.budget), "params": self.budget, "counts": BUDGET_COUNTS},
            # the full run batches rows as the trials did (grouped by length: half the CPU time on SST-2)
            training={"lr": self.untested_lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                      "max_length": cfg.max_length, "allocation": cfg.allocation,
                      "group_by_length": cfg.group_by_length},
        )

    @property
    def untested_lr(self) -> float:
        """The rate a plan carries until a trial tests one: the first trial's (--lr) under the trials
        strategy; under the super-network, whose shared weights test no rate, the rate a lone
        finalist trains at (the first of --lr-grid)."""
        return self.cfg.lr_grid[0] if self.cfg.strategy == "supernet" else self.cfg.first_trial_lr

    @property
    def n_proxy_batches(self) -> int:
        if self.cfg.proxy_batches is not None:
            return self.cfg.proxy_batches
        return 1 if self.cfg.strategy == "supernet" else 4

    def proxy_batches(self) -> list[dict]:
        """A few training batches (from the trial-training part, never the held-out part)."""
        cfg, train = self.cfg, self.trial_data.train
        rng = np.random.default_rng(cfg.seed)
        n = min(len(train), self.n_proxy_batches * cfg.batch_size)
        idx = rng.permutation(len(train))[:n].tolist()
        collate = self.trial_data.collator()
        rows = train.select(idx)
        cols = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in rows.column_names]
        rows = [{c: r[c] for c in cols} for r in rows]
        return [collate(rows[i:i + cfg.batch_size]) for i in range(0, n, cfg.batch_size)]

    # -- stage 1 --
    def proxy_stage(self) -> Plan | None:
        cfg = self.cfg
        cache = self.out / "proxy_scores.json"
        proxy = cfg.proxy or proxies.DEFAULT_PROXY
        t0, c0 = time.perf_counter(), time.process_time()
        if cfg.strategy == "supernet" and cfg.proxy is None and not proxy_affordable(
                len(self.candidates), self.n_proxy_batches,
                full_run_steps(len(self._data.train), cfg.batch_size, cfg.epochs)):
            # The zero-cost proxy is only a prior here; on small data it would cost more than
            # its share of the search (pass --proxy to run it anyway).
            self.scores, self.proxy_name, self.proxy_plan = {}, "none (not affordable)", None
            self.stage_seconds["proxy"] = self.stage_cpu["proxy"] = 0.0
            return None
        if cfg.resume and cache.is_file():
            cached = json.loads(cache.read_text())
            if cached.get("proxy") == proxy and set(cached["scores"]) == {c.key for c in self.candidates}:
                self.scores = cached["scores"]
        if not hasattr(self, "scores"):
            batches = self.proxy_batches()
            self.scores = proxies.score_candidates(self.base, self.layout, self.candidates,
                                                   batches, proxy=proxy)
            pause_for_test("proxy", self.out)
            atomic_write_text(cache, json.dumps({"proxy": proxy, "scores": self.scores}))
        self.proxy_name = proxy
        self.proxy_plan = self._allocate(self.scores)
        self.stage_seconds["proxy"] = time.perf_counter() - t0
        self.stage_cpu["proxy"] = time.process_time() - c0
        return self.proxy_plan

    def _allocate(self, scores: dict[str, float], lr: float | None = None,
                  fill: float = 1.0) -> Plan:
        chosen = proxies.allocate(self.candidates, scores, max(1, int(self.budget * fill)))
        plan = Plan.from_candidates(chosen, self.layout, **copy.deepcopy(self.plan_fields()))
        if lr is not None:
            plan.training["lr"] = lr
        plan.provenance = {"proxy": self.proxy_name,
                           "proxy_score": float(sum(self.scores.get(c.key, 0.0) for c in chosen))}
        return plan

    # -- stage 2 --
    def trial_plan(self, params: dict[str, float], seed: int) -> Plan:
        scores = reweight(self.candidates, self.scores, params, self.layout.num_layers, seed)
        return self._allocate(scores, lr=params["lr"], fill=params.get("fill", 1.0))

    def objective(self, trial: optuna.Trial) -> float:
        seed = plan_seed(trial)  # a retried or interrupted trial trains the plan it replaces
        try:
            return self._train_trial(trial, seed)
        except KeyboardInterrupt:
            requeue_interrupted(trial, seed)
            raise
        except UserError:  # stops the search with its one-line message, not Optuna's traceback
            optuna.logging.set_verbosity(optuna.logging.ERROR)
            raise

    def _train_trial(self, trial: optuna.Trial, seed: int) -> float:
        cfg = self.cfg
        params = suggest_params(trial, self.candidates, cfg.lr_range)
        plan = self.trial_plan(params, seed=cfg.seed + seed)
        h = plan_hash(plan)
        trial.set_user_attr("plan_hash", h)
        trial.set_user_attr("main_metric", self._data.main_metric)
        trial.set_user_attr("trainable_params", plan.trainable_params)
        trial.set_user_attr("proxy_score", plan.provenance["proxy_score"])
        trial.set_user_attr(PLAN_ATTR, plan.to_dict())
        same = same_plan_trial(trial, h, poll_s=min(5.0, cfg.heartbeat_s))
        if same is not None:  # same plan, same lr: don't train it twice
            trial.set_user_attr("duplicate_of", same.number)
            return same.value
        steps = cfg.trial_steps
        eval_every = max(1, steps // cfg.n_evals)
        tcfg = training.TrainConfig.from_plan(
            plan, max_steps=steps, eval_every=eval_every, seed=cfg.seed, lr=params["lr"],
            batch_size=cfg.batch_size, max_length=cfg.max_length, allocation=cfg.allocation,
            output_dir=None, progress=False, group_by_length=cfg.group_by_length,
            device=cfg.device, bf16=cfg.bf16, fp16=cfg.fp16,
        )
        rung = {"i": 0}
        model = copy.deepcopy(self.base)  # train() adapts it in place: on_eval can score it

        def on_eval(step: int, metrics: dict) -> None:
            rung["i"] += 1
            trial.report(metrics["loss"], rung["i"])
            # The pruner's cut stands only when the gap to the best trial at this rung is beyond
            # the noise of the held-out loss (its standard error over rows, scored only here).
            if trial.should_prune():
                best = self._best_at_rung(trial, rung["i"])
                se = heldout(model, self.trial_data, batch_size=cfg.batch_size).se
                trial.set_user_attr(f"loss_se_{rung['i']}", se)
                if best is None or gap_beyond_noise(metrics["loss"], best, se, cfg.noise_z):
                    raise optuna.TrialPruned(f"pruned at step {step}")

        pause_for_test("trial", self.out)
        result = training.train(plan, tcfg, model=model, tokenizer=self._tokenizer,
                                data=self.trial_data, on_eval=on_eval)
        trial.set_user_attr("step_cpu_s", result.step_cpu_s)
        trial.set_user_attr("train_time_s", result.train_time_s)
        trial.set_user_attr("step_time_s", result.step_time_s)
        trial.set_user_attr("metrics", {k: v for k, v in result.metrics.items()
                                        if isinstance(v, (int, float))})
        return float(result.metrics["loss"])

    @staticmethod
    def _best_at_rung(trial: optuna.Trial, step: int) -> float | None:
        vals = [t.intermediate_values[step] for t in trial.study.get_trials(deepcopy=False)
                if t.number != trial.number and step in t.intermediate_values]
        return min(vals) if vals else None

    def open_storage(self):
        """The checked storage; a new default journal is opened once the output folder exists."""
        if getattr(self, "storage", None) is None:
            self.storage = open_storage(self.cfg.storage, self.out / "study.journal", self.cfg.heartbeat_s)
        return self.storage

    def _studies(self, study) -> list[optuna.Study]:
        """The search's studies in its storage (the trial study; the weight-sharing stages' two)."""
        if study is not None:
            return [study]
        storage, name = getattr(self, "storage", None), self.cfg.study or "more-search"
        if storage is None:
            return []
        names = set(optuna.get_all_study_names(storage)) & {name, f"{name}.scoring"}
        return [optuna.load_study(study_name=n, storage=storage) for n in sorted(names)]

    def open_study(self) -> optuna.Study:
        cfg = self.cfg
        name = cfg.study or "more-search"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=name, storage=self.open_storage(), direction="minimize", load_if_exists=True,
            pruner=make_pruner(cfg.pruner, cfg.n_evals),
        )
        check_study_settings(study, study_settings(cfg), cfg.resume)
        # Fresh draws on each resume and each worker of a shared storage; one run stays repeatable.
        study.sampler = make_sampler(cfg.sampler, sampler_seed(cfg.seed, len(study.trials),
                                                               os.getpid() if cfg.storage else 0))
        if cfg.resume:
            stale = fail_dead_trials(study, untagged_after_s=2 * cfg.heartbeat_s)
            if stale:
                print(f"resume: re-running trial(s) {stale} that the interrupted run left unfinished")
        if not study.trials:
            enqueue_proxy_trials(study, self.candidates, cfg.first_trial_lr)
        return study

    def trial_stage(self, study: optuna.Study) -> None:
        cfg = self.cfg
        t0, c0 = time.perf_counter(), time.process_time()
        finished = (TrialState.COMPLETE, TrialState.PRUNED)
        done = len(study.get_trials(deepcopy=False, states=finished))
        remaining = max(cfg.n_trials - done, 0)
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.n_trials, initial=done, desc="trials", unit="trial")

        def on_trial(study, frozen):
            if bar is not None:
                bar.update(1)
                try:
                    bar.set_postfix(best=f"{study.best_value:.4f}", last=frozen.state.name.lower())
                except ValueError:
                    bar.set_postfix(last=frozen.state.name.lower())

        # A failed trial (NaN loss, out of memory) is recorded as failed; the search goes on.
        catch = (training.NonFiniteLoss, RuntimeError, MemoryError, ValueError)
        if remaining:
            study.optimize(
                self.objective, timeout=cfg.timeout_s,
                callbacks=[optuna.study.MaxTrialsCallback(cfg.n_trials, states=finished), on_trial],
                catch=catch,
            )
        # Retries of dead workers' trials, and other workers' last trials: one answer per study.
        drain(study, lambda n: study.optimize(self.objective, n_trials=n, catch=catch, callbacks=[on_trial]),
              poll_s=cfg.heartbeat_s, grace_s=2 * cfg.heartbeat_s)
        if bar is not None:
            bar.close()
        self.stage_seconds["trials"] = time.perf_counter() - t0
        self.stage_cpu["trials"] = time.process_time() - c0

    # -- stage 3 --
    def result(self, study: optuna.Study, best=None, sizes=None, notes=()) -> SearchResult:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if best is None and complete:
            best = max(complete, key=trial_rank)
        if best is not None:
            plan = Plan.from_dict(best.user_attrs[PLAN_ATTR])
            plan.provenance.update(trial=best.number, trial_value=best.value,
                                   objective="held-out loss (lower is better)",
                                   heldout_metrics=best.user_attrs.get("metrics", {}),
                                   origin=best.user_attrs.get("origin", "sampled"))
            best_value = best.value
        else:  # every trial failed or was pruned: the proxy plan is still a valid answer
            plan, best_value = self.proxy_plan, float("nan")
            plan.provenance["note"] = "no trial completed; this is the proxy plan"
        plan.provenance.update(
            study=study.study_name, storage=shown_storage(self.cfg.storage, self.out / "study.journal"),
            space=self.space.name, allocation=self.cfg.allocation, strategy=self.cfg.strategy,
            proxy_scores_file=str(self.out / "proxy_scores.json"),
        )
        if self.signal is not None:
            plan.provenance["signal"] = self.signal
        plan.training["allocation"] = self.cfg.allocation
        plan.validate(self.layout)
        assert plan.count_params(self.layout) <= self.budget
        cost = search_cost(self, best, sizes)
        plan.provenance["search_cost"] = cost
        plan_path = plan.save(self.out / "plan.json")
        states = [t.state for t in study.get_trials(deepcopy=False)]
        res = SearchResult(
            plan=plan, plan_path=plan_path, best_value=best_value,
            n_complete=states.count(TrialState.COMPLETE), n_pruned=states.count(TrialState.PRUNED),
            n_failed=states.count(TrialState.FAIL), stage_seconds=dict(self.stage_seconds),
            cost=cost, notes=list(notes),
        )
        facts = SearchFacts(
            out=self.out, layout=self.layout, metric=self._data.main_metric, budget_spec=str(self.cfg.budget),
            budget=self.budget, base_params=self.base_params, space=self.space.name,
            n_candidates=len(self.candidates), proxy=self.proxy_name, allocation=self.cfg.allocation)
        res.pareto = write_report(facts, study, res)
        return res

    def run(self) -> SearchResult:
        # Every check that needs no model first, then the model's config; nothing is written
        # until they pass.
        check_settings(self.cfg)
        check_output(self.out)
        if self.cfg.storage is None and not self.cfg.resume and (self.out / "study.journal").exists():
            raise UserError(f"{self.out} already holds a search (study.journal); pass --resume to "
                            f"continue it, or choose another output folder with -o")
        if self.cfg.strategy not in STRATEGIES:
            raise UserError(f"unknown strategy {self.cfg.strategy!r}; choose {', '.join(STRATEGIES)}")
        if self.cfg.strategy == "supernet":
            check_config(self.cfg)
        self.storage = open_checked_storage(self.cfg, self.out)
        check_max_length(self.cfg)
        self.prepare()
        made, study = make_output(self.out, journal_path(self.cfg.storage, self.out / "study.journal")), None
        try:
            self.proxy_stage()
            if self.cfg.strategy == "supernet":  # it writes the plan and report once (self.result)
                return weight_sharing_search(self)
            study = self.open_study()
            self.trial_stage(study)
        except BaseException:
            remove_unless_resumable(made, self._studies(study), kept=(self.out / META_FILE).is_file())
            raise
        return self.result(study)


def run_search(cfg: SearchConfig, **kw) -> SearchResult:
    return Search(cfg, **kw).run()
