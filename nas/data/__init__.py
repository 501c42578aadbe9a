"""Tasks: the task table (tasks.py), raw readers (readers.py), labels (labels.py), tokenized
``TaskData`` (taskdata.py) and ``load_task`` (load.py); the bundled SST-2 sample lives in
``sst2_sample/``."""
from .load import load_task
from .taskdata import CausalLMCollator, TaskData
from .tasks import GLUE_TASKS, SAMPLE_TASK, TASK_TYPES, GlueTask, glue_task, task_names

__all__ = ["CausalLMCollator", "GLUE_TASKS", "GlueTask", "SAMPLE_TASK", "TASK_TYPES", "TaskData",
           "glue_task", "load_task", "task_names"]
