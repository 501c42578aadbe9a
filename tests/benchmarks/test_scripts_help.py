"""Every benchmark script answers --help (argparse formats help strings with %, so a literal
"0.1%" in one crashes --help only)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("[a-z]*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_help_prints_usage_and_exits_zero(name, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
