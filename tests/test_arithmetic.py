"""Tests for star/tasks/arithmetic.py: data generation, answer extraction, the step
checker, hints and the few-shot file."""

from __future__ import annotations

import random
from collections import Counter
from importlib import resources
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from star.tasks import build_task
from star.tasks.arithmetic import (
    ArithmeticConfig,
    ArithmeticTask,
    extract_answer,
    faithfulness_error,
    parse_exemplars,
    scratchpad,
    scratchpad_for,
)
from star.tasks.base import Example, Task


def make(digits=(1, 2, 3), train=300, dev=60, seed=0, test=60, **kw):
    return ArithmeticTask(digits=list(digits), train_size=train, dev_size=dev, test_size=test, seed=seed, **kw)


def ex(a, b):
    return Example(id="t", question=f"{a} + {b}", answer=str(a + b),
                   meta={"a": a, "b": b, "digits": len(str(a))})


def pairs(examples):
    return [(e.meta["a"], e.meta["b"]) for e in examples]


def problems(examples):
    """The examples' problems as unordered pairs (a + b and b + a are one problem)."""
    return [tuple(sorted(p)) for p in pairs(examples)]


SPLITS = ("train", "dev", "test")


# ----------------------------------------------------------------------------- data

def test_registry_builds_task_and_protocol():
    cfg = SimpleNamespace(name="arithmetic", digits=[1, 2], train_size=10, dev_size=4, test_size=5)
    task = build_task(cfg, seed=3)
    assert isinstance(task, ArithmeticTask) and isinstance(task, Task)
    assert (task.digits, task.train_size, task.dev_size, task.test_size, task.seed) == ([1, 2], 10, 4, 5, 3)
    assert task.splits == SPLITS
    assert task.stop == ("\n\n",)


@pytest.mark.parametrize("split", SPLITS)
def test_same_seed_same_data(split):
    assert make(seed=7).load(split) == make(seed=7).load(split)
    assert pairs(make(seed=7).load(split)) == pairs(make(seed=7).load(split))


@pytest.mark.parametrize("split", SPLITS)
def test_different_seed_different_data(split):
    assert pairs(make(seed=0).load(split)) != pairs(make(seed=1).load(split))


@pytest.mark.parametrize("digits,train,dev", [
    ([1, 2, 3], 300, 60),
    ([5], 50, 7),
    ([2, 4], 11, 5),
    ([1, 2, 3, 4, 5], 1000, 100),  # the default config: the 1-digit pool is shared out by the caps
])
def test_sizes_ids_and_digit_counts(digits, train, dev):
    task = make(digits, train, dev, test=dev)
    for split, size in [("train", train), ("dev", dev), ("test", dev)]:
        exs = task.load(split)
        assert len(exs) == size
        assert [e.id for e in exs] == [f"{split}-{i:06d}" for i in range(size)]
        for e in exs:
            a, b, d = e.meta["a"], e.meta["b"], e.meta["digits"]
            assert d in digits
            assert len(str(a)) == d and len(str(b)) == d  # no leading zero, same length
            assert e.question == f"{a} + {b}" and e.answer == str(a + b)
            assert task.class_of(e) == str(d)


def test_dev_round_robin_balanced():
    task = make([1, 2, 3, 4, 5], 100, 50)
    dev = task.load("dev")
    assert [e.meta["digits"] for e in dev[:10]] == [1, 2, 3, 4, 5] * 2
    assert Counter(e.meta["digits"] for e in dev) == {d: 10 for d in range(1, 6)}


def test_dev_and_test_hold_at_most_a_third_of_a_small_pool():
    # 53 one-digit problems (55 less the exemplars 3 + 4 and 8 + 6): dev and test 17 each (a third),
    # train the 19 left; the rest of each split is spread round-robin over the other digit counts.
    task = make([1, 2, 3, 4, 5], 1000, 100, test=100)
    assert Counter(e.meta["digits"] for e in task.load("train")) == {1: 19, 2: 246, 3: 245, 4: 245, 5: 245}
    for split in ("dev", "test"):
        assert Counter(e.meta["digits"] for e in task.load(split)) == {1: 17, 2: 21, 3: 21, 4: 21, 5: 20}


@pytest.mark.parametrize("digits,train,dev,test", [([1, 2, 3], 300, 60, 60), ([1], 30, 12, 11), ([1, 2], 400, 100, 50)])
def test_splits_disjoint_and_unique_as_unordered_problems(digits, train, dev, test):
    task = make(digits, train, dev, test=test)
    drawn = {split: problems(task.load(split)) for split in SPLITS}
    for split, probs in drawn.items():
        assert len(set(probs)) == len(probs), split
    assert not set(drawn["train"]) & set(drawn["dev"])
    assert not set(drawn["train"]) & set(drawn["test"])
    assert not set(drawn["dev"]) & set(drawn["test"])


def test_one_digit_pool_exhausted_exactly():
    task = make([1], 30, 12, test=11)
    drawn = {p for split in SPLITS for p in problems(task.load(split))}
    every = {(a, b) for a in range(10) for b in range(a, 10)}
    assert len(every) == 55 and drawn == every - {(3, 4), (6, 8)}  # all but the exemplars'


def test_orientation_is_drawn_from_the_seed():
    shown = pairs(make([2], 200, 10, test=10).load("train"))
    assert any(a < b for a, b in shown) and any(a > b for a, b in shown)


def test_large_pools_rejection_sampling_never_repeats():
    # 3+ digit pools are rejection-sampled; 5000 draws from 405,450 problems would almost
    # surely repeat one (p ~ 1 - e^-30) if duplicates were not rejected.
    from itertools import islice
    from star.tasks.arithmetic import pair_stream
    drawn = list(islice(pair_stream(3, random.Random("dup"), exclude={(508, 293)}), 5000))
    assert len({tuple(sorted(p)) for p in drawn}) == 5000
    assert all(100 <= a <= 999 and 100 <= b <= 999 for a, b in drawn)
    assert (293, 508) not in drawn and (508, 293) not in drawn


def test_sizes_too_large_raise_with_the_sizes_that_fit():
    # 53 one-digit problems for 71 questions: dev and test fit (a third each), train gets the 23 left.
    with pytest.raises(ValueError) as e:
        make([1], 41, 15, test=15).load("train")
    assert str(e.value).startswith("task.train_size=41 cannot be met without reusing a problem: with digits [1] "
                                   "there are 53 problems")
    assert "train at most 23, dev at most 17, test at most 17" in str(e.value)
    assert str(e.value).endswith("lower task.train_size/dev_size/test_size or add digit counts to task.digits")
    # Every split is checked whichever is loaded first.
    with pytest.raises(ValueError, match="task.dev_size=101 and task.test_size=20 cannot be met"):
        make([1], 1, 101, test=20).load("train")


def test_dev_and_test_do_not_depend_on_train_size_and_digit_streams_are_independent():
    # Dev and test draw first, with caps that do not depend on train_size: it moves neither.
    for digits in ([2, 3], [1, 2]):
        for split in ("dev", "test"):
            assert make(digits, train=10).load(split) == make(digits, train=500).load(split)
    # The 2-digit problems come from their own stream: same ones with or without 3.
    two_a = [p for p, e in zip(pairs(make([1, 2], 0, 40).load("dev")), make([1, 2], 0, 40).load("dev"))
             if e.meta["digits"] == 2]
    two_b = [p for p, e in zip(pairs(make([2, 3], 0, 40).load("dev")), make([2, 3], 0, 40).load("dev"))
             if e.meta["digits"] == 2]
    # The mixes differ ([1, 2] has only 17 one-digit problems to give), so one list is longer: same order.
    n = min(len(two_a), len(two_b))
    assert n >= 20 and two_a[:n] == two_b[:n]


def test_load_is_cached_and_returns_copies():
    task = make()
    first = task.load("train")
    first.clear()
    assert len(task.load("train")) == 300
    assert task.load("dev")[0] is task.load("dev")[0]  # same cached objects


@pytest.mark.parametrize("split", ["validation", "", "TRAIN"])
def test_unsupported_split_raises(split):
    with pytest.raises(ValueError, match="valid splits: train, dev, test"):
        make().load(split)


@pytest.mark.parametrize("digits", [[], [0], [1, -2]])
def test_bad_digits_raise(digits):
    with pytest.raises(ValueError, match="digits"):
        ArithmeticTask(digits=digits, train_size=1, dev_size=1, seed=0)


@pytest.mark.parametrize("overrides,problems", [
    ({}, []),
    ({"digits": [3]}, []),
    ({"digits": [0]}, ["task.digits must list digit counts >= 1, e.g. task.digits=[1,2,3]; got [0]"]),
    ({"digits": []}, ["task.digits must list digit counts >= 1, e.g. task.digits=[1,2,3]; got []"]),
    ({"digits": [1, -2]}, ["task.digits must list digit counts >= 1, e.g. task.digits=[1,2,3]; got [1, -2]"]),
    ({"digits": [0], "dev_size": 0},  # the common checks come first
     ["task.dev_size must be > 0, got 0",
      "task.digits must list digit counts >= 1, e.g. task.digits=[1,2,3]; got [0]"]),
])
def test_config_range_checks(overrides, problems):
    cfg = OmegaConf.merge(OmegaConf.structured(ArithmeticConfig), {"name": "arithmetic", **overrides})
    assert OmegaConf.to_object(cfg).problems() == problems
    assert ArithmeticTask.config_class is ArithmeticConfig


# ----------------------------------------------------------------------------- answers

EXTRACT_CASES = [
    (" 7+5+0=12\n4+8+1=13\nThe answer is 132.\n\n", "132"),
    ("The answer is 132.", "132"),
    ("The answer is 132", "132"),                       # no period
    ("  The answer is 132 .  \n\n", "132"),              # whitespace around
    ("the answer is 132.", "132"),                       # case-insensitive
    ("The answer is   132.", "132"),
    ("The answer is 0132.", "132"),                      # leading zero: integer compare
    ("The answer is 0.", "0"),
    ("The answer is -5.", "-5"),                         # negative: parsed (and wrong)
    ("The answer is 7.\n\nThe answer is 8.", "7"),        # second one is after the stop
    ("The answer is 7.\nThe answer is 7.", "7"),          # agreeing duplicates
    ("step\nThe answer is 41.\n\nQ: 1 + 1\nA: junk", "41"),
    ("", None),                                          # empty
    ("7+5+0=12\n4+8+1=13", None),                         # no answer line
    ("\n\nThe answer is 132.", None),                     # answer only after the stop
    ("The answer is 1,234.", None),                       # commas rejected
    ("The answer is twelve.", None),                      # non-numeric
    ("The answer is 13 2.", None),
    ("The answer is 132!", None),
    ("The answer is 12.5.", None),
    ("The answer is .", None),
    ("The answer is 7.\nThe answer is 8.", None),         # two different answers
    ("The answer is 7.\nThe answer is x.", None),         # one readable, one malformed
    ("so the total is 132.", None),                       # not an answer line
    ("Therefore the answer is 132.", None),               # answer must start the line
    ("%$#@!\x00 garbage", None),
]


@pytest.mark.parametrize("completion,expected", EXTRACT_CASES)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected
    assert make().extract_answer(completion) == expected


@pytest.mark.parametrize("completion,correct", [
    ("The answer is 132.", True),
    ("The answer is 0132.", True),
    ("The answer is 131.", False),
    ("The answer is -132.", False),
    ("The answer is 1,32.", False),
    ("", False),
    ("\n\nThe answer is 132.", False),
])
def test_is_correct(completion, correct):
    assert make().is_correct(ex(47, 85), completion) is correct


# ----------------------------------------------------------------------------- scratchpad

def test_scratchpad_exact_format():
    assert scratchpad(ex(47, 85)) == (
        " 7+5+0=12\n"
        "4+8+1=13\n"
        "The answer is 132.\n\n")
    assert scratchpad(ex(3, 4)) == " 3+4+0=7\nThe answer is 7.\n\n"
    assert scratchpad(ex(8, 6)) == " 8+6+0=14\nThe answer is 14.\n\n"
    assert scratchpad(ex(508, 293)) == " 8+3+0=11\n0+9+1=10\n5+2+1=8\nThe answer is 801.\n\n"
    # Unequal lengths are padded with 0 (not generated, but the checker supports them).
    assert scratchpad_for(5, 98) == " 5+8+0=13\n0+9+1=10\nThe answer is 103.\n\n"
    assert scratchpad_for(999, 1) == " 9+1+0=10\n9+0+1=10\n9+0+1=10\nThe answer is 1000.\n\n"


@pytest.mark.parametrize("a,b", [(9, 9), (99, 99), (999, 999), (99999, 99999), (12345, 0)])
def test_scratchpad_is_terse(a, b):
    # One short line per column, then the answer line, nothing else (no final-carry line):
    # the SmolLM2 tokenizer gives one token per digit and operator, so the format's
    # generation and training cost is about 8 tokens per column plus the answer line.
    s = scratchpad_for(a, b)
    body = s.strip().split("\n")
    n_columns = len(str(max(a, b)))
    assert len(body) == n_columns + 1 and body[-1] == f"The answer is {a + b}."
    assert all(len(line) <= 8 for line in body[:-1])


def test_scratchpad_always_faithful_and_correct():
    task = make([1, 2, 3, 4, 5], 400, 100, seed=11)
    exs = task.load("train") + task.load("dev")
    rng = random.Random("unequal")
    exs += [ex(rng.randrange(10 ** rng.randrange(1, 7)), rng.randrange(10 ** rng.randrange(1, 7)))
            for _ in range(200)]
    exs += [ex(0, 0), ex(9, 9), ex(99999, 99999), ex(10000, 90000)]
    for e in exs:
        s = scratchpad(e)
        assert s.endswith("\n\n") and s.count("\n\n") == 1
        assert task.is_faithful(e, s), (e, s)
        assert task.is_correct(e, s)
        assert extract_answer(s) == e.answer


def test_faithful_without_meta_parses_question():
    task = make()
    e = Example(id="x", question="47 + 85", answer="132")
    assert task.is_faithful(e, scratchpad(e))
    assert task.class_of(e) == "2"


def test_faithful_tolerates_spacing_and_missing_stop():
    e = ex(47, 85)
    spaced = " 7 + 5 + 0 = 12\n  4+8+1=13.\nThe answer is 132"
    assert make().is_faithful(e, spaced)
    assert make().is_faithful(e, scratchpad(e) + "Q: 1 + 1\nA: whatever")  # after the stop


GOOD = scratchpad_for(47, 85)
#  " 7+5+0=12\n4+8+1=13\nThe answer is 132.\n\n"

# (name, completion, expected error fragment, is_correct)
CORRUPTED = [
    ("wrong sum", GOOD.replace("7+5+0=12", "7+5+0=11"), "sum 11", True),
    ("wrong sum last column", GOOD.replace("4+8+1=13", "4+8+1=12"), "sum 12", True),
    ("sum one digit short", GOOD.replace("7+5+0=12", "7+5+0=2"), "sum 2", True),
    ("wrong carry in", GOOD.replace("4+8+1=13", "4+8+0=12"), "carry in 0", True),
    ("carry in where none", scratchpad_for(23, 51).replace("2+5+0=7", "2+5+1=8"), "carry in 1", True),
    ("wrong operand digit", GOOD.replace("4+8+1=13", "3+9+1=13"), "digits 3,9", True),
    ("operands swapped", GOOD.replace("7+5+0=12", "5+7+0=12"), "digits 5,7", True),
    ("columns swapped order", " 4+8+0=12\n7+5+1=13\nThe answer is 132.\n\n", "digits 4,8", True),
    ("carry not written as a term", GOOD.replace("4+8+1=13", "4+8=13"), "not a column step", True),
    ("missing step", " 7+5+0=12\nThe answer is 132.\n\n", "not a column step", True),
    ("missing answer line", GOOD.replace("The answer is 132.\n", ""), "missing answer line", False),
    ("wrong final answer", GOOD.replace("132", "133"), "answer 133 is not the written", False),
    ("final carry dropped", GOOD.replace("132", "32"), "answer 32 is not the written", False),
    ("digits reversed", GOOD.replace("132", "231"), "answer 231 is not the written", False),
    ("extra step after answer", GOOD.replace("132.\n\n", "132.\n1+1+0=2\n\n"), "extra text", True),
    ("extra column", GOOD.replace("The answer", "0+0+1=1\nThe answer"), "not the answer line", True),
    ("old verbose format", " 7+5+0=12, write 2, carry 1.\n4+8+1=13, write 3, carry 1.\n"
     "Final carry 1, write 1.\nThe answer is 132.\n\n", "not a column step", True),
    ("garbage line", GOOD.replace("4+8+1=13", "four plus eight"), "not a column step", True),
    ("two-digit operand", GOOD.replace("4+8+1=13", "4+18+1=23"), "not a column step", True),
    ("empty", "", "not a column step", False),
    ("cut mid-line", GOOD[:6], "not a column step", False),
    ("cut after a step", GOOD.split("\n")[0], "missing step for column 2", False),
    ("answer only", "The answer is 132.\n\n", "not a column step", True),
]


@pytest.mark.parametrize("name,completion,error,correct", CORRUPTED, ids=[c[0] for c in CORRUPTED])
def test_corrupted_scratchpads_not_faithful(name, completion, error, correct):
    a, b = (23, 51) if name == "carry in where none" else (47, 85)
    e = ex(a, b)
    task = make()
    assert completion != scratchpad(e)
    assert not task.is_faithful(e, completion)
    err = faithfulness_error(a, b, completion)
    assert err is not None and error in err, err
    assert task.is_correct(e, completion) is correct


def test_right_answer_wrong_step_is_correct_but_not_faithful():
    e = ex(508, 293)
    # Two compensating errors: a carry dropped into the hundreds, a sum one too big there.
    bad = scratchpad(e).replace("5+2+1=8", "5+2+0=8")
    assert bad != scratchpad(e)
    task = make()
    assert task.is_correct(e, bad) and not task.is_faithful(e, bad)


# ----------------------------------------------------------------------------- prompts

def test_hint():
    task = make()
    e = ex(47, 85)
    assert task.hint_text(e) == " (hint: the answer is 132)"
    assert task.format_question(e) == "Q: 47 + 85\nA:"
    assert task.format_question(e, hint=True) == "Q: 47 + 85 (hint: the answer is 132)\nA:"
    assert task.hint_text(e) in task.format_question(e, hint=True)
    assert task.hint_text(e) not in task.format_question(e)
    # Stripping the hint gives back the plain question exactly.
    assert task.format_question(e, hint=True).replace(task.hint_text(e), "") == task.format_question(e)


def test_fewshot_file_exemplars_all_faithful():
    text = (resources.files("star.tasks") / "prompts" / "arithmetic.txt").read_text(encoding="utf-8")
    exemplars = parse_exemplars(text)
    assert len(exemplars) == 8
    task = make()
    seen_digits, final_carry, carries = set(), 0, 0
    for q, completion in exemplars:
        a, b = (int(x) for x in q.split(" + "))
        e = ex(a, b)
        assert task.is_faithful(e, completion), q
        assert task.is_correct(e, completion), q
        assert int(extract_answer(completion)) == a + b  # independent of the checker
        seen_digits.add(len(str(a)))
        final_carry += len(extract_answer(completion)) > max(len(str(a)), len(str(b)))
        carries += "+1=" in completion
    assert seen_digits == {1, 2, 3, 4, 5}
    assert final_carry >= 2  # several answers longer than their operands
    assert carries >= 3  # several with a carry into a column


def test_fewshot_prompt_is_well_formed_prefix():
    task = make()
    prefix = task.fewshot_prompt()
    assert prefix.startswith("Q: ") and prefix.endswith("\n\n") and not prefix.endswith("\n\n\n")
    e = task.load("dev")[0]
    full = prefix + task.format_question(e) + scratchpad(e)
    # The whole thing parses back as the exemplars plus this one.
    parsed = parse_exemplars(full)
    assert len(parsed) == 9 and parsed[-1] == (e.question, scratchpad(e))
    assert task.fewshot_prompt() is prefix  # cached


def test_fewshot_empty_or_wrong_file_raises(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(ValueError, match="no exemplars"):
        make(prompt_path=empty).fewshot_prompt()
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("Q: 2 + 2\nA: 2+2+0=5\nThe answer is 5.\n\n")
    with pytest.raises(ValueError, match="wrong"):
        make(prompt_path=wrong).fewshot_prompt()
    malformed = tmp_path / "malformed.txt"
    malformed.write_text("2 + 2 is 4\n\n")
    with pytest.raises(ValueError, match="not 'Q:"):
        make(prompt_path=malformed).fewshot_prompt()
