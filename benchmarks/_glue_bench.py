"""The benchmark of benchmarks/glue.py: one run (trained now or loaded from its JSON), the lr
selection and final runs of a method, the job list the processes share, and the collected rows
(and a report's CSV read back as them)."""
from __future__ import annotations

import csv
import datetime
import json
import math
import time
from pathlib import Path

from _glue_methods import Method, NotApplicable, Protocol, Spec, TaskCtx, head_params
from _glue_train import build_trainer, finite, step_tensor_peak, train_config, trainable_count

DATA_DIR = "/work/shared/data/glue"


def is_search(m: Method) -> bool:
    """A method whose build is a search of its own (not one sized to another's plan)."""
    return m.searched and m.family.startswith("search")


class Bench:
    def __init__(self, proto: Protocol, methods: list[Method], runs_dir: Path, *, device=None,
                 data_dir=DATA_DIR, threads: int = 1):
        self.proto, self.methods, self.runs_dir = proto, methods, runs_dir
        self.device, self.data_dir, self.threads = device, data_dir, threads
        self._ctx: dict[str, TaskCtx] = {}
        self._specs: dict[tuple, Spec] = {}
        self.inapplicable: dict[tuple, str] = {}  # (task, method name) -> why it has no runs
        self._tok = self._template = None
        self.ran = self.skipped = 0

    # -- loading --
    def ctx(self, task: str) -> TaskCtx:
        if task not in self._ctx:
            from nas import discover
            from search_spaces.anatomy import base_param_count
            from nas.data import load_task
            from nas.models import load_model, load_tokenizer

            p = self.proto
            if self._tok is None:
                self._tok = load_tokenizer(p.model)
            data = load_task(task, self._tok, data_dir=self.data_dir, max_length=p.max_length,
                             max_train_samples=p.train_rows.get(task), max_eval_samples=p.eval_rows,
                             data_seed=0)
            sel = data.holdout(p.holdout, seed=0).subsample(max_eval_samples=p.select_eval_rows, seed=0)
            if self._template is None or self._template.config.num_labels != data.num_labels:
                self._template = load_model(p.model, num_labels=data.num_labels, pooling=p.pooling).eval()
            self._ctx[task] = TaskCtx(task, data, sel, self._tok, self._template,
                                      discover(self._template), base_param_count(self._template),
                                      p, self.runs_dir / task, self.device, self.data_dir)
        return self._ctx[task]

    def method(self, name: str) -> Method:
        return next(m for m in self.methods if m.name == name)

    def methods_for(self, task: str) -> list[Method]:
        return [m for m in self.methods if m.runs_on(task)]

    def spec(self, task: str, m: Method, variant: str = "", build: bool = True) -> Spec | None:
        """What ``m`` trains on ``task``; None while the search it depends on has not run (with
        ``build`` False) or where it does not apply (``inapplicable`` says why)."""
        key = (task, m.name, variant)
        if key not in self._specs:
            if not build and m.searched and not self._search_done(task, m):
                return None
            try:
                self._specs[key] = m.build(self.ctx(task), variant)
            except NotApplicable as e:
                self._specs[key], self.inapplicable[(task, m.name)] = None, str(e)
        return self._specs[key]

    def why_not(self, task: str, m: Method) -> str | None:
        """Why ``m`` has no runs on ``task`` (or its selection task), or None where it applies or
        cannot be known yet (its search has not run)."""
        for t in dict.fromkeys((self.proto.selection_task(task), task)):
            for v in m.variants:
                self.spec(t, m, v, build=False)
            if (t, m.name) in self.inapplicable:
                return self.inapplicable[(t, m.name)]
        return None

    def _search_done(self, task: str, m: Method) -> bool:
        return (self.runs_dir / task / m.search / "glue_search.json").is_file()

    # -- one run --
    def run_path(self, task: str, phase: str, spec: Spec, lr: float, seed: int) -> Path:
        import hashlib

        ident = {"spec": spec.digest, "phase": phase, "lr": lr, "seed": seed,
                 "settings": self.proto.phase_settings(task, phase)}
        key = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
        return self.runs_dir / task / phase / f"{spec.label}__lr{lr:g}__s{seed}__{key}.json"

    def run(self, task: str, phase: str, spec: Spec, lr: float, seed: int,
            run_missing: bool = True) -> tuple[dict | None, bool]:
        """(record, cached): the saved result, or train it now and save it atomically."""
        from nas.io import atomic_write_text
        from nas.train import NonFiniteLoss
        from nas.train.trainer import run

        path = self.run_path(task, phase, spec, lr, seed)
        if path.is_file():
            return json.loads(path.read_text()), True
        if not run_missing:
            return None, False
        ctx = self.ctx(task)
        select = phase == "select"
        data = ctx.sel if select else ctx.data
        cfg = train_config(spec, self.proto, task=task, lr=lr, seed=seed, select=select, device=self.device)
        t0 = time.perf_counter()
        trainer = build_trainer(spec, ctx, data, cfg)
        rec = {"phase": phase, "task": task, "spec": spec.label, "spec_kind": spec.kind,
               "spec_digest": spec.digest, "spec_info": spec.info, "lr": lr, "seed": seed,
               "main_metric": data.main_metric, "settings": self.proto.phase_settings(task, phase),
               "n_train": len(data.train), "n_eval": len(data.eval), "eval_split": data.eval_split}
        try:
            res = run(trainer)
        except NonFiniteLoss as e:
            rec.update(status="nonfinite", error=str(e), score=float("nan"), metrics={},
                       trainable_params=trainable_count(trainer))
        else:
            rec.update(status="ok", score=res.score, metrics=res.metrics, history=res.history,
                       steps=res.steps, train_time_s=res.train_time_s, step_time_s=res.step_time_s,
                       trainable_params=res.trainable_params, peak_memory_bytes=res.peak_memory_bytes,
                       peak_memory_kind=res.peak_memory_kind)
            if not select and seed == self.proto.seeds[0]:
                rec["step_tensor_peak_bytes"] = step_tensor_peak(trainer)
        rec["adapter_params"] = rec["trainable_params"] - head_params(ctx.template)
        rec.update(wall_s=time.perf_counter() - t0, threads=self.threads,
                   device=str(trainer.args.device), finished=datetime.datetime.now().isoformat(timespec="seconds"))
        del trainer
        atomic_write_text(path, json.dumps(rec, indent=1, default=str))
        self.ran += 1
        return rec, False

    # -- the protocol for one method --
    def selection(self, task: str, m: Method, run_missing: bool = True) -> dict | None:
        """Every (variant, lr) on the held-out split of the protocol's selection task for ``task``;
        the pick by held-out main metric, ties by lower held-out loss.  None when a run is missing
        and run_missing is False."""
        task = self.proto.selection_task(task)
        runs = {}
        for v in m.variants:
            spec = self.spec(task, m, v, build=run_missing)
            if spec is None:
                return None
            for lr in self.proto.lr_grid:
                rec, _ = self.run(task, "select", spec, lr, self.proto.seeds[0], run_missing)
                if rec is None:
                    return None
                runs[(v, lr)] = rec
        best = pick_best(runs)
        return {"task": task, "variant": best[0], "lr": best[1], "score": runs[best]["score"], "runs": runs}

    def final(self, task: str, m: Method, seed: int, run_missing: bool = True):
        sel = self.selection(task, m, run_missing)
        if sel is None:
            return None, sel, False
        spec = self.spec(task, m, sel["variant"])
        rec, cached = self.run(task, "final", spec, sel["lr"], seed, run_missing)
        return rec, sel, cached

    # -- the job list (what the progress bar counts) --
    def jobs(self) -> list[tuple]:
        """Searches, then lr selection, then final runs, task by task; a shared selection task
        comes first, as every task's finals wait on its selection."""
        p = self.proto
        order = list(p.tasks)
        if p.select_task:
            order = [p.select_task] + [t for t in order if t != p.select_task]
        out = []
        for task in order:
            methods = self.methods_for(task)
            out += [("search", task, m.name, "", None, None) for m in methods if is_search(m)]
            if p.selection_task(task) == task:
                out += [("select", task, m.name, v, lr, p.seeds[0]) for m in methods
                        for v in m.variants for lr in p.lr_grid]
            if task in p.tasks:
                out += [("final", task, m.name, "", None, s) for m in methods for s in p.seeds]
        return out

    def done(self, job: tuple) -> bool:
        """Whether a search or selection job's result is saved (finals: whether they exist)."""
        phase, task, name, variant, lr, seed = job
        m = self.method(name)
        if phase == "search":
            return self._search_done(task, m)
        if self.why_not(task, m):
            return True
        if phase == "select":
            spec = self.spec(task, m, variant, build=False)
            return spec is not None and self.run(task, "select", spec, lr, seed, False)[0] is not None
        return self.final(task, m, seed, run_missing=False)[0] is not None

    def execute(self, job: tuple) -> str | None:
        phase, task, name, variant, lr, seed = job
        m = self.method(name)
        t0 = time.perf_counter()
        if phase == "search":
            done = self._search_done(task, m)
            info = self.spec(task, m).info
            if done:
                self.skipped += 1
                return None
            self.ran += 1
            return (f"search {task:5s} {name:22s} plan {info['plan_params']:,} params "
                    f"({', '.join(info['kinds'])}), held-out {info['best_holdout']:.4f}, "
                    f"search {info['search_time_s']:.0f}s")
        if why := self.why_not(task, m):
            self.skipped += 1
            return f"{phase:6s} {task:5s} {name:30s} does not apply: {why}"
        if phase == "select":
            rec, cached = self.run(task, "select", self.spec(task, m, variant), lr, seed)
            pick = ""
        else:
            rec, sel, cached = self.final(task, m, seed)
            lr, variant = sel["lr"], sel["variant"]
            pick = f" (held-out {sel['score']:.4f})"
        if cached:
            self.skipped += 1
            return None
        metrics = rec.get("metrics") or {}
        extra = f" f1={metrics['f1']:.4f}" if "f1" in metrics and rec["main_metric"] != "f1" else ""
        what = f"{name}{'[' + variant + ']' if variant else ''}"
        return (f"{phase:6s} {task:5s} {what:30s} seed={seed} lr={lr:g}{pick} "
                f"{rec['main_metric']}={rec['score']:.4f}{extra} params={rec['trainable_params']:,} "
                f"{'' if rec['status'] == 'ok' else rec['status'] + ' '}{time.perf_counter() - t0:.0f}s")

    # -- collecting what exists --
    def rows(self) -> list[dict]:
        rows = []
        for task in self.proto.tasks:
            for m in self.methods_for(task):
                sel = self.selection(task, m, run_missing=False)
                own = self.proto.selection_task(task) == task  # its selection runs are reported here
                if sel is None and own:  # report the selection runs that exist
                    for v in m.variants:
                        spec = self.spec(task, m, v, build=False)
                        for lr in self.proto.lr_grid if spec is not None else ():
                            rec, _ = self.run(task, "select", spec, lr, self.proto.seeds[0], False)
                            if rec:
                                rows.append(_row(rec, m, v, False))
                if sel is None:
                    continue
                for (v, lr), rec in sel["runs"].items() if own else ():
                    rows.append(_row(rec, m, v, (v, lr) == (sel["variant"], sel["lr"])))
                # A run is keyed by the plan's content, so a rerun search that returned the same
                # plan reuses it: its search time and cost are the current search's, not the run's.
                info = self.spec(task, m, sel["variant"]).info
                for seed in self.proto.seeds:
                    rec, _, _ = self.final(task, m, seed, run_missing=False)
                    if rec:
                        rows.append(_row(rec, m, sel["variant"], True, sel["score"], info))
        return rows


def grid_pick(bench: Bench, task: str, spec: Spec, run_missing: bool = True) -> tuple[float | None, dict]:
    """(the rate the protocol picks for ``spec``, its select runs by (variant, lr)): one run per
    rate of the grid on train less the held-out part, at the protocol's first seed, picked by
    pick_best; None while a run is missing (``run_missing`` False).  A grid of one rate is that rate."""
    runs = {}
    if len(bench.proto.lr_grid) == 1:
        return bench.proto.lr_grid[0], runs
    for lr in bench.proto.lr_grid:
        r, _ = bench.run(task, "select", spec, lr, bench.proto.seeds[0], run_missing)
        if r is None:
            return None, runs
        runs[("", lr)] = r
    return pick_best(runs)[1], runs


def pick_best(runs: dict[tuple[str, float], dict]) -> tuple[str, float]:
    """The (variant, lr) with the best held-out main metric; ties: the lower held-out loss,
    then the lower lr.  A failed (non-finite) run never wins."""
    def key(k):
        rec = runs[k]
        loss = (rec.get("metrics") or {}).get("loss", math.inf)
        return finite(rec["score"]), -loss if math.isfinite(loss) else -math.inf, -k[1]
    return max(runs, key=key)


CSV_FIELDS = ["phase", "task", "method", "family", "variant", "spec", "seed", "lr", "picked",
              "holdout_score", "trainable_params", "adapter_params", "main_metric", "score",
              "accuracy", "f1", "mcc", "loss", "steps", "train_time_s", "step_time_s", "wall_s",
              "search_time_s", "search_multiple", "peak_memory_bytes", "peak_memory_kind", "step_tensor_peak_bytes",
              "status", "n_train", "n_eval", "device", "threads", "finished"]


def _value(text: str):
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None if text == "" else text


def csv_rows(path: Path) -> list[dict]:
    """A report's CSV read back as its rows: numbers, booleans and None ('') as they were written."""
    with open(path, newline="") as f:
        return [{k: _value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _row(rec: dict, m: Method, variant: str, picked: bool, holdout: float | None = None,
         info: dict | None = None) -> dict:
    met = rec.get("metrics") or {}
    info = info if info is not None else rec.get("spec_info") or {}
    row = {k: rec.get(k) for k in CSV_FIELDS if k in rec}
    row.update(method=m.name, family=m.family, variant=variant, picked=picked,
               holdout_score=holdout if rec["phase"] == "final" else rec["score"],
               search_time_s=info.get("search_time_s"), search_multiple=info.get("search_multiple"),
               **{k: met.get(k) for k in ("accuracy", "f1", "mcc", "loss")})
    return row
