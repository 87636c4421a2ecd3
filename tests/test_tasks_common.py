"""What every task must do alike: the hinted few-shot prompt is the plain one plus hints; its
config keys are a schema of its own next to its code, with range checks; no task class inherits
behaviour from another class of ours."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from star.tasks import TASKS, Task, TaskConfig, build_task, task_class, task_config_classes
from tests.conftest import REPO, compose_config

HINTS = {
    "arithmetic": re.compile(r" \(hint: the answer is -?\d+\)"),
    "gsm8k": re.compile(r" \(hint: the answer is [^)]+\)"),
    "cqa": re.compile(re.escape(" (CORRECT)")),
    "reasoning_gym": re.compile(r" \(hint: the answer is [^)]+\)"),
}


def task_for(name):
    overrides = [f"task={name}"]
    if (REPO / "tests" / "data" / name).is_dir():
        overrides += [f"task.data_files.{s}={REPO}/tests/data/{name}/{s}.jsonl" for s in ("train", "dev", "test")]
    cfg = compose_config(overrides)
    return build_task(cfg.task, seed=0)


@pytest.mark.parametrize("name", sorted(HINTS))
def test_hinted_prompt_is_plain_prompt_plus_one_hint_per_exemplar(name):
    task = task_for(name)
    plain, hinted = task.fewshot_prompt(), task.fewshot_prompt(hint=True)
    n_exemplars = plain.count(task.stop[0])
    assert n_exemplars >= 6
    assert len(HINTS[name].findall(hinted)) == n_exemplars
    assert HINTS[name].sub("", hinted) == plain
    assert not HINTS[name].search(plain)


@pytest.mark.parametrize("name", sorted(HINTS))
def test_hint_text_is_what_format_question_inserts(name):
    task = task_for(name)
    ex = task.load("train")[0]
    with_hint, without = task.format_question(ex, hint=True), task.format_question(ex)
    assert task.hint_text(ex) in with_hint and task.hint_text(ex) not in without
    assert HINTS[name].sub("", with_hint) == without


# ----------------------------------------------------------------------------- lines of reasoning

SCRATCHPAD = " 5+8+0=13\n4+7+1=12\nThe answer is 123.\n\n"
GSM8K_STEPS = (" After selling, she has 24 - 15 = 9 muffins.\nAfter baking 8 more, she has 9 + 8 = 17 muffins.\n"
               "The answer is 17.\n\n")
CQA_PARAGRAPH = (" Milk spoils when it gets warm, so it must go somewhere cold. Of these places, only a refrigerator "
                 "is made to keep food cold. Therefore, the answer is refrigerator (B).\n\n")
# (task, completion, lines of reasoning before its answer line)
REASONING_LINES = [
    ("arithmetic", SCRATCHPAD, 2),
    ("arithmetic", " The answer is 67.\n\n", 0),
    ("arithmetic", " The answer is 67.\n5+8+0=13\nThe answer is 67.\n\n", 0),  # the first answer line counts
    ("arithmetic", SCRATCHPAD.replace("\n\n", "\n\n5+8+0=13\n"), 2),  # after the stop: not read
    ("arithmetic", "", 0),
    ("gsm8k", GSM8K_STEPS, 2),
    ("gsm8k", " The answer is 67.\n\n", 0),
    ("gsm8k", " She had 24 - 15 = 9, so the answer is 9.\n\n", 0),  # reasoning on the answer line: not a line before
    ("gsm8k", " She had 24 - 15 = 9.\nSo she has 17 muffins.\n\n", 1),  # no statement: the last line answers
    ("gsm8k", " #### 17\nQ: and more\nx\ny\n", 0),  # a new "Q:" line: not this question's
    ("cqa", CQA_PARAGRAPH, 2),  # one paragraph: its sentences are its lines
    ("cqa", " The answer is refrigerator (B).\n\n", 0),
    ("cqa", " Milk must stay cold.\nSo the answer is (B).\n\n", 1),
    ("reasoning_gym", " 3 * 4 = 12.\n12 + 5 = 17.\nThe answer is 17.\n\n", 2),
    ("reasoning_gym", " The answer is 67.\n\n", 0),
]


@functools.cache
def built_task(name):
    return task_for(name)


@pytest.mark.parametrize("name,completion,expected", REASONING_LINES)
def test_reasoning_lines_before_the_answer_line(name, completion, expected):
    assert built_task(name).reasoning_lines(completion) == expected


@pytest.mark.parametrize("name", sorted(HINTS))
def test_a_direct_completion_is_a_bare_answer_and_a_gold_rationale_is_not(name):
    task = built_task(name)
    examples = task.load("train")[:5]
    assert all(task.reasoning_lines(task.direct_completion(ex)) == 0 for ex in examples)
    rationales = [r for r in map(task.gold_rationale, examples) if r is not None]
    assert all(task.reasoning_lines(r) >= 1 for r in rationales)


# ----------------------------------------------------------------------------- config schemas

# Each task's own keys (besides TaskConfig's) and their defaults.
NO_FILES = {"train": None, "dev": None, "test": None}
OWN_DEFAULTS = {
    "arithmetic": {"digits": [1, 2, 3, 4, 5], "ood_digits": [], "ood_size": None, "ood_max_new_tokens": None},
    "cqa": {"data_files": NO_FILES, "hub_id": None, "hub_config": None},
    "gsm8k": {"data_files": NO_FILES, "hub_id": None, "hub_config": None, "source": "hub_or_files"},
    "reasoning_gym": {"dataset": None, "dataset_kwargs": {}},
}
# "???" is omegaconf.MISSING: a task option must set its name.
COMMON_DEFAULTS = {"name": "???", "train_size": 1000, "dev_size": 100, "test_size": 100,
                   "sample_per_iteration": None, "max_new_tokens": 128}


def test_every_registered_task_names_its_schema():
    classes = task_config_classes()
    assert sorted(classes) == sorted(TASKS) == sorted(OWN_DEFAULTS)
    for name, schema in classes.items():
        assert schema is task_class(name).config_class
        assert dataclasses.is_dataclass(schema) and issubclass(schema, TaskConfig) and schema is not TaskConfig


@pytest.mark.parametrize("name", sorted(OWN_DEFAULTS))
def test_schema_holds_the_common_keys_and_only_its_own(name):
    defaults = OmegaConf.to_container(OmegaConf.structured(task_config_classes()[name]))
    assert defaults == {**COMMON_DEFAULTS, **OWN_DEFAULTS[name]}
    assert OmegaConf.to_container(OmegaConf.structured(TaskConfig)) == COMMON_DEFAULTS


def task_options():
    return sorted(path.stem for path in (REPO / "conf" / "task").glob("*.yaml"))


@pytest.mark.parametrize("option", task_options())
def test_task_option_is_typed_by_its_schema_and_builds_from_its_keys_alone(option):
    section = compose_config([f"task={option}"]).task  # only this task's keys
    config = OmegaConf.to_object(section)
    assert type(config) is task_config_classes()[section.name]
    assert set(section) == {f.name for f in dataclasses.fields(config)}
    assert config.problems() == []
    task = build_task(section, seed=0)
    assert task.name == section.name
    # Every shipped option has all three splits (file-backed ones from the hub), known before any data is read.
    assert isinstance(task, Task) and task.splits == ("train", "dev", "test")


def test_a_key_of_another_task_is_refused():
    schema = task_config_classes()["cqa"]
    with pytest.raises(Exception, match="digits"):
        OmegaConf.merge(OmegaConf.structured(schema), {"name": "cqa", "digits": [1, 2]})


# (overrides of the common keys, the problems reported): the messages validate() reports
PROBLEMS = [
    ({}, []),
    ({"train_size": 0}, ["task.train_size must be > 0, got 0"]),
    ({"dev_size": -3}, ["task.dev_size must be > 0, got -3"]),
    ({"test_size": 0}, ["task.test_size must be > 0, got 0"]),
    ({"sample_per_iteration": 0}, ["task.sample_per_iteration must be in 1..task.train_size (1000) or null, got 0"]),
    ({"sample_per_iteration": 1001},
     ["task.sample_per_iteration must be in 1..task.train_size (1000) or null, got 1001"]),
    ({"sample_per_iteration": 1000}, []),
    ({"sample_per_iteration": 5, "train_size": 4},
     ["task.sample_per_iteration must be in 1..task.train_size (4) or null, got 5"]),
    ({"max_new_tokens": 0}, ["task.max_new_tokens must be > 0, got 0"]),
    ({"train_size": -1, "dev_size": 0, "test_size": -5, "max_new_tokens": -2},
     ["task.train_size must be > 0, got -1", "task.dev_size must be > 0, got 0", "task.test_size must be > 0, got -5",
      "task.max_new_tokens must be > 0, got -2"]),
]


@pytest.mark.parametrize("name", sorted(OWN_DEFAULTS))
@pytest.mark.parametrize("overrides,problems", PROBLEMS)
def test_common_range_checks(name, overrides, problems):
    cfg = OmegaConf.merge(OmegaConf.structured(task_config_classes()[name]), {"name": name, **overrides})
    assert OmegaConf.to_object(cfg).problems() == problems


# ----------------------------------------------------------------------------- composition, imports

def classes_of_star_tasks() -> list[type]:
    modules = ["star.tasks", "star.tasks.base", "star.tasks.answers", "star.tasks.hf_data",
               *(spec.split(":")[0] for spec in TASKS.values())]
    return [cls for module in map(importlib.import_module, modules)
            for _, cls in inspect.getmembers(module, inspect.isclass) if cls.__module__ == module.__name__]


def test_no_task_class_inherits_behaviour_from_ours():
    classes = classes_of_star_tasks()
    assert {task_class(name) for name in TASKS} <= set(classes)
    for cls in classes:
        ours = [base for base in cls.__mro__[1:] if base.__module__.startswith("star.")]
        # Config schemas may extend TaskConfig (fields and their range checks); nothing else extends ours.
        assert not ours or issubclass(cls, TaskConfig), f"{cls.__qualname__} inherits from {ours}"


def test_task_config_classes_imports_nothing_heavy():
    code = ("import sys; from star.tasks import task_config_classes; task_config_classes(); "
            "print(sorted(m for m in ('torch', 'datasets', 'reasoning_gym', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
