"""What every task must do alike: the hinted few-shot prompt is the plain one plus hints."""

from __future__ import annotations

import re

import pytest

from star.tasks import build_task
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
        overrides += [f"task.data_files.{s}={REPO}/tests/data/{name}/{s}.jsonl" for s in ("train", "dev")]
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
