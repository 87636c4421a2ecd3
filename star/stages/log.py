"""Stage 6, log: the iteration's metrics.json (star/metrics.py), then W&B and metrics.csv through the
tracker. Written last, so an iteration with metrics.json is finished.

`summarize` (called by the loop when the run stops) writes <run>/summary.json and the W&B run's summary:
what a sweep table needs (final and best dev accuracy, final test accuracy (and final/<split>_accuracy
of each extra evaluation split, e.g. ood), iterations, total stage time,
stop_reason: finished, plateau or failed)."""

from __future__ import annotations

from star import artifacts as A
from star.metrics import iteration_metrics, reported_splits
from star.stages.context import StageContext


def log(ctx: StageContext, iteration: int) -> dict:
    metrics, samples = iteration_metrics(ctx.run_dir, iteration, n_samples=ctx.cfg.logger.n_samples)
    A.write_json(A.metrics_of(ctx.run_dir, iteration), metrics)
    if ctx.tracker is not None:
        ctx.tracker.log_iteration(iteration, metrics, samples)
    return {}


SUMMARY_FILE = "summary.json"


def run_summary(ctx: StageContext, history: list[dict], stop_reason: str) -> dict:
    """The run's summary from its finished iterations' metrics (`history`, iteration 0 first)."""
    summary: dict = {"stop_reason": stop_reason, "iterations": len(history) - 1 if history else 0}
    if history:
        dev = [h["eval/accuracy"] for h in history]
        best = max(range(len(dev)), key=lambda i: (dev[i], -i))  # ties: the earliest, as checkpoint retention
        summary.update({"final/dev_accuracy": dev[-1], "best/dev_accuracy": dev[best],
                        "best/iteration": history[best]["iteration"]})
        # test, and each extra evaluation split the task reports (ood/accuracy -> final/ood_accuracy).
        for split in reported_splits(history[-1]):
            summary[f"final/{split}_accuracy"] = history[-1][f"{split}/accuracy"]
    # Wall time of the work kept: every finished stage's seconds (a resumed run's retries not counted).
    summary["time/total_s"] = sum(A.read_json(p).get("seconds", 0.0) for p in sorted(ctx.run_dir.glob("iter_*/*.done")))
    return summary


def summarize(ctx: StageContext, history: list[dict], stop_reason: str) -> dict:
    summary = run_summary(ctx, history, stop_reason)
    A.write_json(ctx.run_dir / SUMMARY_FILE, summary)
    if ctx.tracker is not None:
        ctx.tracker.summarize(summary)
    return summary
