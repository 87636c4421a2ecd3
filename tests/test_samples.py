"""Several rationales per question (sampling.num_samples = k, method.max_kept_per_question): the k samples'
seeds, which questions rationalization retries, what the filter keeps, the metrics, and the engine
encoding a question's k prompts once. The loop runs with a generator that answers by rule from each
sample's seed, so every count is known in advance; the engine tests use a real (tiny) model."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf

from star import artifacts as A
from star.config import ConfigError, inactive_settings, validate
from star.generation.hf import HFGenerator, distinct_rows
from star.loop import StarLoop
from star.models import load_model_and_tokenizer
from star.stages.context import derive_seed
from star.stages.train import distinct_completions
from star.tasks.arithmetic import scratchpad_for
from tests.conftest import compose_config

QUESTION = re.compile(r"Q: (\d+) \+ (\d+)( \(hint: the answer is \d+\))?\nA:$")
BASE = ["~experiment", "model=tiny", "debug=fast", "logger=none", "task.train_size=24", "task.dev_size=12",
        "rationalization.gold_oracle=false", "n_iterations=1"]
SAMPLED = ["sampling=temperature", "sampling.num_samples=3"]


def answer(a: int, b: int, seed: int, hint: bool) -> str:
    """By rule from the seed: without a hint, seed % 4 gives the scratchpad (0), the same scratchpad with
    doubled spaces (1: equal after whitespace normalization), the scratchpad after a line of its own (2:
    a second distinct correct completion) or a wrong one (3); with the hint, right iff the seed is even."""
    if hint:
        return scratchpad_for(a, b) if seed % 2 == 0 else scratchpad_for(a + 1, b)
    return {0: scratchpad_for(a, b), 1: scratchpad_for(a, b).replace("\n", "  \n", 1),
            2: " Add by column.\n" + scratchpad_for(a, b)[1:], 3: scratchpad_for(a, b + 1)}[seed % 4]


class SeededRule:
    def __init__(self, log: list):
        self.log = log
        self.n_new_tokens = 0

    def generate(self, prefix, questions, *, seeds, max_new_tokens, stop, temperature=0.0, top_p=1.0, desc=""):
        self.log.append({"desc": desc, "questions": list(questions), "seeds": list(seeds)})
        out = []
        for q, s in zip(questions, seeds):
            a, b, hint = QUESTION.match(q).groups()
            out.append(answer(int(a), int(b), s, bool(hint)))
        return out


def run_loop(tmp_path, overrides):
    cfg = compose_config(BASE + list(overrides))
    log: list = []
    loop = StarLoop(cfg, tmp_path / "run", make_generator=lambda m, t: SeededRule(log))
    return loop, loop.run(), log


def seed_of(stage: str, example_id: str, j: int) -> int:
    return derive_seed(0, 1, stage, example_id if j == 0 else f"{example_id}/sample={j}")


@pytest.mark.parametrize("cap", [1, 2])
def test_k_samples_per_question_and_what_is_kept(tmp_path, cap):
    loop, history, log = run_loop(tmp_path, [*SAMPLED, f"method.max_kept_per_question={cap}"])
    k, d = 3, A.iter_dir(loop.run_dir, 1)
    questions = loop.task.load("train")
    gens = A.read_jsonl(d / "generations.jsonl")
    # k rows per question, in question order, each sample with its own seed (sample 0: the k = 1 seed).
    assert [(r["id"], r["sample"]) for r in gens] == [(ex.id, j) for ex in questions for j in range(k)]
    generate_call = next(c for c in log if c["desc"].endswith("generate"))
    assert generate_call["seeds"] == [seed_of("generate", ex.id, j) for ex in questions for j in range(k)]
    assert len(set(generate_call["seeds"])) == k * len(questions)

    codes = {ex.id: [seed_of("generate", ex.id, j) % 4 for j in range(k)] for ex in questions}
    solved = [ex for ex in questions if any(c != 3 for c in codes[ex.id])]
    unsolved = [ex for ex in questions if ex not in solved]
    assert solved and unsolved, "the seeds should give both kinds (else the test proves little)"
    # Rationalization retries only the questions none of whose k samples was right, k times each.
    rats = A.read_jsonl(d / "rationalizations.jsonl")
    assert [(r["id"], r["sample"]) for r in rats] == [(ex.id, j) for ex in unsolved for j in range(k)]
    rat_right = {ex.id: [j for j in range(k) if seed_of("rationalize", ex.id, j) % 2 == 0] for ex in unsolved}

    # Distinct correct completions: codes 0 and 1 are one text after whitespace normalization, 2 another.
    distinct = {ex.id: len({c == 2 for c in codes[ex.id] if c != 3}) for ex in solved}
    kept_direct = sum(min(n, cap) for n in distinct.values())
    kept_rat = sum(min(1, len(js)) for js in rat_right.values())  # the hinted answers are all one text
    train = A.read_jsonl(d / "train.jsonl")
    assert [r["source"] for r in train].count("direct") == kept_direct
    assert [r["source"] for r in train].count("rationalized") == kept_rat
    assert max(sum(r["id"] == ex.id for r in train) for ex in questions) <= cap
    for ex in questions:  # kept completions of one question are distinct after normalization
        texts = [" ".join(r["completion"].split()) for r in train if r["id"] == ex.id]
        assert len(texts) == len(set(texts))

    m, n = history[1], len(questions)
    n_right = sum(c != 3 for cs in codes.values() for c in cs)
    assert m["gen/solve_rate"] == pytest.approx(len(solved) / n)
    assert m["gen/sample_accuracy"] == pytest.approx(n_right / (k * n))
    assert m["gen/rationalized_rate"] == pytest.approx(sum(bool(js) for js in rat_right.values()) / n)
    assert m["gen/unique_kept"] == sum(distinct.values()) + kept_rat
    assert m["data/n_examples"] == len(train) == kept_direct + kept_rat
    assert m["data/train_fraction"] == pytest.approx((len(solved) + kept_rat) / n)


def test_one_sample_writes_rows_without_a_sample_index(tmp_path):
    loop, history, log = run_loop(tmp_path, ["sampling=temperature"])
    gens = A.read_jsonl(A.iter_dir(loop.run_dir, 1) / "generations.jsonl")
    questions = loop.task.load("train")
    assert [r["id"] for r in gens] == [ex.id for ex in questions]
    assert all("sample" not in r for r in gens)
    assert next(c for c in log if c["desc"].endswith("generate"))["seeds"] == [
        derive_seed(0, 1, "generate", ex.id) for ex in questions]
    assert history[1]["gen/solve_rate"] == history[1]["gen/sample_accuracy"]


def test_distinct_completions_caps_each_question_in_order():
    rows = [{"id": "a", "completion": " x\n1"}, {"id": "b", "completion": "y"}, {"id": "a", "completion": "x  1 "},
            {"id": "a", "completion": "z"}, {"id": "a", "completion": "w"}, {"id": "b", "completion": "y"}]
    kept, n = distinct_completions(rows, cap=2)
    assert kept == [rows[0], rows[1], rows[3]]
    assert n == 4  # a: x 1, z, w; b: y
    assert distinct_completions(rows, cap=1) == ([rows[0], rows[1]], 4)


@pytest.mark.parametrize("overrides,message", [
    (["sampling.num_samples=4"],
     "sampling.num_samples=4 needs sampling.temperature > 0: greedy decoding writes the same completion 4 times; "
     "add sampling=temperature (0.7) or sampling.temperature=0.7"),
    (["sampling=temperature", "sampling.num_samples=0"],
     "sampling.num_samples must be >= 1 (completions per question and pass), got 0"),
    (["method.max_kept_per_question=0"],
     "method.max_kept_per_question must be >= 1 (distinct correct completions kept per question), got 0"),
])
def test_impossible_sample_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError) as e:
        validate(compose_config(BASE + overrides))
    assert str(e.value) == message


def test_a_cap_without_samples_is_named_as_inactive():
    assert inactive_settings(compose_config(BASE + ["method.max_kept_per_question=2"])) == [
        "method.max_kept_per_question=2 (one completion per question: sampling.num_samples=1 or method.data=gold)"]
    assert inactive_settings(compose_config(BASE + SAMPLED + ["method.max_kept_per_question=2"])) == []


# ----------------------------------------------------------------------------- the engine

PREFIX = "Q: 1 + 2\nA: 3\n\nQ: 4 + 4\nA: 8\n\n"
QUESTIONS = ["Q: 5 + 1\nA:", "Q: 12 + 30\nA:", "Q: 123 + 456\nA:"]


@pytest.fixture(scope="module")
def tiny():
    cfg = OmegaConf.create({"name": "tiny", "hidden_size": 64, "n_layers": 2, "n_heads": 4, "dtype": "float32"})
    return load_model_and_tokenizer(cfg, seed=1)  # random weights, near-flat logits: samples really vary


def test_distinct_rows():
    assert distinct_rows([[1], [1], [2], [1], [3, 4]]) == ([0, 2, 4], [0, 0, 1, 0, 2])
    assert distinct_rows([[1], [2]]) == ([0, 1], [0, 1])


@pytest.mark.parametrize("prefix", [PREFIX, ""])
def test_a_questions_samples_are_encoded_once_and_sampled_apart(tiny, prefix):
    """k copies of each question in one batch: the first forward pass sees each distinct prompt once, and
    every sample equals that question generated alone with that sample's seed."""
    model, tok = tiny
    k = 3
    questions = [q for q in QUESTIONS for _ in range(k)]
    seeds = list(range(100, 100 + len(questions)))
    kw = dict(max_new_tokens=8, stop=(), temperature=1.0, top_p=0.95)
    first_batches = []

    def record(module, args, kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:  # a prompt step (decode steps feed one token per row)
            first_batches.append(ids.shape[0])

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        together = HFGenerator(model, tok, batch_size=len(questions), progress=False).generate(
            prefix, questions, seeds=seeds, **kw)
    finally:
        hook.remove()
    assert first_batches[-1] == len(QUESTIONS)
    alone = [HFGenerator(model, tok, batch_size=1, progress=False).generate(prefix, [q], seeds=[s], **kw)[0]
             for q, s in zip(questions, seeds)]
    assert together == alone
    assert len(set(together)) > len(QUESTIONS), "a question's samples should differ (else the test proves little)"


def test_greedy_copies_of_a_question_are_equal(tiny):
    model, tok = tiny
    with torch.no_grad():
        out = HFGenerator(model, tok, batch_size=6, progress=False).generate(
            PREFIX, [q for q in QUESTIONS for _ in range(2)], seeds=[0] * 6, max_new_tokens=6, stop=())
    assert out[0::2] == out[1::2]
