"""Label names for id2label: the data's own string labels, else the GLUE task's class names."""
from nas.data.tasks import class_names


def test_glue_integer_labels_get_the_hub_class_names():
    assert class_names("mrpc", None, 2) == ["not_equivalent", "equivalent"]
    assert class_names("sst2-sample", None, 2) == ["negative", "positive"]  # the bundled sample is SST-2


def test_string_labels_win_and_unknown_tasks_fall_back_to_transformers_names():
    assert class_names("rte", ["entailment", "not_entailment"], 2) == ["entailment", "not_entailment"]
    assert class_names("my-task", None, 3) == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert class_names("mrpc", None, 3) == ["LABEL_0", "LABEL_1", "LABEL_2"]  # a head of another size
