"""The metrics of one iteration, read back from its files and stage markers (DESIGN.md, "Metrics").

    metrics, samples = iteration_metrics(run_dir, 1, n_samples=8)
    metrics["eval/accuracy"], metrics["test/accuracy"], metrics["gen/solve_rate"], metrics["data/train_fraction"]

gen/solve_rate is the fraction of training questions with at least one correct completion among their
sampling.num_samples (k); gen/sample_accuracy the fraction of all k x N completions that are correct
(the two are equal for k = 1); gen/rationalized_rate the fraction of questions solved with the hint;
gen/unique_kept the distinct correct completions that passed the keep filters (whitespace-normalized,
before method.max_kept_per_question caps them); data/train_fraction the questions with at least one
kept example over N, data/n_examples the examples (up to max_kept_per_question per question).

eval/* is the dev split (every selection reads it), test/* the test split (reported only; absent
when the task has no test split); eval/n and test/n count their questions. Each of the task's extra
evaluation splits (eval.json's `eval_splits`, e.g. arithmetic's ood from task.ood_digits) gets
<name>/accuracy, <name>/n and <name>/accuracy/<class> the same way, and <name>/faithful_rate (the
fraction of its completions whose every step is right, where the task checks steps): reported only,
absent without one. train/final_loss is the fit's mean loss over its last quarter of steps (train/loss is the
per-step loss, in <run>/train_steps.csv); fit/final_dev_accuracy the last dev accuracy the
generation callback measured during the fit, when it ran (fit/dev_accuracy is each of its points,
on the global step).

gen/bare_answer_rate/direct and gen/bare_answer_rate/rationalized are the fractions of the kept
(correct) completions of each kind with no line of reasoning before their answer line (a bare
" The answer is 67."); absent when none of that kind was kept.

`samples` are the table of example outputs W&B shows: the first dev answers, and the first kept
direct and rationalized completions. Everything is derived from files already written, so a log
stage redone after a crash logs exactly what the first try would have.
"""

from __future__ import annotations

from pathlib import Path

from star import artifacts as A


def iteration_metrics(run_dir: Path, iteration: int, n_samples: int) -> tuple[dict, list[dict]]:
    ev = A.read_json(A.stage_file(run_dir, iteration, "eval.json"))
    metrics: dict = {"iteration": iteration}
    # eval/* is dev (what selection reads); test/* is the reported split, when the task has one; then the
    # task's extra evaluation splits (e.g. ood/*), reported like test.
    extra = [(name, ev[name]) for name in ev.get("eval_splits", [])]
    for prefix, split in [("eval", ev), ("test", ev.get("test")), *extra]:
        if split is not None:
            metrics.update({f"{prefix}/accuracy": split["accuracy"], f"{prefix}/n": split["n"]})
            metrics.update({f"{prefix}/accuracy/{cls}": acc for cls, acc in split["per_class"].items()})
            if split.get("faithful_rate") is not None:  # extra splits only: dev and test are scored without it
                metrics[f"{prefix}/faithful_rate"] = split["faithful_rate"]
    metrics["time/eval_s"] = A.read_done(run_dir, iteration, "eval")["seconds"]
    samples = [{"iteration": iteration, "kind": "eval", **s} for s in ev["samples"]]
    samples += [{"iteration": iteration, "kind": name, **s} for name, _ in extra for s in ev[name].get("samples", [])]
    if iteration == 0:
        return metrics, samples
    kept = [r for r in A.read_jsonl(A.stage_file(run_dir, iteration, "generations.jsonl")) if r["correct"]]
    kept_rat = [r for r in A.read_jsonl(A.stage_file(run_dir, iteration, "rationalizations.jsonl")) if r["correct"]]
    metrics.update(training_metrics(run_dir, iteration, kept + kept_rat))
    metrics.update(bare_answer_rates(kept, kept_rat))
    for kind, rows in (("direct", kept), ("rationalized", kept_rat)):
        samples += [{"iteration": iteration, "kind": kind, "id": r["id"], "question": r["question"],
                     "gold": r["gold"], "completion": r["completion"], "answer": r["answer"],
                     "correct": r["correct"]} for r in rows[:n_samples]]
    return metrics, samples


def reported_splits(metrics: dict) -> list[str]:
    """The splits an iteration's metrics report besides dev, by their <name>/accuracy keys: "test" and each
    extra evaluation split (e.g. "ood"); sorted."""
    return sorted({key.split("/")[0] for key in metrics if key.count("/") == 1 and key.endswith("/accuracy")}
                  - {"eval"})


def bare_answer_rates(kept: list[dict], kept_rat: list[dict]) -> dict:
    """gen/bare_answer_rate/direct and /rationalized: of the kept (correct) completions of each kind, the
    fraction with no line of reasoning before their answer line (the row's reasoning_lines is 0). Kept
    before method.min_rationale_lines filters, so the rate shows what that filter drops. A kind with no
    kept row that records reasoning_lines (none kept; files written before it was recorded) is absent."""
    out = {}
    for kind, rows in (("direct", kept), ("rationalized", kept_rat)):
        counts = [r["reasoning_lines"] for r in rows if r.get("reasoning_lines") is not None]
        if counts:
            out[f"gen/bare_answer_rate/{kind}"] = sum(n == 0 for n in counts) / len(counts)
    return out


def training_metrics(run_dir: Path, iteration: int, kept: list[dict]) -> dict:
    """gen/*, data/*, train/*, fit/*, perf/* and time/* of an iteration's generate, rationalize and train stages."""
    gen, rat, train = (A.read_done(run_dir, iteration, stage) for stage in ("generate", "rationalize", "train"))
    n = gen["n_questions"]
    # Markers written before sampling.num_samples existed hold one completion per question: n_correct
    # counted questions then.
    n_completions = gen.get("n_completions", n)
    metrics = {
        "gen/solve_rate": gen.get("n_solved", gen["n_correct"]) / n,
        "gen/sample_accuracy": gen["n_correct"] / n_completions if n_completions else 0.0,
        "gen/rationalized_rate": rat.get("n_solved", rat["n_correct"]) / n,
        "gen/hint_leaked": rat["n_hint_leaked"],
        # Answers (direct and rationalized) whose scoring raised and were scored wrong; markers written
        # before this count existed read as 0.
        "gen/scorer_errors": gen.get("n_scorer_errors", 0) + rat.get("n_scorer_errors", 0),
        "gen/unique_kept": train.get("n_unique", train["n_examples"]),
        "data/train_fraction": train.get("n_kept_questions", train["n_examples"]) / n,
        "data/n_examples": train["n_examples"],
        "data/n_direct": train["n_direct"],
        "data/n_rationalized": train["n_rationalized"],
        "data/n_questions": n,
        "train/steps": train["steps"],
        "perf/gen_tokens_per_s": gen["gen_tokens_per_s"],
    }
    faithful = [r["faithful"] for r in kept if r["faithful"] is not None]
    if faithful:
        metrics["gen/faithful_rate"] = sum(faithful) / len(faithful)
    if train["loss"] is not None:
        # The fit's mean loss over its last quarter of steps; train/loss is the per-step loss
        # (<run>/train_steps.csv), so the per-iteration value has a name of its own.
        metrics["train/final_loss"] = train["loss"]
        metrics["perf/train_tokens_per_s"] = train["train_tokens_per_s"]
    if train.get("dev_curve"):  # the generation callback's dev accuracy during the fit: its last point
        metrics["fit/final_dev_accuracy"] = train["dev_curve"][-1]["accuracy"]
    for stage, info in (("generate", gen), ("rationalize", rat), ("train", train)):
        metrics[f"time/{stage}_s"] = info["seconds"]
    return metrics
