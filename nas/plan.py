"""The plan: a versioned JSON document, the one contract between search and training.

{
  "schema_version": 1,
  "model":    {"name_or_path": ..., "revision": ..., "family": ..., "base_params": int,
               "pooling": "mean"},  # what the task head reads (nas.heads); absent: "cls"
  "task":     {"name": ..., ...},
  "budget":   {"spec": "0.1%", "params": int, "counts": "adapters+shortcuts"},
  "modules":  {"<qualified module name>": {"type": "more", "nblocks": 4, "rank": 4}, ...},
  "shortcuts": {"<layer>.<kind>": {"rank": 8, "alpha": 4.0}, ...},
  "training": {"lr": ..., "epochs": ..., "batch_size": ..., "allocation": "static", ...},
  "trainable_params": int,        # adapters + shortcuts; the task head is not counted
  "provenance": {...}             # proxy scores, trial ids, timings
}
A module or shortcut choice may carry ``"enabled": false`` (dynamic allocation keeps such
modules built, with their weights, but inactive).  Modules absent from ``modules`` are off.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from search_spaces import ADAPTERS, adapter_class
from search_spaces.anatomy import ModelLayout
from search_spaces.attach import split_choice
from search_spaces.shortcuts import SHORTCUT_DEFAULTS, parse_shortcut_key, shortcut_params

from .errors import PlanError, UserError
from .heads import POOLINGS
from .io import atomic_write_text

SCHEMA_VERSION = 1
BUDGET_COUNTS = "adapters+shortcuts"  # the task head is trainable but never counted


@dataclass
class Plan:
    model: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    shortcuts: dict[str, dict[str, Any]] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    trainable_params: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def pooling(self) -> str:
        """What the task head reads: 'mean' or 'cls' (the default of plans written before it was recorded)."""
        return (self.model or {}).get("pooling") or "cls"

    # ---- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: Any, where: str = "plan") -> "Plan":
        problems = []
        if not isinstance(d, dict):
            raise PlanError([f"expected a JSON object, got {type(d).__name__}"], where)
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            problems.append(
                f"schema_version is {version!r}; this more-nas reads version {SCHEMA_VERSION}"
            )
        known = {f for f in cls.__dataclass_fields__}
        for k in sorted(set(d) - known):
            problems.append(f"unknown top-level field {k!r}; known: {sorted(known)}")
        sections = {}
        for k in ("model", "task", "budget", "modules", "shortcuts", "training", "provenance"):
            if k in d and not isinstance(d[k], dict):
                problems.append(f"'{k}' must be an object, got {type(d[k]).__name__}")
            sections[k] = d[k] if isinstance(d.get(k), dict) else {}
        if not isinstance(sections["model"].get("name_or_path"), str):
            problems.append("model.name_or_path is missing: the plan must say which model it is for")
        if sections["model"].get("pooling", "cls") not in POOLINGS[1:]:
            problems.append(f"model.pooling is {sections['model']['pooling']!r}; expected one of {POOLINGS[1:]}")
        tp = d.get("trainable_params")
        if tp is not None and (isinstance(tp, bool) or not isinstance(tp, int) or tp < 0):
            problems.append(f"trainable_params must be a non-negative integer, got {tp!r}")
        problems += _training_problems(sections["training"])
        for name, choice in sections["modules"].items():
            problems += _choice_problems(f"modules[{name!r}]", choice, need_type=True)
        for key, choice in sections["shortcuts"].items():
            try:
                parse_shortcut_key(key)
            except ValueError as e:
                problems.append(str(e))
            problems += _choice_problems(f"shortcuts[{key!r}]", choice, need_type=False)
        if problems:
            raise PlanError(problems, where)
        return cls(**{k: d[k] for k in known if k in d})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a crash leaves either the old file or the new one, never half."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"plan file {str(path)!r} does not exist; create one with more-search")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PlanError([f"not valid JSON: {e}"], f"plan {str(path)!r}") from None
        return cls.from_dict(data, where=f"plan {str(path)!r}")

    # ---- against a model ----------------------------------------------------------------
    def validate(self, layout: ModelLayout) -> None:
        """Check every choice against the model; raise one PlanError listing all problems."""
        problems = []
        for name, choice in self.modules.items():
            mod = layout.module(name)
            if mod is None:
                close = [m.name for m in layout.modules if m.name.endswith(name.split(".")[-1])][:3]
                hint = f" (e.g. {close})" if close else ""
                problems.append(f"module {name!r} is not an adaptable module of this model{hint}")
                continue
            if not isinstance(choice, dict) or "type" not in choice:
                problems.append(f"module {name!r}: the choice must be an object with a 'type', "
                                f"like {{\"type\": \"lora\", \"rank\": 8}}; got {choice!r}")
                continue
            kind, hp = split_choice(choice)
            try:
                adapter_class(kind).resolve_hparams(mod.d_in, mod.d_out, **hp)
            except ValueError as e:
                problems.append(f"module {name!r} ({mod.d_in}->{mod.d_out}): {e}")
        if self.shortcuts and not layout.supports_shortcuts:
            problems.append(
                f"shortcuts are not supported for family {layout.family!r}; remove 'shortcuts'"
            )
        else:
            for key in self.shortcuts:
                try:
                    layer, kind = parse_shortcut_key(key)
                except ValueError as e:
                    problems.append(str(e))
                    continue
                if not 0 <= layer < layout.num_layers:
                    problems.append(f"shortcut {key!r}: layer {layer} out of range 0..{layout.num_layers - 1}")
                elif kind == "s_cut" and layer == 0:
                    problems.append(f"shortcut {key!r}: s_cut needs a previous layer (absent in layer 0)")
                problems += _shortcut_hparam_problems(key, self.shortcuts[key])
        if problems:
            raise PlanError(problems, "plan does not fit the model")

    def count_params(self, layout: ModelLayout, enabled_only: bool = False) -> int:
        """Exact adapter + shortcut parameters (the budget's unit), from shapes alone."""
        total = 0
        for name, choice in self.modules.items():
            if enabled_only and not choice.get("enabled", True):
                continue
            mod = layout.module(name)
            kind, hp = split_choice(choice)
            cls = adapter_class(kind)
            total += cls.num_params(mod.d_in, mod.d_out, **cls.resolve_hparams(mod.d_in, mod.d_out, **hp))
        for key, hp in self.shortcuts.items():
            if enabled_only and not hp.get("enabled", True):
                continue
            hp = {k: v for k, v in hp.items() if k != "enabled"}
            total += shortcut_params(layout.hidden_size, **{**SHORTCUT_DEFAULTS, **hp})
        return total

    @classmethod
    def from_candidates(cls, selected, layout: ModelLayout, **fields) -> "Plan":
        """A plan that switches on exactly ``selected`` (search_spaces.Candidate objects)."""
        modules, shortcuts = {}, {}
        for c in selected:
            choice = c.choice_dict
            if c.is_shortcut:
                shortcuts[c.target] = {k: v for k, v in choice.items() if k != "type"}
            else:
                if c.target in modules:
                    raise ValueError(f"two choices for module {c.target!r}")
                modules[c.target] = choice
        plan = cls(modules=modules, shortcuts=shortcuts, **fields)
        plan.model.setdefault("family", layout.family)
        plan.trainable_params = plan.count_params(layout)
        return plan

    def kinds(self) -> set[str]:
        return {c["type"] for c in self.modules.values()}


# training field -> (types, lowest allowed value, strictly above it)
_TRAINING_FIELDS = {"lr": ((int, float), 0, True), "epochs": ((int, float), 0, True),
                    "batch_size": ((int,), 1, False), "max_length": ((int,), 1, False)}


def _training_problems(training: dict[str, Any]) -> list[str]:
    problems = []
    for k, (types, low, strict) in _TRAINING_FIELDS.items():
        v = training.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, types) or (v <= low if strict else v < low):
            what = "a number >" if strict else ("an integer >=" if types == (int,) else "a number >=")
            problems.append(f"training.{k} must be {what} {low}, got {v!r}")
    return problems


def _choice_problems(where: str, choice: Any, need_type: bool) -> list[str]:
    if not isinstance(choice, dict):
        return [f"{where} must be an object like {{\"type\": \"lora\", \"rank\": 8}}"]
    problems = []
    if need_type:
        kind = choice.get("type")
        if not isinstance(kind, str) or kind not in ADAPTERS:
            problems.append(f"{where}: unknown type {kind!r}; registered types: {sorted(ADAPTERS)}")
    if "enabled" in choice and not isinstance(choice["enabled"], bool):
        problems.append(f"{where}: 'enabled' must be true or false")
    return problems


def _shortcut_hparam_problems(key: str, hp: Any) -> list[str]:
    """What ShortcutSet would refuse, found before apply_plan changes anything."""
    if not isinstance(hp, dict):
        return [f"shortcuts[{key!r}] must be an object like {{\"rank\": 8, \"alpha\": 4.0}}"]
    problems = []
    unknown = set(hp) - set(SHORTCUT_DEFAULTS) - {"enabled"}
    if unknown:
        problems.append(f"shortcut {key!r}: unknown hyper-parameter(s) {sorted(unknown)}; "
                        f"valid: {sorted(SHORTCUT_DEFAULTS)}")
    rank = hp.get("rank", SHORTCUT_DEFAULTS["rank"])
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        problems.append(f"shortcut {key!r}: rank must be a positive integer, got {rank!r}")
    alpha = hp.get("alpha", SHORTCUT_DEFAULTS["alpha"])
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        problems.append(f"shortcut {key!r}: alpha must be a number, got {alpha!r}")
    return problems
