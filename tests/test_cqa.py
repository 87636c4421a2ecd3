"""Tests for star/tasks/cqa.py: the verifier (a table of cases and the labelled holdout set),
the question format and its hint, the few-shot files, and the protocol methods. Loading
and data errors live in tests/test_task_data.py."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import pytest

from star.tasks import build_task
from star.tasks.base import Example, Task
from star.tasks.cqa import STOP, CqaTask, choice_of, extract_answer, parse_exemplars, row_example

DATA = Path(__file__).parent / "data"
LABELS = DATA / "verifier_labels" / "cqa.jsonl"

# Measured once on the holdout half after the verifier was final (benchmarks/verifier_rates.md);
# the verifier must not get worse than this.
HOLDOUT_MAX_FALSE_NEGATIVE_RATE = 1 / 33
HOLDOUT_MAX_FALSE_POSITIVE_RATE = 0 / 27


def files(split_dir: str = "cqa") -> dict:
    return {split: str(DATA / split_dir / f"{split}.jsonl") for split in ("train", "dev", "test")}


def make(train: int = 100, dev: int = 100, **kw) -> CqaTask:
    return CqaTask(train_size=train, dev_size=dev, data_files=files(), **kw)


# Choices with overlaps on purpose: "sink" inside "kitchen sink", an article inside "a cupboard",
# an apostrophe in "farmer's table". Gold is C.
LABELS_AE = ["A", "B", "C", "D", "E"]
TEXTS = ["sink", "kitchen sink", "dishwasher", "a cupboard", "farmer's table"]
EX = Example(id="t", question="Where do dirty dishes go to be washed after dinner?", answer="C",
             meta={"labels": LABELS_AE, "texts": TEXTS, "concept": "dishes"})

VERDICTS = [
    # the paper's answer line, and the letter or the text alone
    (" Dishes get washed in a dishwasher. Therefore, the answer is dishwasher (C).\n\n", "C"),
    (" Therefore, the answer is (C).\n\n", "C"),
    (" Therefore, the answer is C.\n\n", "C"),
    (" the answer is c", "C"),
    (" Therefore, the answer is dishwasher.\n\n", "C"),
    (" Answer: C\n\n", "C"),
    (" The correct answer is option C.\n\n", "C"),
    (" The answer is C) dishwasher.\n\n", "C"),
    (" The answer is (C) dishwasher.\n\n", "C"),
    (" The best choice is dishwasher (C), because it cleans dishes.\n\n", "C"),
    # case, punctuation, articles, quotes, inflection
    (" THE ANSWER IS DISHWASHER!\n\n", "C"),
    (" Therefore, the answer is the dishwasher.\n\n", "C"),
    (" Therefore, the answer is dishwashers.\n\n", "C"),
    (" Therefore, the answer is \"dishwasher\".\n\n", "C"),
    (" Therefore, the answer is dishwasher (c).\n\n", "C"),
    (" Therefore, the answer is a cupboard (D).\n\n", "D"),
    (" Therefore, the answer is cupboard.\n\n", "D"),
    (" Therefore, the answer is farmers table (E).\n\n", "E"),
    (" Therefore, the answer is farmer\u2019s table.\n\n", "E"),
    # the letter "a" against the article "a"
    (" The answer is a.\n\n", "A"),
    (" The answer is a dishwasher.\n\n", "C"),
    # one choice's text inside another's
    (" Therefore, the answer is sink.\n\n", "A"),
    (" Therefore, the answer is kitchen sink (B).\n\n", "B"),
    (" Therefore, the answer is kitchen.\n\n", "B"),
    # letter and text disagree: ambiguous
    (" Therefore, the answer is kitchen sink (A).\n\n", None),
    (" Therefore, the answer is dishwasher (A).\n\n", None),
    # two answers
    (" Therefore, the answer is dishwasher (C) or sink (A).\n\n", None),
    (" Therefore, the answer is (C) or (A).\n\n", None),
    (" The answer is C or A.\n\n", None),
    (" The answer is A, C.\n\n", None),
    (" Therefore, the answer is dishwasher or sink.\n\n", None),
    (" The answer is sink (A). The answer is dishwasher (C).\n\n", None),
    # a letter that is no choice, no answer, a cut-off answer
    (" Therefore, the answer is dishwasher (F).\n\n", None),
    (" A dishwasher washes dishes. Therefore, the answer is", None),
    ("", None),
    (" A dishwasher washes dishes.\n\n", None),
    (" The answer is something that washes dishes.\n\n", None),
    (" Therefore, the answer is (C", "C"),
    # letters in the rationale, negated and repeated statements
    (" Not the sink (A), it only holds dishes. Therefore, the answer is dishwasher (C).\n\n", "C"),
    (" The answer is not sink (A). Therefore, the answer is dishwasher (C).\n\n", "C"),
    (" The answer is something that washes dishes. Therefore, the answer is dishwasher (C).\n\n", "C"),
    (" The answer is dishwasher (C).\nTherefore, the answer is dishwasher (C).\n\n", "C"),
    (" Therefore, the answer is dishwasher (C) (CORRECT).\n\n", "C"),
    # only this question's answer counts: not past the stop, not a new exemplar
    (" Therefore, the answer is dishwasher (C).\n\nTherefore, the answer is sink (A).", "C"),
    (" Therefore, the answer is dishwasher (C).\nQ: Where do cups go?\nAnswer Choices:\n(A) cupboard\n"
     "A: Therefore, the answer is cupboard (A).\n\n", "C"),
]


@pytest.mark.parametrize("completion,expected", VERDICTS)
def test_verifier_table(completion, expected):
    assert choice_of(completion, LABELS_AE, TEXTS) == expected
    assert make().is_correct(EX, completion) is (expected == "C")


def test_verifier_table_is_big_and_nasty():
    assert len(VERDICTS) >= 30
    assert sum(v is None for _, v in VERDICTS) >= 10 and sum(v == "C" for _, v in VERDICTS) >= 10


def test_extract_answer_is_the_last_statement_as_written():
    assert extract_answer(" X. Therefore, the answer is dishwasher (C).\n\n") == "dishwasher (C)"
    assert extract_answer(" The answer is not sink. The answer is C.\n\n") == "C"
    assert extract_answer(" No statement here.\n\n") is None
    assert extract_answer(" Therefore, the answer is") is None


# ----------------------------------------------------------------------------- labelled set

def load_labels() -> list[dict]:
    return [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines() if line.strip()]


def rates(rows: list[dict]) -> tuple[float, float, int, int]:
    """(false-negative rate, false-positive rate, positives, negatives) of the verifier on rows."""
    task = make()
    pos = [r for r in rows if r["label"]]
    neg = [r for r in rows if not r["label"]]
    fn = sum(not task.is_correct(row_example(r["example"]), r["completion"]) for r in pos)
    fp = sum(task.is_correct(row_example(r["example"]), r["completion"]) for r in neg)
    return fn / len(pos), fp / len(neg), len(pos), len(neg)


def test_labelled_set_shape():
    rows = load_labels()
    assert len(rows) >= 100
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["split"] for r in rows} == {"dev", "holdout"}
    for r in rows:
        assert set(r) == {"id", "example", "completion", "label", "split"}
        assert isinstance(r["label"], bool)
        row_example(r["example"])  # the example is a valid hub row


def test_holdout_rates_stay_at_or_below_the_reported_ones():
    fnr, fpr, _, _ = rates([r for r in load_labels() if r["split"] == "holdout"])
    assert fnr <= HOLDOUT_MAX_FALSE_NEGATIVE_RATE, f"false-negative rate {fnr:.3f}"
    assert fpr <= HOLDOUT_MAX_FALSE_POSITIVE_RATE, f"false-positive rate {fpr:.3f}"


# ----------------------------------------------------------------------------- task

def test_registry_builds_task_and_protocol():
    cfg = SimpleNamespace(name="cqa", train_size=5, dev_size=3, test_size=4, data_files=SimpleNamespace(**files()),
                          hub_id=None, hub_config=None)
    task = build_task(cfg, seed=0)
    assert isinstance(task, CqaTask) and isinstance(task, Task)
    assert task.stop == ("\n\n",) and task.name == "cqa"
    assert [len(task.load(split)) for split in ("train", "dev", "test")] == [5, 3, 4]
    assert task.splits == ("train", "dev", "test") and task.load("test")[0].id == "cqa-test-000"
    assert task.source.hub_id == "tau/commonsense_qa"


def test_format_question_and_hint():
    task = make()
    ex = task.load("train")[0]
    plain = task.format_question(ex)
    assert plain.startswith(f"Q: {ex.question}\nAnswer Choices:\n(A) ") and plain.endswith("\nA:")
    assert "(CORRECT)" not in plain
    hinted = task.format_question(ex, hint=True)
    assert hinted.count(task.hint_text(ex)) == 1
    gold_line = [line for line in hinted.split("\n") if "(CORRECT)" in line]
    assert gold_line == [f"({ex.answer}) {ex.meta['texts'][ex.meta['labels'].index(ex.answer)]} (CORRECT)"]
    # The hint is exactly the inserted substring: removing it gives the hint-free prompt.
    assert hinted.replace(task.hint_text(ex), "") == plain


def test_protocol_extras():
    task = make()
    ex = task.load("dev")[0]
    assert task.class_of(ex) == "all"
    assert task.gold_rationale(ex) is None and task.is_faithful(ex, " anything") is None
    gold_text = ex.meta["texts"][ex.meta["labels"].index(ex.answer)]
    assert task.is_correct(ex, f" Because. Therefore, the answer is {gold_text} ({ex.answer}).\n\n")
    assert not task.is_correct(ex, "")  # what the loop passes for a missing gold rationale


def exemplar_blocks(text: str) -> list[str]:
    return [b for b in text.split(STOP) if b.strip()]


@pytest.mark.parametrize("direct", [False, True])
def test_fewshot_prompt(direct):
    task = make()
    prompt = task.fewshot_prompt(direct=direct)
    assert prompt.endswith(STOP) and not prompt.startswith("\n")
    pairs = parse_exemplars(prompt)
    assert 7 <= len(pairs) <= 10
    assert len({ex.answer for ex, _ in pairs}) >= 4  # gold letters spread over the choices
    for ex, completion in pairs:
        gold_text = ex.meta["texts"][ex.meta["labels"].index(ex.answer)]
        answer_line = f"answer is {gold_text} ({ex.answer})."
        assert completion.rstrip("\n").endswith(("Therefore, the " if not direct else " The ") + answer_line)
        assert "\n" not in completion.rstrip("\n")  # one line: the stop is the only blank line
        assert task.is_correct(ex, completion)
    # The prefix is built with format_question, so a real question reads exactly like an exemplar.
    for (ex, completion), block in zip(pairs, exemplar_blocks(prompt)):
        assert block == task.format_question(ex) + completion.rstrip("\n")


def test_fewshot_default_is_the_rationale_prompt_and_direct_has_the_same_questions():
    task = make()
    assert task.fewshot_prompt() == task.fewshot_prompt(direct=False)
    full, direct = parse_exemplars(task.fewshot_prompt()), parse_exemplars(task.fewshot_prompt(direct=True))
    assert [(e.question, e.meta["texts"], e.answer) for e, _ in full] == \
           [(e.question, e.meta["texts"], e.answer) for e, _ in direct]
    assert all(c.startswith(" The answer is ") for _, c in direct)


def test_fewshot_questions_are_not_from_the_data():
    prompt = resources.files("star.tasks").joinpath("prompts", "cqa.txt").read_text(encoding="utf-8")
    data = [json.loads(line)["question"] for split in ("train", "dev", "test")
            for line in (DATA / "cqa" / f"{split}.jsonl").read_text().splitlines()]
    assert not any(q in prompt for q in data)


@pytest.mark.parametrize("text,needle", [
    ("", "no exemplars"),
    ("Q: What?\nA: Therefore, the answer is x (A).\n", "is not 'Q: ..."),
    ("Q: What?\nAnswer Choices:\n(A) one\n(B) two\nA: I do not know.\n", "names no single choice"),
])
def test_bad_fewshot_files_fail_loudly(tmp_path, text, needle):
    (tmp_path / "cqa.txt").write_text(text)
    task = CqaTask(train_size=1, dev_size=1, data_files=files(), prompt_dir=tmp_path)
    with pytest.raises(ValueError, match=re.escape(needle)):
        task.fewshot_prompt()
