"""benchmarks/bench_speed.py on the tiny model: CI runs the benchmark's pieces (nothing is timed here).

- the naive path (model.generate per question) and the fast path (HFGenerator) write the same texts;
- first_difference finds the step where two texts part;
- the whole script (--quick, every stage, in process) writes a results file whose first line is
  `generation speedup vs naive: N.Nx`;
- one pass through a real child process (the way the full benchmark runs every pass).
"""

from __future__ import annotations

import importlib.util
import re

import pytest

from tests.conftest import REPO

TINY = ["model=tiny", "model.device=cpu", "generator.progress=false", "rationalization.gold_oracle=true"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_speed", REPO / "benchmarks" / "bench_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_naive_and_fast_paths_write_the_same_texts(bench):
    cfg = bench.compose_cfg(TINY + ["generator.batch_size=4"])
    task = bench.bench_task(cfg, 6)
    questions = [task.format_question(ex) for ex in task.load("train")[:6]]
    model, tok = bench.load_model(cfg)
    prefix = task.fewshot_prompt()
    fast = bench.fast_generate(model, tok, cfg, prefix, questions, list(range(6)), tuple(task.stop))
    naive = bench.naive_generate(model, tok, cfg, prefix, questions, tuple(task.stop))
    assert fast["texts"] == naive["texts"]
    assert fast["new_tokens"] == naive["new_tokens"] > 0
    assert bench.mismatches(questions, naive, fast) == []
    # One gap per generated token, each a top-1 minus top-2 difference.
    assert all(len(g) == len(s) and min(g) >= 0 for g, s in zip(naive["gaps"], naive["step_texts"]))


def test_batched_naive_path_writes_the_naive_texts(bench):
    """model.generate() on left-padded batches (the careful user's baseline): each row stops at its own stop
    string, its tokens counted up to there, the texts those of one question at a time."""
    import torch

    cfg = bench.compose_cfg(TINY + ["generator.batch_size=4"])
    task = bench.bench_task(cfg, 6)
    questions = [task.format_question(ex) for ex in task.load("train")[:6]]
    model, tok = bench.load_model(cfg)
    with torch.no_grad():  # random weights are near ties everywhere: sharpen them (padding changes rounding)
        model.lm_head.weight.mul_(10.0)
    prefix = task.fewshot_prompt()
    batched = bench.batched_generate(model, tok, cfg, prefix, questions, tuple(task.stop))
    naive = bench.naive_generate(model, tok, cfg, prefix, questions, tuple(task.stop))
    assert batched["texts"] == naive["texts"]
    assert batched["new_tokens"] == naive["new_tokens"] > 0
    assert batched["model_tokens"] >= naive["new_tokens"]


def test_first_difference(bench):
    steps = [" 1", " 12", " 12\n", " 12\n\n"]
    assert bench.first_difference(steps, " 13\n\n") == 1
    assert bench.first_difference(steps, " 12\nThe") == 3
    assert bench.first_difference(steps, " 12\n\n more") == 3  # naive stopped first: its last step


def test_quick_run_writes_the_results_file(bench, tmp_path):
    out = tmp_path / "results.md"
    rc = bench.main(["--quick", "--in-process", "--out", str(out), *TINY])
    assert rc == 0
    lines = out.read_text().splitlines()
    assert re.fullmatch(r"generation speedup vs naive: \d+\.\dx", lines[0]), lines[0]
    text = out.read_text()
    assert "fast vs naive, texts compared one by one: 8 of 8 identical, 0 differ" in text
    assert "| batched |" in text and "engine start: not measured here (model=tiny is built in memory" in text
    for heading in ("## Matmul rate", "## Generation", "## Training", "## One default iteration"):
        assert heading in text
    assert "Command: `python benchmarks/bench_speed.py --quick" in text
    assert re.search(r"Commit: [0-9a-f]{7}", text), "the figures name their commit"
    # The train row's "after" is the run's own fit (the default fits unpacked): packing is not credited.
    train_row = next(line for line in lines if line.startswith("| train |"))
    assert "unpacked fit (the run's trainer.packing=False)" in train_row, train_row


def test_a_pass_in_a_fresh_child_process(bench, tmp_path):
    cfg = bench.compose_cfg(TINY)
    task = bench.bench_task(cfg, 2)
    spec = {"overrides": TINY, "prefix": "", "stop": list(task.stop),
            "questions": [task.format_question(ex) for ex in task.load("train")[:2]], "seeds": [0, 1]}
    out = bench.run_child("fast", spec, tmp_path)
    assert len(out["texts"]) == 2 and out["peak_rss_mib"] > 0 and out["class"] == "LlamaForCausalLM"
