"""task=reasoning_gym (any reasoning_gym dataset as a star task) and task.source=gsm_symbolic (gsm8k offline)."""

from __future__ import annotations

import json

import pytest

from star.config import ConfigError, validate
from star.preflight import check_task_data
from star.tasks import build_task
from star.tasks.base import Example
from star.tasks.gsm8k import Gsm8kTask, gsm_symbolic_example
from star.tasks.gsm8k import answer_value as gsm8k_answer_value
from star.tasks.reasoning_gym import N_EXEMPLARS, STOP, ReasoningGymTask, extract_answer
from tests.conftest import compose_config, run_star

SMALL = dict(train_size=40, dev_size=20, test_size=20)
# A small pool (about 120 distinct "a + b" questions), so duplicates across and within streams occur.
TINY_POOL = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=["+"],
                 allow_negation=False, allow_parentheses=False)


@pytest.fixture(scope="module")
def task():
    return ReasoningGymTask("basic_arithmetic", seed=0, **SMALL)


def questions(examples):
    return [e.question for e in examples]


# ----------------------------------------------------------------------------- formatting

def test_format_question_hint_and_direct_completion(task):
    ex = Example(id="x", question="Calculate 5 - 3 - 6.", answer="-4")
    assert task.format_question(ex) == "Q: Calculate 5 - 3 - 6.\nA:"
    assert task.hint_text(ex) == " (hint: the answer is -4)"
    assert task.format_question(ex, hint=True) == "Q: Calculate 5 - 3 - 6. (hint: the answer is -4)\nA:"
    assert task.direct_completion(ex) == " The answer is -4.\n\n"


def test_fewshot_prompt_is_exemplars_joined_by_the_stop(task):
    plain = task.fewshot_prompt()
    assert plain.endswith(STOP) and plain.startswith("Q: ")
    blocks = plain.split(STOP)[:-1]
    assert len(blocks) == N_EXEMPLARS
    for block in blocks:
        q, a = block.split("\nA:")
        assert q.startswith("Q: ") and "(hint:" not in q
        assert a.startswith(" The answer is ") and a.endswith(".")
    # basic_arithmetic has no rationale: the CoT prompt is the direct one, and gold_rationale is None.
    assert task.fewshot_prompt(direct=True) == plain
    assert task.gold_rationale(task.load("train")[0]) is None
    assert task.fewshot_prompt(hint=True).count(" (hint: the answer is ") == N_EXEMPLARS


def test_question_blank_lines_are_collapsed():
    # leg_counting's questions hold a blank line; the prompt's blank line must stay the exemplar separator.
    t = ReasoningGymTask("leg_counting", seed=0, **SMALL)
    assert all("\n\n" not in e.question for e in t.load("train"))
    assert t.fewshot_prompt().count(STOP) == N_EXEMPLARS


def test_dataset_with_a_rationale_uses_it():
    t = ReasoningGymTask("gsm_symbolic", seed=0, train_size=10, dev_size=5)
    ex = t.load("train")[0]
    rationale = t.gold_rationale(ex)
    assert rationale is not None and rationale.startswith(" ") and rationale.endswith(f"The answer is {ex.answer}.{STOP}")
    assert "####" not in rationale and rationale.count("\n") >= 3
    assert t.is_correct(ex, rationale)
    cot, direct = t.fewshot_prompt(), t.fewshot_prompt(direct=True)
    assert cot != direct and cot.count(STOP) == direct.count(STOP) == N_EXEMPLARS
    assert t.class_of(ex) == "1.0"  # gsm_symbolic's scalar difficulty


def test_multiline_answers_read_whole():
    t = ReasoningGymTask("rotate_matrix", seed=0, train_size=5, dev_size=5)
    ex = t.load("dev")[0]
    assert "\n" in ex.answer
    assert t.is_correct(ex, t.direct_completion(ex))
    assert t.fewshot_prompt().count(STOP) == N_EXEMPLARS


# ----------------------------------------------------------------------------- splits

def test_deterministic_from_the_seed(task):
    again = ReasoningGymTask("basic_arithmetic", seed=0, **SMALL)
    assert all(task.load(split) == again.load(split) for split in ("train", "dev", "test"))
    assert task.fewshot_prompt() == again.fewshot_prompt()
    other = ReasoningGymTask("basic_arithmetic", seed=1, **SMALL)
    assert questions(other.load("train")) != questions(task.load("train"))
    assert [len(task.load(split)) for split in ("train", "dev", "test")] == [40, 20, 20]
    assert task.load("train")[0].id == "train-000000" and task.load("dev")[-1].id == "dev-000019"
    assert task.load("test")[0].id == "test-000000" and task.splits == ("train", "dev", "test")


def test_train_size_does_not_change_the_prompt_dev_test_or_the_first_train_questions(task):
    bigger = ReasoningGymTask("basic_arithmetic", seed=0, train_size=60, dev_size=20, test_size=20)
    assert bigger.fewshot_prompt() == task.fewshot_prompt()
    assert bigger.load("dev") == task.load("dev") and bigger.load("test") == task.load("test")
    assert questions(bigger.load("train"))[:40] == questions(task.load("train"))


def test_splits_and_exemplars_are_disjoint_even_from_a_small_pool():
    t = ReasoningGymTask("basic_arithmetic", seed=0, train_size=50, dev_size=30, test_size=20,
                         dataset_kwargs=TINY_POOL)
    train, dev, test = (set(questions(t.load(split))) for split in ("train", "dev", "test"))
    fewshot = {block.split("\nA:")[0][3:] for block in t.fewshot_prompt().split(STOP)[:-1]}
    assert (len(train), len(dev), len(test), len(fewshot)) == (50, 30, 20, N_EXEMPLARS)  # unique within each
    assert not train & dev and not train & test and not dev & test and not fewshot & (train | dev | test)


def test_too_few_distinct_questions_names_the_key():
    t = ReasoningGymTask("basic_arithmetic", seed=0, train_size=500, dev_size=10, test_size=10,
                         dataset_kwargs=TINY_POOL)
    with pytest.raises(ValueError, match="task.train_size"):
        t.load("train")


# ----------------------------------------------------------------------------- the verifier

EXTRACT_CASES = [
    (" The answer is -4.\n\n", "-4"),
    (" The answer is -4", "-4"),                                   # cut off before the period
    (" the answer is: -4.", "-4"),                                 # case, a colon
    (" 5 - 3 = 2\n2 - 6 = -4\nThe answer is -4.\n\n", "-4"),       # a rationale before it
    (" The answer is 3.\nNo wait. The answer is -4.", "-4"),       # the last one counts
    (" The answer is -4.\n\nQ: Calculate 1 + 1.\nA: The answer is 2.", "-4"),  # after the stop: ignored
    (" The answer is -4.\nQ: Calculate 1 + 1.\nA: The answer is 2.", "-4"),    # a new exemplar: ignored
    (" The answer is 1 2\n3 4.", "1 2\n3 4"),                      # a multi-line answer
    (" The answer is 3.5.", "3.5"),                                # only one trailing period goes
    (" The answer is -4. Because 5 - 3 - 6 = -4.", "-4. Because 5 - 3 - 6 = -4"),  # text after it is kept
    (" I think it is -4.\n\n", None),                              # no answer line
    (" The answer is.", None),                                     # an empty answer
    ("", None),
]


@pytest.mark.parametrize("completion,expected", EXTRACT_CASES)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


VERDICT_CASES = [
    (" The answer is -4.\n\n", True),                              # right
    (" The answer is 4.\n\n", False),                              # wrong
    (" -4\n\n", False),                                            # no answer line
    (" 5 - 3 = 2\n2 - 6 = -4\nThe answer is -4.\n\n", True),       # extra text before the answer line
    (" The answer is -4. I am sure.\n\n", False),                  # extra text after it
    (" The answer is -4.0.\n\n", False),                           # reasoning_gym scores 0.5: not 1.0
    (" The answer is  -4 .\n\n", True),                            # stray spaces
    (" The answer is -4.\n\nThe answer is 7.", True),              # after the stop: not read
]


@pytest.mark.parametrize("completion,correct", VERDICT_CASES)
def test_is_correct_uses_reasoning_gyms_score(task, completion, correct):
    entry = {"question": "Calculate 5 - 3 - 6.", "answer": "-4", "metadata": {}}
    ex = Example(id="x", question=entry["question"], answer="-4", meta={"entry": entry})
    assert task.is_correct(ex, completion) is correct
    assert task.score(ex, None) == 0.0


def test_every_gold_answer_line_is_correct_and_a_neighbours_is_not(task):
    dev = task.load("dev")
    assert all(task.is_correct(ex, task.direct_completion(ex)) for ex in dev)
    pairs = [(a, b) for a, b in zip(dev, dev[1:]) if a.answer != b.answer]
    assert pairs and not any(task.is_correct(a, task.direct_completion(b)) for a, b in pairs)


def test_class_of(task):
    ex = task.load("train")[0]
    meta = ex.meta["entry"]["metadata"]
    assert task.class_of(ex) == f"num_digits={meta['num_digits']},num_terms={meta['num_terms']}"
    assert task.class_of(Example(id="x", question="q", answer="1", meta={"entry": {"metadata": {}}})) == "all"
    assert task.is_faithful(ex, task.direct_completion(ex)) is None


# ----------------------------------------------------------------------------- config and errors

def test_unknown_dataset_lists_names_and_how_to_list_all():
    with pytest.raises(ValueError) as e:
        ReasoningGymTask("no_such_dataset", **SMALL)
    msg = str(e.value)
    assert "no_such_dataset" in msg and "basic_arithmetic" in msg and "reasoning_gym.factory.DATASETS" in msg
    cfg = compose_config(["task=reasoning_gym", "task.dataset=no_such_dataset"])
    validate(cfg)  # the pure checks pass; building the task (preflight) names the dataset
    with pytest.raises(ConfigError, match="no_such_dataset"):
        check_task_data(cfg)


def test_bad_dataset_kwargs_are_a_value_error():
    with pytest.raises(ValueError, match="dataset_kwargs"):
        ReasoningGymTask("basic_arithmetic", dataset_kwargs={"no_such_key": 1}, **SMALL)
    with pytest.raises(ValueError, match="dataset_kwargs"):
        ReasoningGymTask("basic_arithmetic", dataset_kwargs={"min_terms": 5, "max_terms": 2}, **SMALL)


def test_config_builds_the_task_with_kwargs():
    cfg = compose_config(["task=reasoning_gym", "task.dataset=chain_sum", "task.train_size=12", "task.dev_size=4",
                          "task.test_size=5",
                          "+task.dataset_kwargs.max_terms=2", "+task.dataset_kwargs.min_terms=2"])
    validate(cfg)
    check_task_data(cfg)
    t = build_task(cfg.task, seed=0)
    assert isinstance(t, ReasoningGymTask) and t.dataset == "chain_sum"
    assert all(e.meta["entry"]["metadata"]["num_terms"] == 2 for e in t.load("train"))
    assert [len(t.load(split)) for split in ("train", "dev", "test")] == [12, 4, 5]


# ----------------------------------------------------------------------------- gsm8k, source=gsm_symbolic

@pytest.fixture(scope="module")
def symbolic():
    return build_task(compose_config(["task=gsm8k", "task.source=gsm_symbolic", "task.train_size=30",
                                      "task.dev_size=10", "task.test_size=10"]).task, seed=0)


def test_gsm_symbolic_source_gives_gsm8k_examples(symbolic):
    assert isinstance(symbolic, Gsm8kTask)
    train, dev, test = symbolic.load("train"), symbolic.load("dev"), symbolic.load("test")
    assert (len(train), len(dev), len(test)) == (30, 10, 10) and train[0].id == "train-00000"
    assert test[0].id == "test-00000"
    assert not set(questions(train)) & set(questions(dev)) and not set(questions(test)) & set(questions(train + dev))
    for ex in train + dev + test:
        assert "Do not include units" not in ex.question
        assert gsm8k_answer_value(f" The answer is {ex.answer}.") is not None
        rationale = symbolic.gold_rationale(ex)
        assert rationale is None or symbolic.is_correct(ex, rationale)
    assert sum(symbolic.gold_rationale(ex) is not None for ex in train) >= 25
    assert symbolic.is_correct(train[0], symbolic.direct_completion(train[0]))
    assert not symbolic.is_correct(train[0], f" The answer is {int(train[0].answer.split('.')[0]) + 1}.\n\n")
    assert symbolic.class_of(train[0]).isdigit()
    again = build_task(compose_config(["task=gsm8k", "task.source=gsm_symbolic", "task.train_size=30",
                                       "task.dev_size=10", "task.test_size=10"]).task, seed=0)
    assert again.load("train") == train
    assert symbolic.fewshot_prompt().startswith("Q: ")  # the gsm8k prompts apply


def test_gsm_symbolic_entry_without_a_solution():
    entry = {"question": "Tom has 3 bags of 4 apples. How many apples? Give the result as your final answer. "
                         "Do not include units.", "answer": "12", "metadata": {}}
    ex = gsm_symbolic_example(entry, "train-00000")
    assert ex.question == "Tom has 3 bags of 4 apples. How many apples?" and ex.answer == "12"
    task = Gsm8kTask(train_size=1, dev_size=1, source="gsm_symbolic")
    assert task.gold_rationale(ex) is None and task.class_of(ex) == "all"
    wrong = gsm_symbolic_example({**entry, "metadata": {"answer_cot": "3 * 4 = 13\n#### 13"}}, "x")
    assert wrong.meta["solution"] is None  # a solution that does not end at the answer is dropped


def test_gsm8k_source_errors():
    with pytest.raises(ValueError, match="task.source"):
        Gsm8kTask(train_size=1, dev_size=1, source="nosuch")
    with pytest.raises(ConfigError, match="task.data_files"):
        check_task_data(compose_config(["task=gsm8k", "task.source=gsm_symbolic", "task.data_files.train=a.jsonl"]))


# ----------------------------------------------------------------------------- the real CLI

@pytest.mark.slow
@pytest.mark.parametrize("args", [["task=reasoning_gym"], ["task=gsm8k", "task.source=gsm_symbolic"]],
                         ids=["reasoning_gym", "gsm_symbolic"])
def test_cli_tiny_iteration(tmp_path, args):
    run = tmp_path / "r"
    proc = run_star([*args, "model=tiny", "debug=fast", "n_iterations=1", "logger=none", f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "iter_01" / "train.jsonl").is_file()
    generations = [json.loads(line) for line in (run / "iter_01" / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 16  # debug=fast: train_size 16
    assert json.loads((run / "iter_01" / "eval.json").read_text())
