"""Task registry: task name -> task class. The only place that maps names to tasks.

    from star.tasks import build_task, task_config_classes
    task = build_task(cfg.task, seed=cfg.seed)
    task_config_classes()["cqa"]       # CqaConfig: the schema of a task=cqa config section
"""

from __future__ import annotations

import importlib

from star.tasks.base import Example, Task, TaskConfig

# name -> "module:Class"; imported lazily so an unused task costs nothing.
TASKS: dict[str, str] = {
    "arithmetic": "star.tasks.arithmetic:ArithmeticTask",
    "cqa": "star.tasks.cqa:CqaTask",
    "gsm8k": "star.tasks.gsm8k:Gsm8kTask",
    "reasoning_gym": "star.tasks.reasoning_gym:ReasoningGymTask",
}


def task_class(name: str) -> type:
    """The class registered as `name` (its module is imported now); ValueError listing the names if none is."""
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; choose one of: {', '.join(sorted(TASKS))}")
    module_name, class_name = TASKS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_task(task_cfg, seed: int) -> Task:
    """Instantiate the task named by task_cfg.name from its config section."""
    return task_class(task_cfg.name).from_config(task_cfg, seed=seed)


def task_config_classes() -> dict[str, type[TaskConfig]]:
    """Task name -> the dataclass schema of its config section (the task class's `config_class`).

    Imports every task module; they keep torch, datasets and reasoning_gym out of import time,
    so this is cheap enough for config composition.
    """
    return {name: task_class(name).config_class for name in TASKS}


__all__ = ["Example", "Task", "TaskConfig", "TASKS", "build_task", "task_class", "task_config_classes"]
