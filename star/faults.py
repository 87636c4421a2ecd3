"""Fault injection for tests: die by SIGKILL at a named point, as a preempted or OOM-killed job would.

    STAR_KILL_AT="1/train/step_2" star ...     # dies right after training step 2 of iteration 1

Points: "<iteration>/<stage>/start" before each stage, "<iteration>/generate/after_batches",
"<iteration>/train/before_fit", "<iteration>/train/step_<k>", "<iteration>/train/after_fit",
"<iteration>/eval/before_write", and "<desc>/batch_<k>" after batch k of a generation pass
(desc as the loop names it, e.g. "iter 1 generate/batch_1", "iter 2 eval/batch_1").
Unset (every normal run), a crash point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "STAR_KILL_AT"


def crash_point(point: str) -> None:
    if os.environ.get(ENV_VAR) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def armed(prefix: str) -> bool:
    """Whether a kill is requested at some point starting with `prefix` (to add hooks only then)."""
    return os.environ.get(ENV_VAR, "").startswith(prefix)
