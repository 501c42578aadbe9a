"""benchmarks/search_signal.py: its cells are parsed or refused with the fix named."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import search_signal  # noqa: E402


def test_cells_parse_rows_and_all():
    assert search_signal.parse_cells("sst2:8000:0.1%,mrpc:all:200k") == [
        ("sst2", 8000, "0.1%"), ("mrpc", None, "200k")]
    assert search_signal.cell_dir(Path("r"), "sst2", None, "0.02%") == Path("r/sst2_all_0.02pct")


@pytest.mark.parametrize("bad, says", [("sst2:8000", "task:rows:budget"), ("sst2:many:0.1%", "task:rows:budget"),
                                       ("cola:all:0.1%", "no protocol")])
def test_bad_cells_exit_with_the_fix(bad, says):
    with pytest.raises(SystemExit) as e:
        search_signal.parse_cells(bad)
    assert says in str(e.value) and bad.split(":")[0] in str(e.value)
