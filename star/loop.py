"""The outer STaR loop: the only place that knows the order of the stages and when to stop.

    iteration 0:  eval (the few-shot base M0 on dev) -> log
    iteration n:  generate -> rationalize -> train (filter, then fine-tune -> M(n)) -> eval -> log
    stop:         after n_iterations, or when dev accuracy plateaus (plateau_patience; test is never read);
                  then summary.json and the W&B summary (stop_reason: finished, plateau or failed)

Each stage (star/stages/) writes its files atomically; the loop then writes the stage's marker
`iter_NN/<stage>.done` (its counts and time). A restarted run skips every stage with a marker and
redoes the first one without, from scratch; a finished stage whose files are corrupt is redone
with every stage after it. All randomness derives from (seed, iteration, stage, example id), so a
redone stage gives what an uninterrupted run would have.

    from star.loop import StarLoop
    StarLoop(cfg, run_dir, tracker=tracker).run()      # one metrics dict per finished iteration
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable

from star import artifacts as A
from star.faults import crash_point
from star.stages.context import StageContext
from star.stages.evaluate import evaluate
from star.stages.generate import generate
from star.stages.log import log, summarize
from star.stages.rationalize import rationalize
from star.stages.train import train
from star.tracking import Tracker
from star.training import finetune

# The few-shot baseline, then the paper's iteration (DESIGN.md, "The algorithm, exactly").
BASELINE_STAGES: dict[str, Callable] = {"eval": evaluate, "log": log}
ITERATION_STAGES: dict[str, Callable] = {"generate": generate, "rationalize": rationalize, "train": train,
                                         "eval": evaluate, "log": log}


def stages_of(iteration: int) -> dict[str, Callable]:
    return BASELINE_STAGES if iteration == 0 else ITERATION_STAGES


def plateaued(accuracies: list[float], patience: int | None, min_delta: float = 0.0) -> bool:
    """The stopping rule: no gain over the best earlier dev accuracy within `patience` iterations."""
    if patience is None or len(accuracies) <= patience:
        return False
    return max(accuracies[-patience:]) <= max(accuracies[:-patience]) + min_delta


class StarLoop:
    """Runs (or resumes) one STaR run in `run_dir`. make_generator and finetune_fn are injectable so
    tests can script generation and watch fine-tuning (star/stages/context.py)."""

    def __init__(self, cfg, run_dir: Path, *, make_generator: Callable | None = None,
                 finetune_fn: Callable = finetune, tracker: Tracker | None = None):
        self.cfg = cfg
        self.ctx = StageContext(cfg, Path(run_dir), make_generator=make_generator, finetune_fn=finetune_fn,
                                tracker=tracker)
        self.run_dir = self.ctx.run_dir
        self.task = self.ctx.task

    def run(self) -> list[dict]:
        """Run every unfinished stage; return one metrics dict per finished iteration."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.redo_corrupt_stages()
        if "test" not in self.task.splits:
            print(f"[star] task {self.cfg.task.name} has no test split here (set task.data_files.test to add one): "
                  "every accuracy reported is dev, the split the plateau stop and the best checkpoint select on")
        history, stop_reason = [], "finished"
        try:
            for iteration in range(self.cfg.n_iterations + 1):
                self.run_iteration(iteration)
                history.append(A.read_json(A.metrics_of(self.run_dir, iteration)))
                if plateaued([h["eval/accuracy"] for h in history], self.cfg.plateau_patience,
                             self.cfg.plateau_min_delta):
                    print(f"[star] dev accuracy plateaued; stopping after iteration {iteration}")
                    stop_reason = "plateau"
                    break
        except Exception:
            self.summarize_failed(history)
            raise
        finally:
            self.ctx.close()  # a generation engine of its own (generator=vllm) stops with the run
        summarize(self.ctx, history, stop_reason)
        return history

    def run_iteration(self, iteration: int) -> None:
        A.remove_stale_temps(A.iter_dir(self.run_dir, iteration))
        for name, stage in stages_of(iteration).items():
            if A.is_done(self.run_dir, iteration, name):
                continue
            crash_point(f"{iteration}/{name}/start")
            start = time.perf_counter()
            info = stage(self.ctx, iteration)
            info["seconds"] = time.perf_counter() - start
            A.mark_done(self.run_dir, iteration, name, info)

    def summarize_failed(self, history: list[dict]) -> None:
        """stop_reason=failed in the summary, if it can still be written (the error itself is raised)."""
        try:
            summarize(self.ctx, history, "failed")
        except Exception as e:  # noqa: BLE001 - a full disk or W&B failure must not hide the run's own error
            warnings.warn(f"[star] could not write the run summary: {e}", stacklevel=2)

    def redo_corrupt_stages(self) -> None:
        """A finished stage whose files are truncated or corrupt is redone, with every stage after it."""
        order = [(n, name) for n in range(self.cfg.n_iterations + 1) for name in stages_of(n)]
        found = A.undo_from_first_corrupt_stage(self.run_dir, order)
        if found is not None:
            iteration, stage, path, why = found
            warnings.warn(f"[star] {path.relative_to(self.run_dir)} is corrupt ({why}): redoing stage '{stage}' "
                          f"of iteration {iteration} and every stage after it", stacklevel=2)
