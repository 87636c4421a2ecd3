"""Stage 3, rationalize (when enabled): every question M(n-1) got wrong (none of its
sampling.num_samples completions correct), asked again with the gold answer as a hint, as many times;
a completion that repeats the hint is never kept.

Writes iter_NN/rationalizations.jsonl (the raw completions with the hint, correct, hint_leaked);
returns the marker's counts: n_failures (questions), n_attempted (completions), n_correct (correct
completions), n_solved (questions with one), n_hint_leaked, n_scorer_errors. The hint is stripped later: the train stage pairs each kept completion
with the question WITHOUT the hint.
"""

from __future__ import annotations

import random

from star import artifacts as A
from star.model_cache import model_ref
from star.stages.context import StageContext
from star.stages.passes import answer_rows, sample_pass, samples_of, solved_ids
from star.tasks.base import Example


def rationalize(ctx: StageContext, iteration: int) -> dict:
    generations = A.read_jsonl(A.stage_file(ctx.run_dir, iteration, "generations.jsonl"))
    # The questions generated for (none under method.data=gold), in their order, that none of their
    # samples solved (a question's k rows share its id).
    asked, solved = {r["id"] for r in generations}, solved_ids(generations)
    failures = [ex for ex in ctx.train_questions(iteration) if ex.id in asked and ex.id not in solved]
    chosen = chosen_failures(ctx, iteration, failures)
    samples, completions = retry_with_hint(ctx, iteration, chosen) if chosen else ([], [])
    rows, n_scorer_errors = answer_rows(ctx, samples, completions)
    for (ex, _), row in zip(samples, rows):
        # A completion that repeats the hint would carry it into training: never keep it.
        row["hint_leaked"] = ctx.task.hint_text(ex).strip() in row["completion"]
        row["correct"] = row["correct"] and not row["hint_leaked"]
    A.write_jsonl(A.stage_file(ctx.run_dir, iteration, "rationalizations.jsonl"), rows)
    return {"n_failures": len(failures), "n_attempted": len(rows), "n_correct": sum(r["correct"] for r in rows),
            "n_solved": len(solved_ids(rows)), "n_hint_leaked": sum(r["hint_leaked"] for r in rows),
            "n_scorer_errors": n_scorer_errors}


def chosen_failures(ctx: StageContext, iteration: int, failures: list[Example]) -> list[Example]:
    """The failures to retry: each with probability rationalization.p_rationalization (a seeded coin per
    question), none when rationalization is off or the method trains on gold answers."""
    rcfg = ctx.cfg.rationalization
    if not rcfg.enabled or ctx.cfg.method.data != "generated":
        return []
    return [ex for ex in failures
            if random.Random(ctx.seed(iteration, "p_rationalization", ex.id)).random() < rcfg.p_rationalization]


def retry_with_hint(ctx: StageContext, iteration: int,
                    chosen: list[Example]) -> tuple[list[tuple[Example, int]], list[str]]:
    """((question, sample index) per completion, completions): sampling.num_samples completions of M(n-1)
    per chosen question shown with its hint (the debug oracle: the task's own gold rationale, once per
    sample). rationalization.hinted_prompt shows the exemplars with their hints too (to a fine-tuned
    model asked without a prompt only with rationalization.hinted_prompt_for_finetuned)."""
    rcfg = ctx.cfg.rationalization
    if rcfg.gold_oracle:
        samples = samples_of(ctx, chosen)
        return samples, [ctx.task.gold_rationale(ex) or "" for ex, _ in samples]
    ref = model_ref(ctx.run_dir, iteration - 1)
    hinted = rcfg.hinted_prompt and (ref.prompted or rcfg.hinted_prompt_for_finetuned)
    prefix = ctx.task.fewshot_prompt(hint=True) if hinted else ctx.prompt_for(ref)
    samples, completions, _ = sample_pass(ctx, iteration, "rationalize", ref, prefix, chosen, hint=True)
    return samples, completions
