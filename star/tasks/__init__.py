"""Task registry: task name -> task class. The only place that maps names to tasks.

    from star.tasks import build_task
    task = build_task(cfg.task, seed=cfg.seed)
"""

from __future__ import annotations

import importlib

from star.tasks.base import Example, Task

# name -> "module:Class"; imported lazily so an unused task costs nothing.
TASKS: dict[str, str] = {
    "arithmetic": "star.tasks.arithmetic:ArithmeticTask",
    "cqa": "star.tasks.cqa:CqaTask",
    "gsm8k": "star.tasks.gsm8k:Gsm8kTask",
    "reasoning_gym": "star.tasks.reasoning_gym:ReasoningGymTask",
}


def build_task(task_cfg, seed: int) -> Task:
    """Instantiate the task named by task_cfg.name from its config section."""
    if task_cfg.name not in TASKS:
        raise ValueError(f"unknown task '{task_cfg.name}'; choose one of: {', '.join(sorted(TASKS))}")
    module_name, class_name = TASKS[task_cfg.name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.from_config(task_cfg, seed=seed)


__all__ = ["Example", "Task", "TASKS", "build_task"]
