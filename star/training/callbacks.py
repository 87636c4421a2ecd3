"""GenerationCallback: dev accuracy during fine-tuning, through the framework-free engine.

Lightning only tells it when; `evaluate_fn(model) -> dict` (built by the loop from the
generator, the task and a dev subset) does the generating and scoring. Results are
kept in `history` and logged to the Lightning logger, if any.
"""

from __future__ import annotations

from typing import Callable

import lightning as L

from star.faults import crash_point


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


class CrashPointCallback(L.Callback):
    """Fault tests: offers the crash point "<prefix>/step_<k>" after each training step k
    (see star/faults.py). The loop adds it only when such a point is requested."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        crash_point(f"{self.prefix}/step_{trainer.global_step}")
