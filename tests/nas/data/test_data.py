"""Tasks and metrics: GLUE folders (the real files in ../shared/data/glue, which CI has),
the bundled sample, user CSV/TSV/JSONL files, label checks, holdout and subsampling."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nas.models
from nas import UserError
from nas.data import readers as nas_data
from nas.data import GLUE_TASKS, load_task
from nas.metrics import accuracy, compute_metrics, f1_binary, matthews_corrcoef, pearson, spearman
from tests.factories import make_tokenizer, require_glue

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


# ---- metrics ---------------------------------------------------------------------------------
def test_metrics_match_reference_implementations():
    from scipy import stats

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=200), rng.normal(size=200)
    y_tied = np.round(y, 1)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert spearman(x, y_tied) == pytest.approx(stats.spearmanr(x, y_tied)[0], abs=1e-12)
    p, t = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    tp, tn = np.sum((p == 1) & (t == 1)), np.sum((p == 0) & (t == 0))
    fp, fn = np.sum((p == 1) & (t == 0)), np.sum((p == 0) & (t == 1))
    mcc = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert matthews_corrcoef(p, t) == pytest.approx(mcc, abs=1e-12)
    assert f1_binary(p, t) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert accuracy(p, t) == pytest.approx(np.mean(p == t))
    assert matthews_corrcoef([1, 1, 1], [0, 1, 1]) == 0.0  # constant predictions: 0, not NaN
    assert f1_binary([0, 0], [0, 0]) == 0.0
    three = matthews_corrcoef([0, 1, 2, 2, 1], [0, 1, 2, 1, 1])
    assert -1 <= three <= 1
    assert set(compute_metrics(("accuracy", "f1"), p, t)) == {"accuracy", "f1"}
    with pytest.raises(ValueError):
        compute_metrics(["bleu"], p, t)


def test_task_table_follows_glue():
    assert GLUE_TASKS["cola"].main_metric == "mcc"
    assert set(GLUE_TASKS["mrpc"].metrics) == set(GLUE_TASKS["qqp"].metrics) == {"accuracy", "f1"}
    assert GLUE_TASKS["stsb"].metrics == ("pearson", "spearman") and GLUE_TASKS["stsb"].task_type == "regression"
    assert {t.main_metric for n, t in GLUE_TASKS.items() if n in ("sst2", "qnli", "rte", "wnli", "mnli")} == {"accuracy"}
    assert GLUE_TASKS["mnli"].dev_file == "dev_matched.tsv"


# ---- GLUE ------------------------------------------------------------------------------------
def test_missing_glue_fails_a_ci_test_and_skips_any_other(tmp_path):
    class Node:  # the one method of a pytest item that require_glue reads
        def __init__(self, *marks):
            self.marks = marks

        def get_closest_marker(self, name):
            return pytest.mark.ci.mark if name in self.marks else None

    (tmp_path / "MRPC").mkdir()
    for f in ("train.tsv", "dev.tsv"):
        (tmp_path / "MRPC" / f).write_text("x\n")
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("x\n")  # dev.tsv missing
    for node in (Node(), Node("ci")):
        assert require_glue(node, "MRPC", glue=tmp_path) == tmp_path
    with pytest.raises(pytest.fail.Exception, match=r"RTE/dev\.tsv.*CI must have \.\./shared/data/glue"):
        require_glue(Node("ci"), "MRPC", "RTE", glue=tmp_path)
    with pytest.raises(pytest.skip.Exception, match=r"SST-2/train\.tsv"):
        require_glue(Node(), "SST-2", glue=tmp_path)


@pytest.mark.ci  # fails, not skips, without the real copy (tests/factories.py: require_glue)
@pytest.mark.parametrize("task,n_train,n_dev,dev_counts", [
    ("sst2", 67349, 872, None), ("mrpc", 3668, 408, [129, 279]), ("cola", 8551, 1043, None),
    ("rte", 2490, 277, None)])
def test_local_glue_folders(request, tok, task, n_train, n_dev, dev_counts):
    glue = require_glue(request.node, GLUE_TASKS[task].folder)
    d = load_task(task, tok, data_dir=glue, max_train_samples=300, max_length=64)
    assert len(d.train) == 300 and len(d.eval) == n_dev
    assert d.eval_split == "dev" and d.num_labels == 2
    assert d.main_metric == GLUE_TASKS[task].main_metric
    if dev_counts:
        assert np.bincount(d.eval["labels"]).tolist() == dev_counts
    raw = nas_data.load_glue(GLUE_TASKS[task], glue)
    assert len(raw["train"]) == n_train
    if task == "rte":
        assert d.label_names == ["entailment", "not_entailment"]
    if task == "mrpc":  # a sentence pair: [CLS] a [SEP] b [SEP]
        assert d.eval[0]["input_ids"].count(tok.sep_token_id) == 2


def test_glue_folder_layouts(tok, tmp_path):
    """STS-B (regression) and MNLI (dev_matched, string labels) in the original layout."""
    sts = tmp_path / "STS-B"
    sts.mkdir()
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    for name in ("train.tsv", "dev.tsv"):
        rows = [f"{i}\tmain-news\tx\t2012\t{i}\tnone\tnone\tgood movie {i}\tbad film\t{i % 5 + 0.5}"
                for i in range(10)]
        (sts / name).write_text("\n".join([head] + rows) + "\n")
    d = load_task("sts-b", tok, data_dir=tmp_path)
    assert d.task_type == "regression" and d.num_labels == 1 and d.main_metric == "pearson"
    assert d.train["labels"][:2] == [0.5, 1.5]
    mnli = tmp_path / "MNLI"
    mnli.mkdir()
    cols = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1",
            "sentence2", "label1", "gold_label"]
    labels = ["neutral", "entailment", "contradiction"]
    rows = ["\t".join([str(i)] + ["x"] * 7 + ['a "quoted good', "bad"] + [labels[i % 3]] * 2) for i in range(6)]
    for name in ("train.tsv", "dev_matched.tsv"):
        (mnli / name).write_text("\n".join(["\t".join(cols)] + rows + ["broken\trow"]) + "\n")
    d = load_task("mnli", tok, data_dir=tmp_path)
    assert d.num_labels == 3 and d.train["labels"] == [1, 0, 2, 1, 0, 2] and len(d.eval) == 6
    with pytest.raises(UserError, match="no QQP/ folder"):
        load_task("qqp", tok, data_dir=tmp_path)


def test_glue_without_data_dir_fails_clearly(tok, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr(nas.models, "hub_reachable", lambda: False)
    with pytest.raises(UserError) as e:
        load_task("rte", tok)
    assert "--data-dir" in str(e.value) and "RTE/train.tsv" in str(e.value)
    with pytest.raises(UserError, match="unknown task 'glue-x'.*cola"):
        load_task("glue-x", tok)


def test_bundled_sample_is_the_default(tok):
    d = load_task(None, tok)
    assert d.name == "sst2-sample" and len(d.train) == 2000 and len(d.eval) == 872
    assert load_task("sst2-sample", tok, max_train_samples=10).train.num_rows == 10


# ---- user files ------------------------------------------------------------------------------
def test_user_files_csv_tsv_jsonl(tok, tmp_path):
    (tmp_path / "a.csv").write_text('premise,hypothesis,label\n"good, very good",bad,yes\nfine,sad,no\n'
                                    "nice,poor,yes\n")
    (tmp_path / "b.tsv").write_text('premise\thypothesis\tlabel\n"quoted good\tbad\tno\n')
    d = load_task(tokenizer=tok, train_file=tmp_path / "a.csv", validation_file=tmp_path / "b.tsv")
    assert d.text_columns == ("premise", "hypothesis") and d.label_names == ["no", "yes"]
    assert d.train["labels"] == [1, 0, 1] and d.eval["labels"] == [0]
    # TSV is read as GLUE does (no quoting): '"' and 'quoted' are 2 tokens ([UNK] here).
    assert tok.decode(d.eval[0]["input_ids"]) == "[CLS] [UNK] [UNK] good [SEP] bad [SEP]"
    with (tmp_path / "c.jsonl").open("w") as f:
        for i in range(5):
            f.write(json.dumps({"text": f"good {i}", "y": i % 3}) + "\n")
    d = load_task(tokenizer=tok, train_file=tmp_path / "c.jsonl", validation_file=tmp_path / "c.jsonl",
                  label_column="y")
    assert d.num_labels == 3 and d.text_columns == ("text",)


def test_user_file_errors(tok, tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("review,stars\ngood,1\nbad,0\nfine,1\nawful,0\nnice,1\npoor,0\n")
    with pytest.raises(UserError, match=r"text column.*available columns: \['review', 'stars'\]"):
        load_task(tokenizer=tok, train_file=f)
    with pytest.raises(UserError, match=r"\['body'\] not found.*available columns"):
        load_task(tokenizer=tok, train_file=f, text_columns="body", label_column="stars")
    with pytest.raises(UserError, match="no label column"):
        load_task(tokenizer=tok, train_file=f, text_columns=["review"])
    d = load_task(tokenizer=tok, train_file=f, text_columns="review", label_column="stars")
    assert d.eval_split == "holdout" and len(d.train) + len(d.eval) == 6
    with pytest.raises(UserError, match="do not fit a classification head with 2 labels"):
        load_task(tokenizer=tok, train_file=_write(tmp_path / "l.csv", "text,label\na,0\nb,3\n"),
                  validation_file=_write(tmp_path / "l2.csv", "text,label\na,1\n"), num_labels=2)
    with pytest.raises(UserError, match="must be ids 0, 1"):
        load_task(tokenizer=tok, train_file=_write(tmp_path / "n.csv", "text,label\na,-1\nb,1\n"))
    with pytest.raises(UserError, match="one class only"):  # both classes needed in train
        load_task(tokenizer=tok, train_file=_write(tmp_path / "o.csv", "text,label\na,1\nb,1\nc,1\n"),
                  validation_file=_write(tmp_path / "o2.csv", "text,label\na,0\n"))
    with pytest.raises(UserError, match=r"numbers.*row 3: 'nan'"):
        load_task(tokenizer=tok, train_file=_write(tmp_path / "r.csv", "text,y\na,0.5\nb,1.5\nc,2.5\nd,nan\n"),
                  validation_file=_write(tmp_path / "r2.csv", "text,y\na,0.5\n"), label_column="y")
    with pytest.raises(UserError, match=r"numbers except in 2 row\(s\).*row 2: 'nan'"):  # half broken, still not classes
        load_task(tokenizer=tok, train_file=_write(tmp_path / "h.csv", "text,y\na,0.5\nb,1.5\nc,nan\nd,abc\n"),
                  validation_file=_write(tmp_path / "h2.csv", "text,y\na,0.5\n"), label_column="y")
    with pytest.raises(UserError, match="never occur in train"):
        load_task(tokenizer=tok, train_file=_write(tmp_path / "s.csv", "text,label\na,pos\nb,neg\n"),
                  validation_file=_write(tmp_path / "s2.csv", "text,label\na,neutral\n"))
    with pytest.raises(UserError, match="does not exist"):
        load_task(tokenizer=tok, train_file=tmp_path / "nope.csv")
    with pytest.raises(UserError, match="unknown format"):
        load_task(tokenizer=tok, train_file=_write(tmp_path / "x.parquet", "x"))
    with pytest.raises(UserError, match="needs --train-file"):
        load_task(tokenizer=tok, validation_file=f)
    with pytest.raises(UserError, match="must be numbers"):
        load_task(tokenizer=tok, train_file=_write(tmp_path / "r.csv", "text,label\na,0.5\nb,high\n"),
                  task_type="regression")


def test_float_labels_mean_regression(tok, tmp_path):
    f = _write(tmp_path / "r.csv", "sentence1,sentence2,score\na,b,0.5\nc,d,4.25\ne,f,3\n")
    d = load_task(tokenizer=tok, train_file=f, validation_file=f)
    assert d.task_type == "regression" and d.num_labels == 1 and d.main_metric == "pearson"
    assert d.train["labels"] == [0.5, 4.25, 3.0]
    d.check_head(1)
    with pytest.raises(UserError, match="regression"):
        d.check_head(2)


def _write(path, text):
    path.write_text(text)
    return path


# ---- holdout and subsampling -------------------------------------------------------------------
def test_column_reads_follow_the_selected_rows(tok):
    """row_lengths / column read arrow columns through a selection's index mapping: the values
    of each selected row, in the selection's order, as a row-by-row read gives them."""
    from nas.data import column, row_lengths

    d = load_task(None, tok, max_length=32)
    part = d.holdout(0.1, seed=3).subsample(300, seed=1)  # two selections stacked
    rows = part.train.select([5, 0, 17, 3])  # and one out of order
    for ds in (d.train, part.train, rows):
        assert row_lengths(ds) == [len(r["input_ids"]) for r in ds]
        assert column(ds, "labels").tolist() == [r["labels"] for r in ds]
    assert len(set(row_lengths(part.train))) > 3  # lengths vary: the check can tell rows apart
    assert d.fingerprint() != part.fingerprint()


def test_holdout_and_subsample(tok):
    d = load_task(None, tok, max_length=32)
    h = d.holdout(0.1, seed=3)
    assert h.eval_split == "holdout" and len(h.eval) == 200 and len(h.train) == 1800
    assert d.eval_split == "dev" and len(d.train) == 2000  # the original is unchanged
    key = lambda ds: {tuple(r) for r in ds["input_ids"]}  # noqa: E731
    assert not key(h.eval) - key(d.train)  # held-out rows come from TRAIN ...
    assert h.holdout(0.5, seed=1).eval_split == "holdout"
    assert h.eval["input_ids"] == d.holdout(0.1, seed=3).eval["input_ids"]  # ... deterministically
    assert h.eval["input_ids"] != d.holdout(0.1, seed=4).eval["input_ids"]
    a = load_task(None, tok, max_train_samples=50, max_length=32)
    b = load_task(None, tok, max_train_samples=50, max_length=32)
    assert a.train["input_ids"] == b.train["input_ids"] and len(a.train) == 50
    s = d.subsample(50)
    assert s.train["input_ids"] == a.train["input_ids"]  # same subset before or after tokenizing
    with pytest.raises(ValueError):
        d.holdout(1.5)
