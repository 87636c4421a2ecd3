"""Loop mechanics with a scripted generator: exact counts, hint stripping, restart from base,
empty iterations, sampling, schedules, plateau stop and in-process resume."""

from __future__ import annotations

import re

import pytest

from star import artifacts as A
from star.loop import StarLoop
from star.model_cache import model_ref
from star.stages.context import derive_seed
from star.stages.train import scheduled_steps
from star.tasks.arithmetic import scratchpad_for
from star.training import finetune
from tests.conftest import compose_config

QUESTION = re.compile(r"Q: (\d+) \+ (\d+)( \(hint: the answer is \d+\))?\nA:$")


class ScriptedGenerator:
    """Answers by rule instead of by model, so every count in the run is known in advance.

    no hint:   right iff (a+b) % 3 == 0
    with hint: (a+b) % 3 == 1 -> right (a even) or right but repeating the hint (a odd);
               otherwise wrong.
    """

    def __init__(self, log: list):
        self.log = log
        self.n_new_tokens = 0

    def generate(self, prefix, questions, *, seeds, max_new_tokens, stop, temperature=0.0, top_p=1.0, desc=""):
        self.log.append({"prefix": prefix, "questions": list(questions), "desc": desc})
        out = []
        for q in questions:
            a, b, hint = QUESTION.match(q).groups()
            a, b = int(a), int(b)
            if not hint:
                out.append(scratchpad_for(a, b) if (a + b) % 3 == 0 else scratchpad_for(a, b + 1))
            elif (a + b) % 3 == 1:
                out.append(scratchpad_for(a, b) if a % 2 == 0 else hint + "\n" + scratchpad_for(a, b))
            else:
                out.append(scratchpad_for(a + 1, b))
        return out


BASE = ["~experiment", "model=tiny", "debug=fast", "logger=none", "task.train_size=30", "task.dev_size=12",
        "rationalization.gold_oracle=false"]


def make_loop(tmp_path, overrides=(), finetune_fn=finetune):
    cfg = compose_config(BASE + list(overrides))
    log: list = []
    loop = StarLoop(cfg, tmp_path / "run", make_generator=lambda m, t: ScriptedGenerator(log), finetune_fn=finetune_fn)
    return loop, log


def sums(loop):
    return [(ex, int(ex.meta["a"]) + int(ex.meta["b"])) for ex in loop.task.load("train")]


def test_counts_are_exact_and_no_hint_reaches_training(tmp_path):
    loop, _ = make_loop(tmp_path, ["n_iterations=1"])
    history = loop.run()
    d = A.iter_dir(loop.run_dir, 1)
    pairs = sums(loop)
    n_direct = sum(s % 3 == 0 for _, s in pairs)
    n_rat = sum(s % 3 == 1 and ex.meta["a"] % 2 == 0 for ex, s in pairs)
    n_leak = sum(s % 3 == 1 and ex.meta["a"] % 2 == 1 for ex, s in pairs)
    assert n_direct and n_rat and n_leak, "the scripted rule should produce every case"
    gens = A.read_jsonl(d / "generations.jsonl")
    rats = A.read_jsonl(d / "rationalizations.jsonl")
    train = A.read_jsonl(d / "train.jsonl")
    assert len(gens) == 30
    assert sum(r["correct"] for r in gens) == n_direct
    assert len(rats) == 30 - n_direct, "every failure is rationalized"
    assert sum(r["correct"] for r in rats) == n_rat
    assert sum(r["hint_leaked"] for r in rats) == n_leak
    assert len(train) == n_direct + n_rat
    assert [r["source"] for r in train].count("rationalized") == n_rat
    by_id = {ex.id: ex for ex in loop.task.load("train")}
    for row in train:
        assert "hint" not in row["prompt"] and "hint" not in row["completion"]
        assert row["prompt"] == loop.task.format_question(by_id[row["id"]])
        assert loop.task.is_correct(by_id[row["id"]], row["completion"])
    m = history[1]
    assert m["gen/solve_rate"] == pytest.approx(n_direct / 30)
    assert m["gen/rationalized_rate"] == pytest.approx(n_rat / 30)
    assert m["data/train_fraction"] == pytest.approx((n_direct + n_rat) / 30)
    assert m["data/n_examples"] == n_direct + n_rat
    assert m["train/steps"] == 2  # debug=fast: base_steps 2
    assert m["gen/scorer_errors"] == 0  # arithmetic's verifier cannot raise: no scorer_errors attribute
    for key in ("eval/accuracy", "eval/accuracy/1", "eval/accuracy/2", "train/final_loss", "perf/gen_tokens_per_s",
                "perf/train_tokens_per_s", "time/generate_s", "time/rationalize_s", "time/train_s", "time/eval_s"):
        assert key in m, key
    # The fit's last-quarter mean loss, as the train marker has it; train/loss is the per-step loss
    # (train_steps.csv), never an iteration's metric. No generation callback ran: no fit/final_dev_accuracy.
    assert m["train/final_loss"] == A.read_done(loop.run_dir, 1, "train")["loss"]
    assert "train/loss" not in m and "fit/final_dev_accuracy" not in m


def test_rationalization_off_keeps_only_direct(tmp_path):
    loop, log = make_loop(tmp_path, ["n_iterations=1", "rationalization=off"])
    loop.run()
    d = A.iter_dir(loop.run_dir, 1)
    assert A.read_jsonl(d / "rationalizations.jsonl") == []
    assert {r["source"] for r in A.read_jsonl(d / "train.jsonl")} == {"direct"}
    assert not any("rationalize" in call["desc"] for call in log)


def test_p_rationalization_is_a_deterministic_subset(tmp_path):
    loop, _ = make_loop(tmp_path, ["n_iterations=1", "rationalization.p_rationalization=0.5"])
    loop.run()
    rats = A.read_jsonl(A.iter_dir(loop.run_dir, 1) / "rationalizations.jsonl")
    failures = [r for r in A.read_jsonl(A.iter_dir(loop.run_dir, 1) / "generations.jsonl") if not r["correct"]]
    assert 0 < len(rats) < len(failures)
    again, _ = make_loop(tmp_path / "b", ["n_iterations=1", "rationalization.p_rationalization=0.5"])
    again.run()
    assert A.read_jsonl(A.iter_dir(again.run_dir, 1) / "rationalizations.jsonl") == rats


def fingerprint(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def watched_finetune(starts: list, ends: list):
    """The real finetune, recording the weights' fingerprint before and after each call."""
    def watching_finetune(model, *args, **kwargs):
        starts.append(fingerprint(model))
        stats = finetune(model, *args, **kwargs)
        ends.append(fingerprint(model))
        return stats
    return watching_finetune


def test_every_iteration_finetunes_the_original_base(tmp_path):
    starts, ends = [], []
    watching_finetune = watched_finetune(starts, ends)

    loop, _ = make_loop(tmp_path, ["n_iterations=3"], finetune_fn=watching_finetune)
    loop.run()
    base = fingerprint(loop.ctx.models.base()[0])
    assert len(starts) == 3
    assert starts == [base] * 3, "fine-tuning must start from the base weights every iteration"
    assert all(e != base for e in ends), "fine-tuning should change the weights"


def test_continue_from_previous_when_restart_from_base_is_off(tmp_path):
    starts, ends = [], []
    watching_finetune = watched_finetune(starts, ends)

    loop, _ = make_loop(tmp_path, ["n_iterations=2", "method.restart_from_base=false"], finetune_fn=watching_finetune)
    loop.run()
    assert starts[1] == pytest.approx(ends[0], rel=1e-6)


def test_prompt_is_used_where_the_model_was_trained_with_it(tmp_path):
    loop, log = make_loop(tmp_path, ["n_iterations=2"])
    loop.run()
    prefix = loop.task.fewshot_prompt()
    by_desc = {c["desc"]: c["prefix"] for c in log}
    assert by_desc["iter 0 eval"] == prefix
    assert by_desc["iter 1 generate"] == prefix          # M0 is the few-shot base
    assert by_desc["iter 1 eval"] == ""                  # M1 was trained without the prompt
    assert by_desc["iter 2 generate"] == ""
    kept, log2 = make_loop(tmp_path / "keep", ["n_iterations=2", "method.keep_prompt_in_training=true"])
    kept.run()
    by_desc = {c["desc"]: c["prefix"] for c in log2}
    assert by_desc["iter 1 eval"] == prefix and by_desc["iter 2 generate"] == prefix


class NothingRight(ScriptedGenerator):
    def generate(self, prefix, questions, **kw):
        return ["The answer is -1.\n\n" for _ in questions]


def test_iteration_that_keeps_nothing_skips_training(tmp_path):
    cfg = compose_config(BASE + ["n_iterations=2"])
    calls = []
    loop = StarLoop(cfg, tmp_path / "run", make_generator=lambda m, t: NothingRight(calls),
                    finetune_fn=lambda *a, **k: pytest.fail("nothing was kept: no fine-tuning"))
    history = loop.run()
    for n in (1, 2):
        d = A.iter_dir(loop.run_dir, n)
        assert (d / "train.jsonl").exists() and A.read_jsonl(d / "train.jsonl") == []
        assert not (d / "checkpoint").exists()
        assert history[n]["data/n_examples"] == 0 and history[n]["train/steps"] == 0
        assert model_ref(loop.run_dir, n).checkpoint is None and model_ref(loop.run_dir, n).prompted


def test_sample_per_iteration(tmp_path):
    loop, _ = make_loop(tmp_path, ["n_iterations=2", "task.sample_per_iteration=10"])
    loop.run()
    ids = [[r["id"] for r in A.read_jsonl(A.iter_dir(loop.run_dir, n) / "generations.jsonl")] for n in (1, 2)]
    assert len(ids[0]) == len(ids[1]) == 10
    assert ids[0] != ids[1], "each iteration samples its own subset"
    assert ids[0] == [ex.id for ex in loop.ctx.train_questions(1)]


@pytest.mark.parametrize("mode,n,n_examples,batch,expected", [
    ("exponential", 1, 100, 8, 40), ("exponential", 2, 100, 8, 48), ("exponential", 5, 100, 8, 83),
    ("linear", 1, 100, 8, 40), ("linear", 3, 100, 8, 80),
    ("epoch", 1, 100, 8, 13), ("epoch", 2, 100, 8, 15), ("epoch", 1, 3, 8, 1),
])
def test_schedule(mode, n, n_examples, batch, expected):
    cfg = compose_config(["~experiment", f"schedule={mode}"])
    assert scheduled_steps(cfg.schedule, n, n_examples, batch) == expected


def test_plateau_stops_early(tmp_path):
    loop, _ = make_loop(tmp_path, ["n_iterations=4", "plateau_patience=1"])
    history = loop.run()
    # The scripted generator scores the same every iteration: no gain after iteration 1.
    assert len(history) == 2
    assert not A.iter_dir(loop.run_dir, 2).exists()


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, 1, "generate", "a") == derive_seed(0, 1, "generate", "a")
    cells = {derive_seed(s, n, st, k) for s in (0, 1) for n in (1, 2) for st in ("generate", "rationalize")
             for k in ("a", "b")}
    assert len(cells) == 16


def test_resume_in_process_never_redoes_a_finished_stage(tmp_path):
    loop, log = make_loop(tmp_path, ["n_iterations=1"])
    loop.run()
    markers = {p: p.read_bytes() for p in loop.run_dir.rglob("*.done")}
    mtimes = {p: p.stat().st_mtime_ns for p in markers}
    calls_before = len(log)
    longer, log2 = make_loop(tmp_path, ["n_iterations=2"])
    history = longer.run()
    assert len(history) == 3
    assert {p: p.stat().st_mtime_ns for p in markers} == mtimes
    assert all(c["desc"].startswith("iter 2") for c in log2), [c["desc"] for c in log2]
    assert calls_before > 0


def test_generation_callback_records_dev_accuracy_during_fit(tmp_path):
    loop, log = make_loop(tmp_path, ["n_iterations=1", "schedule.base_steps=4", "trainer.eval_every_n_steps=2",
                                     "trainer.callback_dev_size=4"])
    history = loop.run()
    curve = A.read_done(loop.run_dir, 1, "train")["dev_curve"]
    assert [c["step"] for c in curve] == [2]  # every 2 steps, before the last one
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in curve)
    assert history[1]["fit/final_dev_accuracy"] == curve[-1]["accuracy"]
    assert A.read_json(A.metrics_of(loop.run_dir, 1))["fit/final_dev_accuracy"] == curve[-1]["accuracy"]
    fit_evals = [c for c in log if c["desc"] == "fit eval"]
    assert len(fit_evals) == 1 and len(fit_evals[0]["questions"]) == 4


class RightForWrongReasons(ScriptedGenerator):
    """Right answers everywhere, but a wrong first step whenever a is odd."""

    def generate(self, prefix, questions, **kw):
        out = []
        for q in questions:
            a, b, _ = QUESTION.match(q).groups()
            pad = scratchpad_for(int(a), int(b))
            if int(a) % 2:  # the first column's sum off by one; the answer line stays right
                pad = re.sub(r"=(\d+)", lambda m: f"={int(m.group(1)) + 1}", pad, count=1)
            out.append(pad)
        return out


def test_scorer_errors_of_the_generate_and_rationalize_passes_are_logged(tmp_path):
    """gen/scorer_errors counts the answers of the two passes whose scoring raised (the task counts them in
    scorer_errors, as reasoning_gym does); scoring elsewhere (the eval stage, the prompt) is not counted."""
    loop, _ = make_loop(tmp_path, ["n_iterations=1"])
    task, real = loop.task, loop.task.is_correct
    task.scorer_errors = 0

    def is_correct(example, completion):
        task.scorer_errors += 1  # as if every scoring raised
        return real(example, completion)

    task.is_correct = is_correct
    history = loop.run()
    rats = A.read_jsonl(A.iter_dir(loop.run_dir, 1) / "rationalizations.jsonl")
    assert len(rats) > 0 and task.scorer_errors > 30 + len(rats), "eval scored too, uncounted"
    assert history[1]["gen/scorer_errors"] == 30 + len(rats)
    assert A.read_done(loop.run_dir, 1, "generate")["n_scorer_errors"] == 30


@pytest.mark.parametrize("only_faithful", [False, True])
def test_faithful_rate_and_keep_only_faithful(tmp_path, only_faithful):
    cfg = compose_config(BASE + ["n_iterations=1", f"method.keep_only_faithful={str(only_faithful).lower()}"])
    loop = StarLoop(cfg, tmp_path / "run", make_generator=lambda m, t: RightForWrongReasons([]))
    history = loop.run()
    n_odd = sum(ex.meta["a"] % 2 for ex in loop.task.load("train"))
    assert 0 < n_odd < 30
    assert history[1]["gen/solve_rate"] == 1.0
    assert history[1]["gen/faithful_rate"] == pytest.approx((30 - n_odd) / 30)
    assert history[1]["data/n_examples"] == (30 - n_odd if only_faithful else 30)


class SometimesBare(ScriptedGenerator):
    """ScriptedGenerator's answers, but a right answer is the answer line alone (no scratchpad) when b is odd."""

    def generate(self, prefix, questions, **kw):
        out = super().generate(prefix, questions, **kw)
        for n, q in enumerate(questions):
            a, b, hint = QUESTION.match(q).groups()
            if int(b) % 2 and out[n] == scratchpad_for(int(a), int(b)):
                out[n] = f" The answer is {int(a) + int(b)}.\n\n"
        return out


@pytest.mark.parametrize("min_lines", [0, 1])
def test_bare_answer_rate_and_min_rationale_lines(tmp_path, min_lines):
    """gen/bare_answer_rate/* is the fraction of kept completions with no reasoning line before the answer
    line, direct and rationalized apart; method.min_rationale_lines=1 trains on none of them, 0 on all."""
    cfg = compose_config(BASE + ["n_iterations=1", f"method.min_rationale_lines={min_lines}"])
    loop = StarLoop(cfg, tmp_path / "run", make_generator=lambda m, t: SometimesBare([]))
    history = loop.run()
    pairs = sums(loop)
    direct = [ex for ex, s in pairs if s % 3 == 0]
    rationalized = [ex for ex, s in pairs if s % 3 == 1 and ex.meta["a"] % 2 == 0]
    bare_direct = [ex for ex in direct if ex.meta["b"] % 2]
    bare_rat = [ex for ex in rationalized if ex.meta["b"] % 2]
    assert 0 < len(bare_direct) < len(direct) and 0 < len(bare_rat) < len(rationalized)
    m = history[1]
    assert m["gen/bare_answer_rate/direct"] == pytest.approx(len(bare_direct) / len(direct))
    assert m["gen/bare_answer_rate/rationalized"] == pytest.approx(len(bare_rat) / len(rationalized))
    d = A.iter_dir(loop.run_dir, 1)
    kept = [r for name in ("generations.jsonl", "rationalizations.jsonl") for r in A.read_jsonl(d / name)
            if r["correct"]]
    assert sorted(r["id"] for r in kept if r["reasoning_lines"] == 0) == sorted(ex.id for ex in bare_direct + bare_rat)
    train = A.read_jsonl(d / "train.jsonl")
    bare_ids = {ex.id for ex in bare_direct + bare_rat}
    if min_lines:
        assert [r["id"] for r in train] == [r["id"] for r in kept if r["id"] not in bare_ids]
        assert (m["data/n_direct"], m["data/n_rationalized"]) == (len(direct) - len(bare_direct),
                                                                  len(rationalized) - len(bare_rat))
    else:
        assert [r["id"] for r in train] == [r["id"] for r in kept]
        assert [r["completion"] for r in train] == [r["completion"] for r in kept]


def test_bare_answer_rate_is_absent_where_nothing_was_kept_or_nothing_counted():
    from star.metrics import bare_answer_rates

    bare, reasoned = {"reasoning_lines": 0}, {"reasoning_lines": 3}
    assert bare_answer_rates([bare, reasoned, reasoned, reasoned], []) == {"gen/bare_answer_rate/direct": 0.25}
    assert bare_answer_rates([], [bare]) == {"gen/bare_answer_rate/rationalized": 1.0}
    assert bare_answer_rates([{"completion": "written before the count was recorded"}], []) == {}


@pytest.mark.parametrize("hinted,for_finetuned", [(True, True), (False, True), (True, False)])
def test_rationalization_prompt_shows_hinted_exemplars(tmp_path, hinted, for_finetuned):
    loop, log = make_loop(tmp_path, ["n_iterations=2", f"rationalization.hinted_prompt={str(hinted).lower()}",
                                     f"rationalization.hinted_prompt_for_finetuned={str(for_finetuned).lower()}"])
    loop.run()
    prefixes = {c["desc"]: c["prefix"] for c in log}
    hinted_prefix = loop.task.fewshot_prompt(hint=True)
    assert "(hint: the answer is 132)" in hinted_prefix
    for n in (1, 2):
        # M0 is the prompted base; M1 was trained without the prompt (asked with "" unless shown hints).
        shown = hinted and (n == 1 or for_finetuned)
        expected = hinted_prefix if shown else prefixes[f"iter {n} generate"]
        assert prefixes[f"iter {n} rationalize"] == expected
    assert prefixes["iter 2 generate"] == ""


def test_fewshot_direct_asks_with_the_answers_only_prompt(tmp_path):
    loop, log = make_loop(tmp_path, ["method=fewshot_direct"])
    history = loop.run()
    assert len(history) == 1  # iteration 0 only
    assert log[0]["prefix"] == loop.task.fewshot_prompt(direct=True)
    assert "The answer is 132." in log[0]["prefix"] and "carry" not in log[0]["prefix"]


def test_direct_finetune_trains_on_every_gold_answer(tmp_path):
    seen = []

    def watching_finetune(model, tok, rows, **kwargs):
        seen.append(rows)
        return finetune(model, tok, rows, **kwargs)

    loop, log = make_loop(tmp_path, ["method=direct_finetune"], finetune_fn=watching_finetune)
    history = loop.run()
    assert len(history) == 2
    train = A.read_jsonl(A.iter_dir(loop.run_dir, 1) / "train.jsonl")
    questions = loop.task.load("train")
    assert [r["id"] for r in train] == [ex.id for ex in questions]
    assert all(r["source"] == "gold" and r["completion"] == loop.task.direct_completion(ex)
               for r, ex in zip(train, questions))
    assert seen == [train]
    assert history[1]["data/train_fraction"] == 1.0
    # No generation, no rationalization: only dev and test evaluations.
    assert [c["desc"] for c in log] == ["iter 0 eval", "iter 0 test", "iter 1 eval", "iter 1 test"]
    assert log[0]["prefix"] == log[1]["prefix"] == loop.task.fewshot_prompt(direct=True) and log[2]["prefix"] == ""


def test_gold_rationales_need_a_task_that_has_them():
    from star.config import ConfigError
    from star.preflight import preflight

    data = [f"task.data_files.{s}=tests/data/cqa/{s}.jsonl" for s in ("train", "dev")]
    cfg = compose_config(["task=cqa", *data, "method=direct_finetune", "method.direct=false"])
    with pytest.raises(ConfigError, match="method.direct=true"):
        preflight(cfg)  # the data is read there, not in the pure checks
