"""The task table: GLUE tasks by name, their columns, labels and metrics, and column defaults."""
from __future__ import annotations

from dataclasses import dataclass

TASK_TYPES = ("classification", "regression", "causal_lm")
SAMPLE_TASK = "sst2-sample"
HUB_GLUE_IDS = ("nyu-mll/glue", "glue")


# ---- task table ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GlueTask:
    name: str
    folder: str  # canonical GLUE folder name (SST-2, MRPC, ...)
    text_columns: tuple[str, ...]  # columns of the original TSV
    label_column: str
    hub_text_columns: tuple[str, ...]  # columns of the Hub's nyu-mll/glue
    label_names: tuple[str, ...] | None = None  # TSV labels that are strings, in id order
    num_labels: int = 2
    task_type: str = "classification"
    metrics: tuple[str, ...] = ("accuracy",)
    main_metric: str = "accuracy"
    columns: tuple[str, ...] | None = None  # for a TSV without header row
    dev_file: str = "dev.tsv"
    hub_config: str | None = None
    hub_validation_split: str = "validation"
    class_names: tuple[str, ...] | None = None  # names of integer labels (the Hub's ClassLabel), for id2label


_NLI2 = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, GlueTask] = {t.name: t for t in [
    GlueTask("cola", "CoLA", ("sentence",), "label", ("sentence",), metrics=("mcc", "accuracy"),
             main_metric="mcc", columns=("source", "label", "marker", "sentence"),
             class_names=("unacceptable", "acceptable")),
    GlueTask("sst2", "SST-2", ("sentence",), "label", ("sentence",), class_names=("negative", "positive")),
    GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"),
             metrics=("accuracy", "f1"), class_names=("not_equivalent", "equivalent")),
    GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("question1", "question2"),
             metrics=("accuracy", "f1"), class_names=("not_duplicate", "duplicate")),
    GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", ("sentence1", "sentence2"),
             num_labels=1, task_type="regression", metrics=("pearson", "spearman"),
             main_metric="pearson"),
    GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
             label_names=("entailment", "neutral", "contradiction"), num_labels=3,
             dev_file="dev_matched.tsv", hub_validation_split="validation_matched"),
    GlueTask("mnli-mm", "MNLI", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
             label_names=("entailment", "neutral", "contradiction"), num_labels=3,
             dev_file="dev_mismatched.tsv", hub_config="mnli",
             hub_validation_split="validation_mismatched"),
    GlueTask("qnli", "QNLI", ("question", "sentence"), "label", ("question", "sentence"),
             label_names=_NLI2),
    GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"),
             label_names=_NLI2),
    GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"),
             class_names=("not_entailment", "entailment")),
]}
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli_matched": "mnli", "mnli-m": "mnli",
            "mnli_mismatched": "mnli-mm", "mnli-mismatched": "mnli-mm"}

# Default column names tried, in order, for user files.
DEFAULT_TEXT_COLUMNS = [("sentence1", "sentence2"), ("premise", "hypothesis"),
                        ("question1", "question2"), ("question", "sentence"), ("text",),
                        ("sentence",)]
DEFAULT_LABEL_COLUMNS = ("label", "labels", "score")
CAUSAL_COLUMNS = ("prompt", "response")


def task_names() -> list[str]:
    return sorted(GLUE_TASKS) + [SAMPLE_TASK]


def glue_task(name: str) -> GlueTask | None:
    key = name.strip().lower()
    return GLUE_TASKS.get(_ALIASES.get(key, key))


def class_names(name: str, label_names, num_labels: int) -> list[str]:
    """Names for label ids 0..num_labels-1: the data's own string labels, else the GLUE task's
    class names (the bundled sample is SST-2), else LABEL_i as transformers names them."""
    if label_names:
        return [str(n) for n in label_names]
    spec = glue_task("sst2" if name == SAMPLE_TASK else name)
    if spec is not None and spec.class_names and len(spec.class_names) == num_labels:
        return list(spec.class_names)
    return [f"LABEL_{i}" for i in range(num_labels)]
