"""Stage 5, evaluate: M(n) on dev, on test and on the task's extra evaluation splits, greedy, no hint,
in the format it was trained on.

Writes iter_NN/eval.json: `accuracy` is the dev fraction (dev is the split every selection reads: the
plateau stop, the best checkpoint), with per class and sample outputs; `test` holds the test split's
{accuracy, n, n_correct, per_class, per_class_n} (reported, never read by a selection rule), when the
task has a test split. Each of the task's `eval_splits` (e.g. arithmetic's "ood" from task.ood_digits)
gets an entry of the same shape under its name (generated with the split's own token budget), plus
its faithful_rate (every step right; None where the task cannot check steps) and sample outputs, and
`eval_splits` lists those names; both are absent when the task has none, so such runs write what they
always wrote. No timings, so equal runs write
equal files. Then the checkpoint retention policy (checkpoint.keep) runs, on dev.
"""

from __future__ import annotations

from star import artifacts as A
from star.evaluation import evaluate as score_split
from star.faults import crash_point
from star.model_cache import model_ref
from star.stages.context import StageContext

TEST_KEYS = ("accuracy", "n", "n_correct", "per_class", "per_class_n")


def evaluate(ctx: StageContext, iteration: int) -> dict:
    ref = model_ref(ctx.run_dir, iteration)
    generator, prefix, max_new_tokens = ctx.generator(ref), ctx.prompt_for(ref), ctx.cfg.task.max_new_tokens
    result = score_split(generator, ctx.task, ctx.task.load("dev"), prefix, max_new_tokens,
                         n_samples=ctx.cfg.logger.n_samples, desc=f"iter {iteration} eval")
    if "test" in ctx.task.splits:
        test = score_split(generator, ctx.task, ctx.task.load("test"), prefix, max_new_tokens, n_samples=0,
                           desc=f"iter {iteration} test")
        result["test"] = {k: test[k] for k in TEST_KEYS}
    # Extra evaluation splits (star/tasks/base.py): reported like test, never selected on.
    for name, budget in ctx.task.eval_splits.items():
        # With the faithful rate and sample outputs: what a model writes off its training distribution.
        extra = score_split(generator, ctx.task, ctx.task.load(name), prefix, budget or max_new_tokens,
                            n_samples=ctx.cfg.logger.n_samples, desc=f"iter {iteration} {name}", faithful=True)
        result[name] = {k: extra[k] for k in (*TEST_KEYS, "faithful_rate", "samples")}
    if ctx.task.eval_splits:
        result["eval_splits"] = list(ctx.task.eval_splits)
    crash_point(f"{iteration}/eval/before_write")
    A.write_json(A.stage_file(ctx.run_dir, iteration, "eval.json"), result)
    if ctx.cfg.checkpoint.keep == "last_and_best":
        A.prune_checkpoints(ctx.run_dir, iteration)
    return {"accuracy": result["accuracy"]}
