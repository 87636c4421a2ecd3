"""Stage 3, rationalize (when enabled): every question M(n-1) got wrong, asked again with the gold
answer as a hint; a completion that repeats the hint is never kept.

Writes iter_NN/rationalizations.jsonl (the raw completions with the hint, correct, hint_leaked);
returns the marker's counts. The hint is stripped later: the train stage pairs each kept completion
with the question WITHOUT the hint.
"""

from __future__ import annotations

import random

from star import artifacts as A
from star.model_cache import model_ref
from star.stages.context import StageContext
from star.stages.passes import answer_rows, run_pass
from star.tasks.base import Example


def rationalize(ctx: StageContext, iteration: int) -> dict:
    generations = A.read_jsonl(A.stage_file(ctx.run_dir, iteration, "generations.jsonl"))
    by_id = {ex.id: ex for ex in ctx.train_questions(iteration)}
    failures = [by_id[r["id"]] for r in generations if not r["correct"]]
    chosen = chosen_failures(ctx, iteration, failures)
    completions = retry_with_hint(ctx, iteration, chosen) if chosen else []
    rows, n_scorer_errors = answer_rows(ctx, chosen, completions)
    for ex, row in zip(chosen, rows):
        # A completion that repeats the hint would carry it into training: never keep it.
        row["hint_leaked"] = ctx.task.hint_text(ex).strip() in row["completion"]
        row["correct"] = row["correct"] and not row["hint_leaked"]
    A.write_jsonl(A.stage_file(ctx.run_dir, iteration, "rationalizations.jsonl"), rows)
    return {"n_failures": len(failures), "n_attempted": len(rows), "n_correct": sum(r["correct"] for r in rows),
            "n_hint_leaked": sum(r["hint_leaked"] for r in rows),
            "n_scorer_errors": n_scorer_errors}


def chosen_failures(ctx: StageContext, iteration: int, failures: list[Example]) -> list[Example]:
    """The failures to retry: each with probability rationalization.p_rationalization (a seeded coin per
    question), none when rationalization is off or the method trains on gold answers."""
    rcfg = ctx.cfg.rationalization
    if not rcfg.enabled or ctx.cfg.method.data != "generated":
        return []
    return [ex for ex in failures
            if random.Random(ctx.seed(iteration, "p_rationalization", ex.id)).random() < rcfg.p_rationalization]


def retry_with_hint(ctx: StageContext, iteration: int, chosen: list[Example]) -> list[str]:
    """Completions of M(n-1) for the chosen questions shown with their hint (the debug oracle: the task's
    own gold rationales). rationalization.hinted_prompt shows the exemplars with their hints too (to a
    fine-tuned model asked without a prompt only with rationalization.hinted_prompt_for_finetuned)."""
    rcfg = ctx.cfg.rationalization
    if rcfg.gold_oracle:
        return [ctx.task.gold_rationale(ex) or "" for ex in chosen]
    ref = model_ref(ctx.run_dir, iteration - 1)
    hinted = rcfg.hinted_prompt and (ref.prompted or rcfg.hinted_prompt_for_finetuned)
    prefix = ctx.task.fewshot_prompt(hint=True) if hinted else ctx.prompt_for(ref)
    completions, _ = run_pass(ctx, iteration, "rationalize", ref, prefix,
                              [ctx.task.format_question(ex, hint=True) for ex in chosen],
                              [ctx.seed(iteration, "rationalize", ex.id) for ex in chosen])
    return completions
