"""Tasks: the task table (tasks.py), raw readers (readers.py), labels (labels.py), tokenized
``TaskData`` (taskdata.py) and ``load_task`` (load.py); the bundled SST-2 sample lives in
``sst2_sample/``."""
from .load import load_task
from .taskdata import CausalLMCollator, TaskData, column, row_lengths
from .tasks import GLUE_TASKS, SAMPLE_TASK, TASK_TYPES, GlueTask, glue_task, task_names

__all__ = ["CausalLMCollator", "GLUE_TASKS", "GlueTask", "SAMPLE_TASK", "TASK_TYPES", "TaskData",
           "column", "glue_task", "load_task", "row_lengths", "task_names"]
