"""Lightning callbacks of a fit.

GenerationCallback: dev accuracy during fine-tuning, through the framework-free engine.
Lightning only tells it when; `evaluate_fn(model) -> dict` (built by the loop from the
generator, the task and a dev subset) does the generating and scoring. Each result goes to
`report(step, result)` (the train stage sends them to the per-step rows: fit/dev_accuracy in
W&B and train_steps.csv, and the train marker's dev_curve).

TrainProgress: the fit's progress (`iter 1 train: step 12/40`, loss, tokens per second) through
star/progress.py, in place of Lightning's own bar (which reads `Epoch 2/-2` for a run of max_steps).
CrashPointCallback: fault points after each step (tests).
"""

from __future__ import annotations

from typing import Callable

import lightning as L

from star.faults import crash_point
from star.progress import Progress


class GenerationCallback(L.Callback):
    def __init__(self, evaluate_fn: Callable[[object], dict], every_n_steps: int | None = None, at_fit_end: bool = True,
                 report: Callable[[int, dict], None] | None = None):
        self.evaluate_fn = evaluate_fn
        self.every_n_steps = every_n_steps
        self.at_fit_end = at_fit_end
        self.report = report  # (step, result): e.g. StepLog.dev_point, which W&B gets live

    def _run(self, trainer, pl_module) -> None:
        # Under DDP every rank holds the whole model: rank 0 generates, the others wait for it.
        if trainer.is_global_zero:
            was_training = pl_module.model.training
            result = self.evaluate_fn(pl_module.model)
            pl_module.model.train(was_training)
            if self.report is not None:
                self.report(trainer.global_step, result)
        if trainer.world_size > 1:
            trainer.strategy.barrier("generation_callback")

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


class TrainProgress(L.Callback):
    """Progress of the fit, on rank 0 only: a tqdm bar on a terminal, a line every 10% elsewhere."""

    def __init__(self, desc: str, total_steps: int):
        self.desc = desc
        self.total_steps = total_steps
        self.progress: Progress | None = None

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.progress = Progress(self.desc, self.total_steps, unit="step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.progress is None or not pl_module.losses:
            return
        # Until the fit ends each rank counts only its own tokens: rank 0's times the world size
        # estimates the total (ranks get batches of about the same size).
        self.progress.update(trainer.global_step, tokens=pl_module.n_tokens * trainer.world_size,
                             loss=pl_module.losses[-1])

    def on_train_end(self, trainer, pl_module):
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def on_exception(self, trainer, pl_module, exception):
        self.on_train_end(trainer, pl_module)  # the bar ends where the fit did
