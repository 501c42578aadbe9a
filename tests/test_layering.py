"""Imports go one way: search_spaces <- proxies <- nas <- benchmarks.  Every import of every
module counts, function-local ones included, so a circle cannot hide inside a function."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> our packages it must never import
FORBIDDEN = {
    "search_spaces": {"proxies", "nas", "benchmarks"},
    "proxies": {"nas", "benchmarks"},
    "nas": {"benchmarks"},
}


def imported_packages(path: Path, package: str) -> set[str]:
    """Top-level names of everything ``path`` imports (relative imports resolve to ``package``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add(package if node.level else (node.module or "").split(".")[0])
    return out


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package):
    assert modules(package), f"no modules found under {package}/"
    bad = {str(p.relative_to(ROOT)): sorted(imported_packages(p, package) & FORBIDDEN[package])
           for p in modules(package)}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}: {bad}"


def test_the_check_sees_function_local_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import nas.plan\n    from proxies import allocate\n")
    assert imported_packages(f, "search_spaces") == {"nas", "proxies"}
