"""Leak tests for every task: for several seeds and sizes, train, dev and test are pairwise
disjoint problems (arithmetic: unordered pairs; the others: questions compared whitespace-collapsed
and case-folded), no split holds a few-shot exemplar's problem, the sizes are met (or the error
names the sizes that fit), dev and test do not move when train_size does, and a dev carved from
the train rows is the same for every run seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from star.tasks import build_task
from star.tasks.base import normalize_question
from tests.conftest import compose_config

DATA = Path(__file__).parent / "data"
SEEDS = (0, 1, 2)
SPLITS = ("train", "dev", "test")
# A reasoning_gym pool of about 120 distinct "a + b" questions: its streams do collide.
TINY_POOL = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"],
             "allow_negation": False, "allow_parentheses": False}


def build(option: str, seed: int, **keys):
    """The task of conf/task/<option>.yaml with `keys` overridden, built as a run builds it."""
    overrides = [f"task={option}"]
    for key, value in keys.items():
        if key == "dataset_kwargs":
            overrides += [f"+task.dataset_kwargs.{k}={json.dumps(v)}" for k, v in value.items()]
        else:
            overrides.append(f"task.{key}={'null' if value is None else value}")
    return build_task(compose_config(overrides).task, seed=seed)


def problem(task, question: str):
    """What makes two questions one problem: arithmetic's unordered operands, else the normalized text."""
    if task.name == "arithmetic":
        return tuple(sorted(int(x) for x in question.split("+")))
    return normalize_question(question)


def exemplar_problems(task) -> set:
    """The problems of the task's few-shot prompts (with rationales and answers-only), read from the prompt text."""
    out = set()
    for prompt in (task.fewshot_prompt(), task.fewshot_prompt(direct=True)):
        for block in prompt.split(task.stop[0]):
            if block.strip():
                question = block[len("Q: "):].split("\nAnswer Choices:")[0].split("\nA:")[0]
                out.add(problem(task, question))
    return out


def leak_free_splits(task) -> dict[str, list]:
    """task's splits, after asserting them leak-free: unique ids and problems within each split,
    no problem in two splits, none of the few-shot exemplars'."""
    loaded = {split: task.load(split) for split in task.splits}
    problems = {split: [problem(task, e.question) for e in examples] for split, examples in loaded.items()}
    for split, examples in loaded.items():
        assert len({e.id for e in examples}) == len(examples), f"{split}: repeated ids"
        assert len(set(problems[split])) == len(examples), f"{split}: a repeated problem"
    names = list(loaded)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(problems[a]) & set(problems[b]), f"{a} and {b} share a problem"
    exemplars = exemplar_problems(task)
    for split in names:
        assert not set(problems[split]) & exemplars, f"{split} holds a few-shot exemplar's problem"
    return loaded


def sizes_of(loaded: dict) -> tuple[int, ...]:
    return tuple(len(loaded[split]) for split in SPLITS if split in loaded)


# ----------------------------------------------------------------------------- arithmetic

ARITHMETIC_SIZES = [
    ("arithmetic_cpu", {}),                                               # the default run: 160 / 102 / 102
    ("arithmetic", {"digits": "[1]", "train_size": 30, "dev_size": 12, "test_size": 11}),  # every 1-digit problem
    ("arithmetic", {"digits": "[1,2,3,4,5]"}),                            # 1000 / 100 / 100
    ("arithmetic", {"digits": "[3,1]", "train_size": 40, "dev_size": 9, "test_size": 7}),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("option,keys", ARITHMETIC_SIZES)
def test_arithmetic_splits_are_leak_free_and_full(option, keys, seed):
    task = build(option, seed, **keys)
    loaded = leak_free_splits(task)
    assert sizes_of(loaded) == (task.train_size, task.dev_size, task.test_size)
    # The orientation is drawn, the problems are unordered: some splits show b + a for a < b.
    assert any(e.meta["a"] > e.meta["b"] for examples in loaded.values() for e in examples)


def test_arithmetic_default_mix():
    # 53 one-digit problems (55 less 3 + 4 and 8 + 6): a third (17) each for dev and test, the rest (19) for train.
    task = build("arithmetic_cpu", 0)
    mix = {split: [sum(e.meta["digits"] == d for e in task.load(split)) for d in (1, 2, 3)] for split in SPLITS}
    assert mix == {"train": [19, 71, 70], "dev": [17, 43, 42], "test": [17, 43, 42]}


def test_arithmetic_sizes_that_cannot_be_filled_name_the_sizes_that_fit():
    task = build("arithmetic", 0, digits="[1]", train_size=30, dev_size=20, test_size=20)
    for split in SPLITS:
        with pytest.raises(ValueError) as e:
            task.load(split)
        assert str(e.value) == (
            "task.train_size=30, task.dev_size=20 and task.test_size=20 cannot be met without reusing a problem: "
            "with digits [1] there are 53 problems (few-shot exemplars left out); dev and test each hold at most a "
            "third of each digit count's problems and train the rest: train at most 19, dev at most 17, test at "
            "most 17 with these sizes; lower task.train_size/dev_size/test_size or add digit counts to task.digits")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("digits,train_sizes", [
    ("[2,3]", (20, 160, 2000)),   # pools far larger than the sizes: no cap binds
    ("[1,2,3]", (10, 160, 400)),   # the default run's 1-digit cap (17 of 53 for dev and test) binds
])
def test_arithmetic_dev_and_test_do_not_move_with_train_size(digits, train_sizes, seed):
    tasks = [build("arithmetic_cpu", seed, digits=digits, train_size=n) for n in train_sizes]
    for split in ("dev", "test"):
        assert all(t.load(split) == tasks[0].load(split) for t in tasks[1:]), split
    assert [len(t.load("train")) for t in tasks] == list(train_sizes)


# ----------------------------------------------------------------------------- cqa and gsm8k from files

def rows(task: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / task / f"{split}.jsonl").read_text().splitlines()]


def leaky_files(task: str, tmp_path: Path, exemplar: str) -> dict[str, str]:
    """The fixture files plus rows that would leak, each differing only in case and spacing from
    the row it copies: an exemplar's question in every file, test questions in train and dev, a
    dev question in train."""
    files = {split: rows(task, split) for split in SPLITS}
    made: list[dict] = []

    def copy(row: dict, question: str) -> dict:
        # Same question, other case and spacing: normalized they are one question.
        leak = {**row, "question": "  " + question.upper().replace(" ", "   ") + " "}
        if "id" in row:
            leak["id"] = f"leak-{len(made)}"
        made.append(leak)
        return leak

    test_q, dev_q = files["test"][0]["question"], files["dev"][0]["question"]
    files["train"] += [copy(files["train"][0], exemplar), copy(files["train"][1], test_q),
                       copy(files["train"][2], dev_q)]
    files["dev"] += [copy(files["dev"][1], exemplar), copy(files["dev"][2], test_q)]
    files["test"] += [copy(files["test"][1], exemplar)]
    out = {}
    for split, split_rows in files.items():
        path = tmp_path / f"{task}-{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in split_rows))
        out[split] = str(path)
    return out


def first_exemplar(task: str) -> str:
    prompt = build(task, 0).fewshot_prompt()
    return prompt[len("Q: "):].split("\n")[0]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sizes,expected", [
    ({}, (12, 6, 5)),                                                     # the defaults: caps above the rows
    ({"train_size": 5, "dev_size": 3, "test_size": 2}, (5, 3, 2)),
    ({"train_size": 12, "dev_size": 1, "test_size": 5}, (12, 1, 5)),
])
@pytest.mark.parametrize("task", ["cqa", "gsm8k"])
def test_file_splits_drop_every_leak(task, sizes, expected, seed, tmp_path):
    files = leaky_files(task, tmp_path, first_exemplar(task))
    built = build(task, seed, **{f"data_files.{s}": path for s, path in files.items()}, **sizes)
    loaded = leak_free_splits(built)
    assert sizes_of(loaded) == expected  # the leaky rows are gone, the caps hold
    # Every kept row is a fixture row, in file order.
    for split, n in zip(SPLITS, expected):
        assert [e.question for e in loaded[split]] == [r["question"] for r in rows(task, split)][:n]
    bigger = build(task, seed, **{f"data_files.{s}": path for s, path in files.items()}, **{**sizes, "train_size": 100})
    assert bigger.load("dev") == loaded["dev"] and bigger.load("test") == loaded["test"]


@pytest.mark.parametrize("task", ["cqa", "gsm8k"])
def test_carved_dev_is_the_same_for_every_seed_and_train_size(task, tmp_path):
    files = leaky_files(task, tmp_path, first_exemplar(task))
    # No dev file: dev is carved from the train rows that are no exemplar's and not in test.
    runs = {(seed, n): build(task, seed, **{"data_files.train": files["train"], "data_files.test": files["test"]},
                             dev_size=4, train_size=n)
            for seed in SEEDS for n in (3, 100)}
    dev = runs[(0, 100)].load("dev")
    assert len(dev) == 4
    for (seed, n), built in runs.items():
        loaded = leak_free_splits(built)
        assert loaded["dev"] == dev and loaded["test"] == runs[(0, 100)].load("test"), (seed, n)
        # 15 train rows less the exemplar's and the test question's copies, less the 4 carved.
        assert sizes_of(loaded) == (min(n, 9), 4, 5)
    # Without a test file there is no test split; the carve is again the same for every seed.
    no_test = [build(task, seed, **{"data_files.train": files["train"]}, dev_size=4) for seed in SEEDS]
    assert all(t.splits == ("train", "dev") for t in no_test)
    assert all(leak_free_splits(t)["dev"] == no_test[0].load("dev") for t in no_test)


@pytest.mark.parametrize("task", ["cqa", "gsm8k"])
def test_a_carve_that_leaves_no_train_row_names_the_fix(task, tmp_path):
    files = leaky_files(task, tmp_path, first_exemplar(task))
    built = build(task, 0, **{"data_files.train": files["train"]}, dev_size=500)
    with pytest.raises(ValueError, match=r"train split has no rows left: dev is carved from the train rows "
                                         r"\(task.dev_size=500\).*lower task.dev_size or pass task.data_files.dev"):
        built.load("dev")


# ----------------------------------------------------------------------------- generated: gsm_symbolic, reasoning_gym

GENERATED = [
    ("gsm8k", {"source": "gsm_symbolic"}),
    ("reasoning_gym", {"dataset": "basic_arithmetic", "dataset_kwargs": TINY_POOL}),
    ("reasoning_gym", {"dataset": "chain_sum"}),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sizes", [(20, 6, 5), (12, 9, 14)])
@pytest.mark.parametrize("option,keys", GENERATED, ids=["gsm_symbolic", "basic_arithmetic_tiny", "chain_sum"])
def test_generated_splits_are_leak_free_full_and_train_size_moves_nothing_before_train(option, keys, sizes, seed):
    train, dev, test = sizes
    task = build(option, seed, **keys, train_size=train, dev_size=dev, test_size=test)
    loaded = leak_free_splits(task)
    assert sizes_of(loaded) == sizes
    bigger = build(option, seed, **keys, train_size=2 * train, dev_size=dev, test_size=test)
    assert bigger.load("dev") == loaded["dev"] and bigger.load("test") == loaded["test"]
    assert bigger.fewshot_prompt() == task.fewshot_prompt()


def test_generated_sizes_that_cannot_be_filled_name_the_key():
    # About 120 distinct questions: dev and test fit, train cannot.
    task = build("reasoning_gym", 0, dataset="basic_arithmetic", dataset_kwargs=TINY_POOL, train_size=500,
                 dev_size=20, test_size=20)
    with pytest.raises(ValueError, match=r"for train \(wanted 500\); lower task.train_size"):
        task.load("dev")
    with pytest.raises(ValueError, match=r"for test \(wanted 500\); lower task.test_size"):
        build("reasoning_gym", 0, dataset="basic_arithmetic", dataset_kwargs=TINY_POOL, test_size=500).load("test")
