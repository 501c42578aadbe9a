"""Attach adapters and shortcuts to a model by module name, find them, and take them out again.

The low-level verbs under ``nas.inject`` (which works on whole plans) and under the proxies'
one-at-a-time check; a choice is a dict ``{"type": kind, "enabled": bool, **hparams}``.
"""
from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from .anatomy import ModelLayout
from .base import Adapter
from .registry import make_adapter
from .shortcuts import ShortcutSet

SHORTCUTS_ATTR = "more_shortcuts"


def split_choice(choice: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """{"type": k, "enabled": b, **hparams} -> (k, hparams)."""
    hp = {k: v for k, v in choice.items() if k not in ("type", "enabled")}
    return choice["type"], hp


def attach(model: nn.Module, layout: ModelLayout, modules: dict[str, dict],
           shortcuts: dict[str, dict] | None = None) -> None:
    """Wrap each named module in its chosen adapter and attach the shortcuts, in place."""
    for name, choice in modules.items():
        kind, hp = split_choice(choice)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        adapter = make_adapter(kind, getattr(parent, child), **hp)
        adapter.enabled = choice.get("enabled", True)
        setattr(parent, child, adapter)
    if shortcuts:
        choices = {k: {h: v for h, v in hp.items() if h not in ("type", "enabled")} for k, hp in shortcuts.items()}
        sset = ShortcutSet(model, layout, choices)
        for key, sc in sset.items():
            sc.enabled = shortcuts[key].get("enabled", True)
        setattr(model, SHORTCUTS_ATTR, sset)


def detach(model: nn.Module, modules: Iterable[str], shortcuts: bool = True) -> None:
    """Put the base layer back for each named module (no merge) and remove the shortcuts."""
    for name in modules:
        mod = model.get_submodule(name)
        if isinstance(mod, Adapter):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, mod.base)
    sset = shortcut_set(model)
    if shortcuts and sset is not None:
        sset.remove()
        delattr(model, SHORTCUTS_ATTR)


def adapters(model: nn.Module) -> dict[str, Adapter]:
    """Qualified name (as in the plan) -> adapter."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Adapter)}


def shortcut_set(model: nn.Module) -> ShortcutSet | None:
    return getattr(model, SHORTCUTS_ATTR, None)
