"""Stage 6, log: the iteration's metrics.json (star/metrics.py), then W&B and metrics.csv through the
tracker. Written last, so an iteration with metrics.json is finished."""

from __future__ import annotations

from star import artifacts as A
from star.metrics import iteration_metrics
from star.stages.context import StageContext


def log(ctx: StageContext, iteration: int) -> dict:
    metrics, samples = iteration_metrics(ctx.run_dir, iteration, n_samples=ctx.cfg.logger.n_samples)
    A.write_json(A.metrics_of(ctx.run_dir, iteration), metrics)
    if ctx.tracker is not None:
        ctx.tracker.log_iteration(iteration, metrics, samples)
    return {}
