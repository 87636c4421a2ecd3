"""Fault injection for tests: die by SIGKILL at a named point, as a preempted or OOM-killed job would.

    STAR_KILL_AT="1/train/step_2" star ...     # dies right after training step 2 of iteration 1

Points: "<iteration>/<stage>/start" before each stage, "<iteration>/generate/after_batches",
"<iteration>/train/before_fit", "<iteration>/train/step_<k>", "<iteration>/train/after_fit",
"<iteration>/eval/before_write", and "<desc>/batch_<k>" after batch k of a generation pass
(desc as the loop names it, e.g. "iter 1 generate/batch_1", "iter 2 eval/batch_1").
Unset (every normal run), a crash point costs one environment lookup.

    STAR_PAUSE_AT="1/train/step_2:/tmp/paused" star ...   # waits there, forever, the first time

A pause point holds the process at the named point until a signal ends it, so a test can interrupt
a job at a known place (a SLURM requeue, a preemption) with work certainly left. The file after the
colon is created when the pause begins; a process that finds it already there (the requeued job)
goes straight on.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV_VAR = "STAR_KILL_AT"
PAUSE_VAR = "STAR_PAUSE_AT"


def crash_point(point: str) -> None:
    if os.environ.get(ENV_VAR) == point:
        os.kill(os.getpid(), signal.SIGKILL)
    if PAUSE_VAR in os.environ:
        where, _, sentinel = os.environ[PAUSE_VAR].partition(":")
        if where == point and sentinel and not Path(sentinel).exists():
            Path(sentinel).touch()
            while True:  # until a signal kills the process (or its handler exits it)
                time.sleep(0.1)


def armed(prefix: str) -> bool:
    """Whether a kill or pause is requested at some point starting with `prefix` (to add hooks only then)."""
    return any(os.environ.get(var, "").startswith(prefix) for var in (ENV_VAR, PAUSE_VAR))
