"""Stage 1, generate: every (sampled) training question answered by M(n-1), without a hint,
sampling.num_samples times (k; each sample with its own seed).

Writes iter_NN/generations.jsonl (one row per completion: completion, answer, correct, faithful; with
k > 1 also `sample`, its index among the question's k); returns the marker's counts: n_questions,
n_completions, n_correct (correct completions), n_solved (questions with at least one correct),
n_scorer_errors (answers whose scoring raised, scored wrong). method.data=gold (direct fine-tuning)
generates nothing.
"""

from __future__ import annotations

import time

from star import artifacts as A
from star.faults import crash_point
from star.model_cache import model_ref
from star.stages.context import StageContext
from star.stages.passes import answer_rows, sample_pass, solved_ids


def generate(ctx: StageContext, iteration: int) -> dict:
    questions = ctx.train_questions(iteration)
    out = A.stage_file(ctx.run_dir, iteration, "generations.jsonl")
    if ctx.cfg.method.data == "gold":
        # Supervised on the gold answers: nothing to generate.
        A.write_jsonl(out, [])
        return {"n_questions": len(questions), "n_completions": 0, "n_correct": 0, "n_solved": 0,
                "n_scorer_errors": 0, "gen_tokens": 0, "gen_tokens_per_s": 0.0}
    ref = model_ref(ctx.run_dir, iteration - 1)
    start = time.perf_counter()
    samples, completions, n_tokens = sample_pass(ctx, iteration, "generate", ref, ctx.prompt_for(ref), questions)
    seconds = time.perf_counter() - start
    crash_point(f"{iteration}/generate/after_batches")
    rows, n_scorer_errors = answer_rows(ctx, samples, completions)
    A.write_jsonl(out, rows)
    return {"n_questions": len(questions), "n_completions": len(rows), "n_correct": sum(r["correct"] for r in rows),
            "n_solved": len(solved_ids(rows)), "n_scorer_errors": n_scorer_errors,
            "gen_tokens": n_tokens, "gen_tokens_per_s": n_tokens / seconds if seconds > 0 else 0.0}
