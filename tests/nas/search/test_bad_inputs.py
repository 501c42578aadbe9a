"""more-search on bad input: exit 2, one line naming the problem and the fix, no
traceback, and nothing written: no output folder, no proxy_scores.json, no study.journal."""
from __future__ import annotations

import json
import os
import re

import pytest

from nas.cli.search import main as search_main
from tests.factories import task_folder, write_sentiment

FAST = ["--trials", "1", "--trial-steps", "2", "--max-train-samples", "32", "-q", "--budget", "3k",
        "--max-length", "24", "--batch-size", "8"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = task_folder(tmp_path_factory.mktemp("bad"), 64, 16)
    (d / "latin1.tsv").write_bytes("sentence\tlabel\ncaf\xe9 good\t1\nbad film\t0\n".encode("latin-1"))
    write_sentiment(d / "oneclass.tsv", 40, seed=3, label=lambda s: 1)
    rows = ["text,score"] + [f"good film {i},{i % 5 + 0.5}" for i in range(30)] + ["bad film,nan", "so so,abc"]
    (d / "scores.csv").write_text("\n".join(rows) + "\n")
    (d / "space_list.json").write_text(json.dumps([{"type": "lora", "rank": 2}]))
    (d / "space_number.json").write_text(json.dumps({"choices": 3}))
    (d / "space_rank.json").write_text(json.dumps({"choices": [{"type": "lora", "rank": 2}],
                                                   "shortcuts": ["s_res1"], "shortcut_rank": -2}))
    return d


def _data(d, train="train.tsv", dev="dev.tsv"):
    return ["--model", str(d / "model"), "--train-file", str(d / train), "--validation-file", str(d / dev)]


# (case, extra flags given the fixture folder, what the message must say)
CASES = [
    ("non-UTF-8 TSV", lambda d: _data(d, "latin1.tsv"), "is not UTF-8 text .*save it as UTF-8"),
    ("space is a JSON list", lambda d: ["--space", str(d / "space_list.json")], "expected a JSON object"),
    ("space choices a number", lambda d: ["--space", str(d / "space_number.json")], "'choices' must be a list"),
    ("space shortcut_rank -2", lambda d: ["--space", str(d / "space_rank.json")],
     "shortcut_rank must be a positive integer, got -2"),
    ("--proxy nonsense", lambda d: ["--proxy", "nonsense"], "unknown --proxy 'nonsense'; choose one of"),
    ("--batch-size 0", lambda d: ["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    ("--batch-size -4", lambda d: ["--batch-size", "-4"], "--batch-size must be a positive integer"),
    ("-o an existing file", lambda d: ["-o", "afile"], "'afile' is an existing file; choose another -o"),
    ("-o under /proc", lambda d: ["-o", "/proc/nas-out"], "cannot write into '/proc'"),
    ("--max-length past the model", lambda d: ["--max-length", "1024"],
     "--max-length 1024 is more than the model's 64 positions; pass --max-length 64"),
    ("--max-length 0", lambda d: ["--max-length", "0"], "--max-length must be a positive integer"),
    ("--epochs -1", lambda d: ["--epochs", "-1"], "--epochs must be > 0"),
    ("--lr -1", lambda d: ["--lr", "-1"], "--lr must be a positive number"),
    ("--lr 0", lambda d: ["--lr", "0"], "--lr must be a positive number"),
    ("--max-train-samples 0", lambda d: ["--max-train-samples", "0"], "--max-train-samples must be a positive"),
    ("--max-train-samples -5", lambda d: ["--max-train-samples", "-5"], "--max-train-samples must be a positive"),
    ("--seed -1", lambda d: ["--seed", "-1"], "--seed must be an integer in 0.."),
    ("--trials 0", lambda d: ["--trials", "0"], "--trials must be a positive integer"),
    ("--heartbeat 0", lambda d: ["--heartbeat", "0"], "--heartbeat must be a number of seconds > 0"),
    ("--holdout 1.5", lambda d: ["--holdout", "1.5"], "--holdout must be a fraction"),
    ("--budget abc", lambda d: ["--budget", "abc"], "budget 'abc' is not understood"),
    ("--budget 200%", lambda d: ["--budget", "200%"], "a percentage must be in"),
    ("--budget 1", lambda d: ["--budget", "1"], "below the cheapest candidate"),
    ("--model missing", lambda d: ["--model", "/nonexistent/model"], "does not exist"),
    ("--task nonsense", lambda d: ["--model", str(d / "model"), "--task", "nonsense"], "unknown task 'nonsense'"),
    ("--train-file missing", lambda d: ["--train-file", "nope.tsv"], "'nope.tsv' does not exist"),
    ("--storage foo://x", lambda d: ["--storage", "foo://x"], "unknown database 'foo'; use postgresql://"),
    ("--storage x.txt", lambda d: ["--storage", "x.txt"], "neither a database URL nor a journal; use"),
    ("--storage journal in a missing folder", lambda d: ["--storage", "journal:///nonexistent/dir/s.journal"],
     "folder '/nonexistent/dir' does not exist"),
    ("--storage sqlite in a missing folder", lambda d: ["--storage", "sqlite:////nonexistent/dir/x.db"],
     "cannot open sqlite"),
    ("--storage postgresql, no server", lambda d: ["--storage", "postgresql://u:p@127.0.0.1:1/db"],
     "cannot open postgresql\\+psycopg://u:\\*\\*\\*@127.0.0.1:1/db"),
    ("one-class train data", lambda d: _data(d, "oneclass.tsv"), "one class only"),
    ("numeric labels with nan/abc", lambda d: ["--model", str(d / "model"), "--train-file", str(d / "scores.csv"),
                                              "--text-columns", "text", "--label-column", "score"],
     "holds numbers except in 2 row\\(s\\) \\(row \\d+: 'nan', row \\d+: 'abc'\\)"),
    ("--resume with nothing to resume", lambda d: ["--resume"], "there is no search to resume"),
    ("--resume, a journal with nothing to resume", lambda d: ["--resume", "--storage", "journal:s.journal"],
     "'s.journal' does not exist, so there is no search to resume"),
    ("bad data, a new journal storage", lambda d: _data(d, "oneclass.tsv") + ["--storage", "journal:new.journal"],
     "one class only"),
]


@pytest.mark.parametrize("case, extra, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exit_2_named_nothing_written(files, tmp_path, monkeypatch, capsys, case, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine\n")
    flags = extra(files)
    base = [] if "--model" in flags else _data(files)
    rc = search_main(FAST + base + flags)
    err = capsys.readouterr().err
    assert rc == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1, err  # (a weight-loading bar may come first)
    assert re.search(message, errors[0]), err
    assert sorted(os.listdir(tmp_path)) == ["afile"]  # nothing written, nothing of the user's touched
    assert (tmp_path / "afile").read_text() == "mine\n"
