"""What can be chosen per module: a search space and the candidates it yields for a model.

A space names the adapter choices (kind + hyper-parameters), the module roles they may go
on, and the shortcut kinds allowed per layer.  ``candidates(layout)`` expands it for one
model: every (module, choice) and (layer, shortcut) pair with its exact parameter count.
Spaces come by name (``SPACES``) or from a JSON file with the same fields.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .registry import ADAPTERS, adapter_class
from .shortcuts import SHORTCUT_KINDS, shortcut_params


@dataclass(frozen=True)
class Candidate:
    """One thing the search may switch on: an adapter on a module, or a shortcut."""

    target: str  # qualified module name, or "<layer>.<kind>" for a shortcut
    layer: int
    role: str  # module role ("q", "ffn_up", ...) or the shortcut kind
    choice: tuple[tuple[str, Any], ...]  # sorted (key, value) pairs incl. "type"
    params: int

    @property
    def is_shortcut(self) -> bool:
        return self.role in SHORTCUT_KINDS

    @property
    def choice_dict(self) -> dict[str, Any]:
        return dict(self.choice)

    @property
    def kind(self) -> str:
        return self.choice_dict["type"]

    @property
    def label(self) -> str:
        """Short readable name of the choice: 'lora r8', 'more N4 r4', 'circulant'."""
        return choice_label(self.choice_dict)

    @property
    def key(self) -> str:
        return f"{self.target}|{self.label}"


def choice_label(choice: dict[str, Any]) -> str:
    """Short readable name of a choice dict: 'lora r8', 'more N4 r4', 'circulant'."""
    d = {k: v for k, v in choice.items() if k not in ("type", "enabled", "alpha", "scale") and v is not None}
    short = {"rank": "r", "nblocks": "N", "side": ""}  # ia3 in, ia3 out
    return " ".join([choice["type"]] + [f"{short.get(k, k)}{v}" for k, v in sorted(d.items())])


def kind_of(c: Candidate) -> str:
    """The candidate's adapter type, or "shortcut": what per-kind weights and summaries group by."""
    return "shortcut" if c.is_shortcut else c.kind


def freeze_choice(choice: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(choice.items()))


@dataclass
class SearchSpace:
    name: str = "custom"
    choices: list[dict[str, Any]] = field(default_factory=list)
    roles: list[str] | None = None  # None: every role the model has
    shortcuts: list[str] = field(default_factory=list)
    shortcut_rank: int = 8
    shortcut_alpha: float = 4.0

    def __post_init__(self):
        problems = []
        for name, want in (("choices", list), ("shortcuts", list), ("roles", (list, type(None)))):
            if not isinstance(getattr(self, name), want):
                raise ValueError(f"search space {self.name!r} is invalid: {name!r} must be a list, "
                                 f"got {type(getattr(self, name)).__name__}")
        if isinstance(self.shortcut_rank, bool) or not isinstance(self.shortcut_rank, int) or self.shortcut_rank < 1:
            problems.append(f"shortcut_rank must be a positive integer, got {self.shortcut_rank!r}")
        if isinstance(self.shortcut_alpha, bool) or not isinstance(self.shortcut_alpha, (int, float)):
            problems.append(f"shortcut_alpha must be a number, got {self.shortcut_alpha!r}")
        for c in self.choices:
            kind = c.get("type") if isinstance(c, dict) else None
            if kind not in ADAPTERS:
                problems.append(f"choice {c!r}: unknown type {kind!r}; registered: {sorted(ADAPTERS)}")
        for s in self.shortcuts:
            if s not in SHORTCUT_KINDS:
                problems.append(f"shortcut {s!r} unknown; valid: {list(SHORTCUT_KINDS)}")
        if not self.choices and not self.shortcuts:
            problems.append("the space has no adapter choices and no shortcuts")
        if problems:
            raise ValueError(f"search space {self.name!r} is invalid: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSpace":
        if not isinstance(d, dict):
            raise ValueError(f"search space: expected a JSON object with the fields "
                             f"{sorted(cls.__dataclass_fields__)}, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"search space: unknown field(s) {sorted(unknown)}; "
                             f"known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    def candidates(self, layout) -> list[Candidate]:
        """Every candidate this space allows on the model described by ``layout``.

        A choice whose hyper-parameters do not fit a module's shape (e.g. a rank above the
        module's width) is left out for that module.
        """
        out = []
        roles = set(self.roles) if self.roles is not None else None
        for mod in layout.modules:
            if roles is not None and mod.role not in roles:
                continue
            for choice in self.choices:
                cls = adapter_class(choice["type"])
                hp = {k: v for k, v in choice.items() if k != "type"}
                try:
                    resolved = cls.resolve_hparams(mod.d_in, mod.d_out, **hp)
                except ValueError:
                    continue
                n = cls.num_params(mod.d_in, mod.d_out, **resolved)
                out.append(Candidate(mod.name, mod.layer, mod.role, freeze_choice(choice), n))
        if self.shortcuts and layout.supports_shortcuts:
            choice = {"type": "shortcut", "rank": self.shortcut_rank, "alpha": self.shortcut_alpha}
            n = shortcut_params(layout.hidden_size, self.shortcut_rank)
            for layer in range(layout.num_layers):
                for kind in self.shortcuts:
                    if kind == "s_cut" and layer == 0:
                        continue
                    out.append(Candidate(f"{layer}.{kind}", layer, kind, freeze_choice(choice), n))
        return out


_MAIN_ROLES = ["q", "k", "v", "qkv", "o", "gate", "ffn_up", "ffn_down"]

SPACES: dict[str, SearchSpace] = {
    # The default mixes every family: LoRA ranks, MoRe blocks and ranks, the SURM types and
    # the four shortcuts, on every projection role.  LoRA rank 1: at 0.1% the best plans spread
    # rank 1 wide (benchmarks/results/placement_ceiling*.md), and nested ranks make it free.
    # Every kind trains at the search's one rate; on MiniLM MoRe's best rate is ~4x LoRA's (it has
    # no alpha), so its candidates are judged below their best (at their best they tie LoRA).
    "default": SearchSpace(
        name="default",
        choices=[
            {"type": "lora", "rank": 1}, {"type": "lora", "rank": 2}, {"type": "lora", "rank": 4},
            {"type": "lora", "rank": 8},
            {"type": "more", "nblocks": 4, "rank": 2}, {"type": "more", "nblocks": 4, "rank": 4},
            {"type": "more", "nblocks": 8, "rank": 2},
            {"type": "circulant"}, {"type": "toeplitz"},
            {"type": "kronecker", "rank": 8}, {"type": "ldr", "rank": 1},
        ],
        roles=_MAIN_ROLES,
        shortcuts=list(SHORTCUT_KINDS),
    ),
    "lora": SearchSpace(
        name="lora",
        choices=[{"type": "lora", "rank": r} for r in (1, 2, 4, 8, 16)],
        roles=_MAIN_ROLES,
    ),
    "more": SearchSpace(
        name="more",
        choices=[{"type": "more", "nblocks": n, "rank": r} for n in (2, 4, 8) for r in (1, 2, 4, 8)],
        roles=_MAIN_ROLES,
    ),
    # HeteroLoRA's pool: rank-8 LoRA on every module plus every shortcut.
    "heterolora": SearchSpace(
        name="heterolora",
        choices=[{"type": "lora", "rank": 8}],
        roles=_MAIN_ROLES,
        shortcuts=list(SHORTCUT_KINDS),
    ),
    "surm": SearchSpace(
        name="surm",
        choices=[{"type": "circulant"}, {"type": "toeplitz"}, {"type": "kronecker", "rank": 8},
                 {"type": "ldr", "rank": 1}, {"type": "ldr", "rank": 2}],
        roles=_MAIN_ROLES,
    ),
}


def load_space(name_or_path: str | dict | SearchSpace | None) -> SearchSpace:
    """A built-in space by name, or a JSON file with the SearchSpace fields."""
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    if name_or_path is None:
        return SPACES["default"]
    if isinstance(name_or_path, dict):
        return SearchSpace.from_dict(name_or_path)
    if name_or_path in SPACES:
        return SPACES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"search space {name_or_path!r} is neither a built-in space "
                         f"({sorted(SPACES)}) nor a JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"search space file {str(path)!r} is not valid JSON: {e}") from None
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return SearchSpace.from_dict(data)
