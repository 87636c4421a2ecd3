"""Stage 5, evaluate: M(n) on dev, greedy, no hint, in the format it was trained on.

Writes iter_NN/eval.json (accuracy, per class, sample outputs; no timings, so equal runs write equal
files), then applies the checkpoint retention policy (checkpoint.keep).
"""

from __future__ import annotations

from star import artifacts as A
from star.evaluation import evaluate as score_split
from star.faults import crash_point
from star.model_cache import model_ref
from star.stages.context import StageContext


def evaluate(ctx: StageContext, iteration: int) -> dict:
    ref = model_ref(ctx.run_dir, iteration)
    result = score_split(ctx.generator(ctx.models.get(ref)), ctx.task, ctx.task.load("dev"), ctx.prompt_for(ref),
                         ctx.cfg.task.max_new_tokens, n_samples=ctx.cfg.logger.n_samples, desc=f"iter {iteration} eval")
    crash_point(f"{iteration}/eval/before_write")
    A.write_json(A.stage_file(ctx.run_dir, iteration, "eval.json"), result)
    if ctx.cfg.checkpoint.keep == "last_and_best":
        A.prune_checkpoints(ctx.run_dir, iteration)
    return {"accuracy": result["accuracy"]}
