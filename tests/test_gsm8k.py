"""Tests for star/tasks/gsm8k.py: the number verifier (a table of cases and the labelled
holdout set), the question format and its hint, gold rationales, per-class keys and the
few-shot files. Loading and data errors live in tests/test_task_data.py."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import pytest

from star.tasks import build_task
from star.tasks.base import Example, Task
from star.tasks.gsm8k import (
    STOP,
    Gsm8kTask,
    canonical,
    extract_answer,
    gold_number,
    gold_rationale_for,
    parse_exemplars,
    parse_number,
    row_example,
)

DATA = Path(__file__).parent / "data"
LABELS = DATA / "verifier_labels" / "gsm8k.jsonl"

# Measured once on the holdout half after the verifier was final (benchmarks/verifier_rates.md);
# the verifier must not get worse than this.
HOLDOUT_MAX_FALSE_NEGATIVE_RATE = 1 / 40
HOLDOUT_MAX_FALSE_POSITIVE_RATE = 0 / 18


def files() -> dict:
    return {split: str(DATA / "gsm8k" / f"{split}.jsonl") for split in ("train", "dev", "test")}


def make(train: int = 100, dev: int = 100, **kw) -> Gsm8kTask:
    return Gsm8kTask(train_size=train, dev_size=dev, data_files=files(), **kw)


ANSWERS = [
    # the format, and the other answer markers
    (" She has 40 - 6 = 34 crayons.\nThe answer is 34.\n\n", "34"),
    (" The answer is 34\n\n", "34"),
    (" 40 - 6 = 34\n#### 34\n\n", "34"),
    (" Answer: 34\n\n", "34"),
    (" The final answer is 34.\n\n", "34"),
    (" THE ANSWER IS 34!\n\n", "34"),
    (" The answer is: 34.\n\n", "34"),
    (" The answer is \\boxed{34}.\n\n", "34"),
    # separators, currency, units, percent, trailing zeros
    (" The answer is $1,250.\n\n", "1250"),
    (" The answer is 1,250.00\n\n", "1250"),
    (" The answer is 1,234,567.\n\n", "1234567"),
    (" The answer is 5 000.\n\n", "5000"),
    (" The answer is 34 crayons.\n\n", "34"),
    (" The answer is 25%.\n\n", "25"),
    (" The answer is 3.750.\n\n", "3.75"),
    (" The answer is $5.250\n\n", "5.25"),
    (" The answer is 5 dollars and 25 cents.\n\n", "5.25"),
    (" The answer is 21/4.\n\n", "5.25"),
    (" The answer is 2/3.\n\n", "2/3"),
    # signs and zero
    (" The answer is -21.\n\n", "-21"),
    (" The answer is \u221221.\n\n", "-21"),
    (" The answer is minus 21.\n\n", "-21"),
    (" The answer is 21 degrees below zero.\n\n", "-21"),
    (" The answer is 0.\n\n", "0"),
    (" The answer is -0.\n\n", "0"),
    (" The answer is 00.\n\n", "0"),
    # number words
    (" The answer is twenty-four.\n\n", "24"),
    (" The answer is seven.\n\n", "7"),
    # which number in the statement
    (" The answer is 12 * 32 = 384.\n\n", "384"),
    (" The answer is 384 (12 full shelves).\n\n", "384"),
    (" The answer is 42 dollars, which is 4200 cents.\n\n", "42"),
    # malformed or several answers
    (" The answer is 50,00.\n\n", None),
    (" The answer is 1,2.\n\n", None),
    (" The answer is 21 or 24.\n\n", None),
    (" The answer is 6, 12, 16.\n\n", None),
    (" The answer is between 250 and 270.\n\n", None),
    (" The answer is 34.\nThe answer is 35.\n\n", None),
    (" The answer is 34.\n#### 35\n\n", None),
    # agreeing, negated and empty statements
    (" The answer is 34.\n#### 34\n\n", "34"),
    (" The answer is 34. (hint: the answer is 34)\n\n", "34"),
    (" The answer is not 35. The answer is 34.\n\n", "34"),
    (" The answer is\n\n", None),
    ("", None),
    # no statement: a finished completion is read by its last line; a cut-off one has no answer
    (" She has 40 - 6 = 34.\n\n", "34"),
    (" So she has 34 crayons left.\n\n", "34"),
    (" She has 40 - 6 =", None),
    (" She has 40 crayons and gives 6 away", None),
    (" She has 40 crayons and gives away 6.\n\n", None),
    # only this question's answer counts
    (" The answer is 34.\nQ: How many?\nA: The answer is 7.\n\n", "34"),
    (" The answer is 34.\n\nThe answer is 7.", "34"),
]


@pytest.mark.parametrize("completion,expected", ANSWERS)
def test_answer_table(completion, expected):
    assert extract_answer(completion) == expected


def test_answer_table_is_big_and_nasty():
    assert len(ANSWERS) >= 30 and sum(v is None for _, v in ANSWERS) >= 10


@pytest.mark.parametrize("gold,completion,correct", [
    ("1250", " The answer is $1,250.00.\n\n", True),
    ("5.25", " The answer is 21/4.\n\n", True),
    ("5.25", " The answer is 5.3.\n\n", False),
    ("-21", " The answer is 21.\n\n", False),
    ("-21", " The answer is -21.0\n\n", True),
    ("0", " The answer is 0.00.\n\n", True),
    ("2175", " The answer is 2,175 people.\n\n", True),
    ("2175", " The answer is 217.5\n\n", False),
])
def test_is_correct_compares_numerically(gold, completion, correct):
    ex = Example(id="t", question="q", answer=gold, meta={"solution": f"x\n#### {gold}"})
    assert make().is_correct(ex, completion) is correct


@pytest.mark.parametrize("token,value", [
    ("1,250", Fraction(1250)), ("-3.50", Fraction(-7, 2)), ("3/4", Fraction(3, 4)), ("12,34", None),
    ("1,2345", None), ("1/0", None), ("007", Fraction(7)),
])
def test_parse_number(token, value):
    assert parse_number(token) == value


@pytest.mark.parametrize("value,text", [(Fraction(5000), "5000"), (Fraction(-21), "-21"), (Fraction(3, 2), "1.5"),
                                        (Fraction(21, 4), "5.25"), (Fraction(2, 3), "2/3"), (Fraction(0), "0")])
def test_canonical(value, text):
    assert canonical(value) == text


@pytest.mark.parametrize("answer,value", [
    ("x\n#### 34", Fraction(34)), ("x\n#### 2,175", Fraction(2175)), ("x\n#### -21", Fraction(-21)),
    ("x\n#### 5.25", Fraction(21, 4)), ("x\n#### $18", Fraction(18)), ("x\n#### 34 apples", None),
    ("x\n#### abc", None), ("x\n####", None),
])
def test_gold_number_is_strict(answer, value):
    assert gold_number(answer) == value


# ----------------------------------------------------------------------------- labelled set

def load_labels() -> list[dict]:
    return [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines() if line.strip()]


def rates(rows: list[dict]) -> tuple[float, float, int, int]:
    """(false-negative rate, false-positive rate, positives, negatives) of the verifier on rows."""
    task = make()
    pos = [r for r in rows if r["label"]]
    neg = [r for r in rows if not r["label"]]
    fn = sum(not task.is_correct(row_example(r["example"], r["id"]), r["completion"]) for r in pos)
    fp = sum(task.is_correct(row_example(r["example"], r["id"]), r["completion"]) for r in neg)
    return fn / len(pos), fp / len(neg), len(pos), len(neg)


def test_labelled_set_shape():
    rows = load_labels()
    assert len(rows) >= 100
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["split"] for r in rows} == {"dev", "holdout"}
    for r in rows:
        assert set(r) == {"id", "example", "completion", "label", "split"}
        assert isinstance(r["label"], bool)
        assert gold_number(r["example"]["answer"]) is not None


def test_holdout_rates_stay_at_or_below_the_reported_ones():
    fnr, fpr, _, _ = rates([r for r in load_labels() if r["split"] == "holdout"])
    assert fnr <= HOLDOUT_MAX_FALSE_NEGATIVE_RATE, f"false-negative rate {fnr:.3f}"
    assert fpr <= HOLDOUT_MAX_FALSE_POSITIVE_RATE, f"false-positive rate {fpr:.3f}"


# ----------------------------------------------------------------------------- task

def test_registry_builds_task_and_protocol():
    cfg = SimpleNamespace(name="gsm8k", train_size=5, dev_size=3, test_size=4, data_files=SimpleNamespace(**files()),
                          hub_id=None, hub_config=None)
    task = build_task(cfg, seed=0)
    assert isinstance(task, Gsm8kTask) and isinstance(task, Task)
    assert task.stop == ("\n\n",) and task.name == "gsm8k"
    assert (task.source.hub_id, task.source.hub_config) == ("openai/gsm8k", "main")
    assert [e.id for e in task.load("train")] == [f"train-{i:05d}" for i in range(5)]
    assert [e.id for e in task.load("dev")] == [f"dev-{i:05d}" for i in range(3)]
    assert [e.id for e in task.load("test")] == [f"test-{i:05d}" for i in range(4)]
    assert task.splits == ("train", "dev", "test")


def test_hint_shows_the_final_number_never_the_solution():
    task = make()
    for ex in task.load("train"):
        hint = task.hint_text(ex)
        assert hint == f" (hint: the answer is {ex.answer})"
        hinted, plain = task.format_question(ex, hint=True), task.format_question(ex)
        assert hinted.count(hint) == 1 and hinted.replace(hint, "") == plain
        assert plain == f"Q: {ex.question}\nA:"
        assert "####" not in hinted and "<<" not in hinted
        steps = [line for line in ex.meta["solution"].split("####")[0].split("\n") if line.strip()]
        assert not any(step in hinted for step in steps)


def test_gold_rationale_format_and_class_of():
    task = make()
    for ex in task.load("train") + task.load("dev"):
        rationale = task.gold_rationale(ex)
        body = rationale[: -len(STOP)]
        assert rationale.startswith(" ") and rationale.endswith(STOP)
        assert "\n\n" not in body and "<<" not in body and ">>" not in body and "####" not in body
        assert body.endswith(f"\nThe answer is {ex.answer}.")
        assert task.is_correct(ex, rationale)
        # class_of: solution lines before "####", which are the rationale's lines but the answer line
        assert task.class_of(ex) == str(len(body.split("\n")) - 1)
    assert {task.class_of(ex) for ex in task.load("train")} == {"1", "2", "3"}


def test_gold_rationale_drops_blank_lines_and_annotations():
    solution = "First 3 * 4 = <<3*4=12>>12.\n\nThen 12 + 1 = <<12+1=13>>13 .\n#### 13"
    assert gold_rationale_for(solution) == " First 3 * 4 = 12.\nThen 12 + 1 = 13 .\nThe answer is 13.\n\n"


def test_protocol_extras():
    task = make()
    ex = task.load("dev")[0]
    assert task.is_faithful(ex, " The answer is 84.\n\n") is None
    assert task.is_correct(ex, " 12 * 7 = 84.\nThe answer is 84.\n\n")
    assert not task.is_correct(ex, "")


def _exemplar_steps_are_right(completion: str) -> None:
    for line in completion.strip().split("\n"):
        # every "<arithmetic> = <number>" in a line holds
        for lhs, rhs in re.findall(r"([\d\s.+\-*/()]*\d[\d\s.+\-*/()]*)=\s*\$?(-?[\d.]*\d)", line):
            assert Fraction(eval(lhs.replace("$", ""))).limit_denominator() == Fraction(rhs), line  # noqa: S307


@pytest.mark.parametrize("direct", [False, True])
def test_fewshot_prompt(direct):
    task = make()
    prompt = task.fewshot_prompt(direct=direct)
    assert prompt.endswith(STOP) and not prompt.startswith("\n")
    pairs = parse_exemplars(prompt)
    assert 6 <= len(pairs) <= 8
    for question, completion in pairs:
        lines = completion.rstrip("\n").split("\n")
        assert re.fullmatch(r" ?The answer is -?\d+\.", lines[-1])
        assert "" not in [line.strip() for line in lines]  # no blank line inside a solution
        assert len(lines) == 1 if direct else len(lines) >= 2
        _exemplar_steps_are_right(completion)
    assert prompt == "".join(f"Q: {q}\nA:{c}" for q, c in pairs)


def test_fewshot_default_is_the_rationale_prompt_and_direct_has_the_same_questions():
    task = make()
    assert task.fewshot_prompt() == task.fewshot_prompt(direct=False)
    full, direct = parse_exemplars(task.fewshot_prompt()), parse_exemplars(task.fewshot_prompt(direct=True))
    assert [q for q, _ in full] == [q for q, _ in direct]
    assert [extract_answer(c) for _, c in full] == [extract_answer(c) for _, c in direct]


def test_fewshot_questions_are_not_from_the_data():
    prompt = resources.files("star.tasks").joinpath("prompts", "gsm8k.txt").read_text(encoding="utf-8")
    data = [json.loads(line)["question"] for split in ("train", "dev", "test")
            for line in (DATA / "gsm8k" / f"{split}.jsonl").read_text().splitlines()]
    assert not any(q in prompt for q in data)


@pytest.mark.parametrize("text,needle", [
    ("", "no exemplars"),
    ("What is 2 + 2?\nThe answer is 4.\n", "is not 'Q: ..."),
    ("Q: What is 2 + 2?\nA: Two and two make four\n", "has no final answer"),
])
def test_bad_fewshot_files_fail_loudly(tmp_path, text, needle):
    (tmp_path / "gsm8k.txt").write_text(text)
    task = Gsm8kTask(train_size=1, dev_size=1, data_files=files(), prompt_dir=tmp_path)
    with pytest.raises(ValueError, match=re.escape(needle)):
        task.fewshot_prompt()
