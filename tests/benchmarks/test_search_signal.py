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


def test_a_cell_runs_the_two_clis_with_their_own_flags_and_keeps_their_walls(tmp_path, monkeypatch):
    """The search CLI spells the subset --max-train-samples, the train CLI --max_train_samples
    (TrainingArguments' names); the walls go beside the plan, and a cell already run is read back."""
    calls = []

    def fake(cmd, threads, label):
        calls.append(cmd)
        if "nas.cli.search" in cmd:
            out = Path(cmd[cmd.index("-o") + 1])
            out.mkdir(parents=True)
            (out / "plan.json").write_text("{}")
            return 40.0, ""
        return 100.0, 'log line\n{"score": 0.8, "main_metric": "accuracy"}\n'

    monkeypatch.setattr(search_signal, "_timed", fake)
    out = search_signal.run_cell(("sst2", 8000, "0.1%"), tmp_path, tmp_path / "glue", 1, fresh=False, train=True)
    search, train = calls
    assert search[search.index("--max-train-samples") + 1] == "8000" and "--max_train_samples" not in search
    assert train[train.index("--max_train_samples") + 1] == "8000" and "--max-train-samples" not in train
    assert train[train.index("--plan") + 1] == str(out / "plan.json")
    import json
    assert json.loads((out / "search_wall.json").read_text())["wall_s"] == 40.0
    assert json.loads((out / "train.json").read_text()) == {"wall_s": 100.0, "threads": 1, "score": 0.8,
                                                           "main_metric": "accuracy"}
    search_signal.run_cell(("sst2", 8000, "0.1%"), tmp_path, tmp_path / "glue", 1, fresh=False, train=True)
    assert len(calls) == 2  # read back, nothing run again
    search_signal.run_cell(("mrpc", None, "0.1%"), tmp_path, tmp_path / "glue", 1, fresh=False, train=True)
    assert not any("samples" in a for a in calls[2] + calls[3])  # all rows: no subset flag
