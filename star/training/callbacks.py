"""GenerationCallback: dev accuracy during fine-tuning, through the framework-free engine.

Lightning only tells it when; `evaluate_fn(model) -> dict` (built by the loop from the
generator, the task and a dev subset) does the generating and scoring. Results are
kept in `history` and logged to the Lightning logger, if any.
"""

from __future__ import annotations

from typing import Callable

import lightning as L


class GenerationCallback(L.Callback):
    def __init__(self, evaluate_fn: Callable[[object], dict], every_n_steps: int | None = None, at_fit_end: bool = True):
        self.evaluate_fn = evaluate_fn
        self.every_n_steps = every_n_steps
        self.at_fit_end = at_fit_end
        self.history: list[dict] = []

    def _run(self, trainer, pl_module) -> None:
        was_training = pl_module.model.training
        result = self.evaluate_fn(pl_module.model)
        pl_module.model.train(was_training)
        self.history.append({"step": trainer.global_step, **result})
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"fit/dev_{k}": v for k, v in result.items() if isinstance(v, float)},
                                       step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step < trainer.max_steps:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.at_fit_end:
            self._run(trainer, pl_module)


class KillAtStepCallback(L.Callback):
    """Fault-test hook: SIGKILL this process right after training step `step` (never in normal runs;
    the loop adds it only when STAR_KILL_AT names a training step)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
