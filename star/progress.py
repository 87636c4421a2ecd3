"""Progress of a long loop (a fit's steps, a generation pass's questions), readable where it lands.

On a terminal (stderr is a TTY) it is a tqdm bar. Anywhere else (a SLURM log, a pipe, a file) a bar's
carriage returns would pile up as one endless line, so it writes ONE LINE to stderr each time another
`every_pct` percent is done (and at the end):

    iter 1 train: step 12/40 (30%), loss 0.61, 158 tok/s

    bar = Progress("iter 1 train", total=40, unit="step")
    for k in range(1, 41):
        ...
        bar.update(k, tokens=n_tokens_so_far, loss=last_loss)
    bar.close()

`tokens` is a running total; the rate is over the time since the Progress was made.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, desc: str, total: int, *, unit: str = "step", enabled: bool = True, every_pct: int = 10,
                 leave: bool = True, stream: TextIO | None = None):
        self.desc = desc
        self.total = total
        self.unit = unit
        self.enabled = enabled
        self.every_pct = every_pct
        self.stream = stream if stream is not None else sys.stderr  # read now: pytest swaps sys.stderr
        self.start = time.perf_counter()
        self.done = 0
        self.tokens: int | None = None
        self.loss: float | None = None
        self._bucket = 0          # line mode: the last every_pct step that was written
        self._written = False     # line mode: the current `done` has its line
        self.bar = None
        if enabled and _isatty(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, file=self.stream, dynamic_ncols=True)

    def tokens_per_s(self) -> float | None:
        if self.tokens is None:
            return None
        seconds = time.perf_counter() - self.start
        return self.tokens / seconds if seconds > 0 else 0.0

    def update(self, done: int, *, tokens: int | None = None, loss: float | None = None) -> None:
        """`done` of `total` are finished (an absolute count); `tokens`: the running total so far."""
        if not self.enabled:
            return
        advanced = done - self.done
        self.done = done
        self.tokens = tokens if tokens is not None else self.tokens
        self.loss = loss if loss is not None else self.loss
        if self.bar is not None:
            stats = {}
            if self.loss is not None:
                stats["loss"] = f"{self.loss:.3g}"
            rate = self.tokens_per_s()
            if rate is not None:
                stats["tok/s"] = f"{rate:.0f}"
            self.bar.set_postfix(stats, refresh=False)
            self.bar.update(advanced)
            return
        if advanced:
            self._written = False
        bucket = self.percent() // self.every_pct
        if bucket > self._bucket:
            self._bucket = bucket
            self._write()

    def percent(self) -> int:
        return 100 * self.done // self.total if self.total > 0 else 100

    def line(self) -> str:
        parts = [f"{self.desc}: {self.unit} {self.done}/{self.total} ({self.percent()}%)"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3g}")
        rate = self.tokens_per_s()
        if rate is not None:
            parts.append(f"{rate:.0f} tok/s")
        return ", ".join(parts)

    def _write(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._written = True

    def close(self) -> None:
        """The end: closes the bar, or writes the last line if the last update did not (a loop that stopped
        short of `total`, or at a count between two every_pct steps)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif not self._written and self.done:
            self._write()
        self.enabled = False  # closed: further updates and closes do nothing


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
