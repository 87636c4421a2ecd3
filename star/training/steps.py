"""Per-step rows of a fit, as it runs: written by rank 0, forwarded live, kept as train_steps.csv.

    log = StepLog(path, iteration=2, offset=40)     # a Lightning callback (picklable: spawned DDP ranks
                                                    # and SLURM tasks get it too); rank 0 writes
    with StepForwarder(path, sink=tracker.log_step):  # the loop's process: tails the file, forwards rows
        finetune(..., callbacks=[log, ...])
    rows = read_step_rows(path)                     # every whole row, for train_steps.csv

Rows (one JSON object a line, flushed as written, so a reader tails them whichever process fits):
    after each optimizer step  {"iteration", "step", "global_step", "train/loss", "train/lr",
                                "train/grad_norm", "train/tokens_per_s", "time/elapsed_s"}
    a generation-callback point {"iteration", "step", "global_step", "fit/dev_accuracy"}
`step` counts this fit's optimizer steps (1..K); `global_step` adds the steps of every earlier
iteration's fit (`offset`), so it keeps increasing over a run and a fit redone after a kill gets the
same values again. `train/grad_norm` is the L2 norm of the gradients before clipping (under FSDP: rank
0's shard); `train/lr` the learning rate the step used; `train/tokens_per_s` rank 0's tokens (under DDP, one rank's share).

train_steps.csv (the run directory; `merge_train_steps`) holds one row per global step of every
finished fit: a redone fit replaces its iteration's rows, so no step is counted twice.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from pathlib import Path
from typing import Callable

import lightning as L
import torch

STEP_KEYS = ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "time/elapsed_s")
DEV_KEY = "fit/dev_accuracy"
CSV_COLUMNS = ("iteration", "step", "global_step", *STEP_KEYS, DEV_KEY)


class StepLog(L.Callback):
    """Appends this fit's per-step rows to `path` (rank 0 only). `offset`: steps of earlier fits."""

    def __init__(self, path: str | Path, iteration: int, offset: int):
        self.path = str(path)
        self.iteration = int(iteration)
        self.offset = int(offset)
        self._file = None

    # ---- writing ----
    def write(self, row: dict) -> None:
        if self._file is None:
            return  # not rank 0, or outside the fit
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()  # whole lines reach the file as they happen: the forwarder tails it

    def dev_point(self, step: int, result: dict) -> None:
        """A generation-callback result ({"accuracy": ...}) at `step` of this fit."""
        self.write({"iteration": self.iteration, "step": step, "global_step": self.offset + step,
                    DEV_KEY: float(result["accuracy"])})

    # ---- Lightning hooks ----
    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - open for the whole fit
        self._start = self._last = time.perf_counter()
        self._tokens = pl_module.n_tokens
        self._lr = self._grad_norm = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self._file is None:
            return
        self._lr = float(optimizer.param_groups[0]["lr"])
        norms = [p.grad.detach().float().norm(2) for p in pl_module.parameters() if p.grad is not None]
        self._grad_norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._file is None:
            return
        now = time.perf_counter()
        step = trainer.global_step
        tokens = pl_module.n_tokens - self._tokens
        self.write({"iteration": self.iteration, "step": step, "global_step": self.offset + step,
                    "train/loss": pl_module.losses[-1] if pl_module.losses else None,
                    "train/lr": self._lr, "train/grad_norm": self._grad_norm,
                    "train/tokens_per_s": tokens / (now - self._last) if now > self._last else None,
                    "time/elapsed_s": now - self._start})
        self._last, self._tokens = now, pl_module.n_tokens

    def on_train_end(self, trainer, pl_module):
        self.close()

    def on_exception(self, trainer, pl_module, exception):
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):  # pickled to spawned ranks and SLURM tasks without an open file
        return {**self.__dict__, "_file": None}


def read_step_rows(path: str | Path) -> list[dict]:
    """Every whole row of a step file (a line cut by a kill is left out); [] when there is none."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n"):
            rows.append(json.loads(line))
    return rows


class StepForwarder:
    """While the fit runs (a `with` block), hands every whole row written to `path` to `sink`, from a thread
    that polls the file; on exit it forwards what is left. `sink` errors stop the forwarding, not the fit."""

    def __init__(self, path: str | Path, sink: Callable[[dict], None], poll_s: float = 0.5):
        self.path, self.sink, self.poll_s = Path(path), sink, poll_s
        self._stop = threading.Event()
        self._offset = 0
        self._thread = threading.Thread(target=self._loop, name="star-step-forwarder", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> StepForwarder:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            stopping = self._stop.wait(self.poll_s)
            try:
                self._forward_new_lines()
            except Exception as e:  # noqa: BLE001 - a logging failure must not break the fit
                self.error = e
                return
            if stopping:
                return

    def _forward_new_lines(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # only whole lines; a line still being written waits for the next poll
        for line in data[:end].decode("utf-8").splitlines():
            if line.strip():
                self.sink(json.loads(line))
        self._offset += end


def merge_train_steps(csv_path: str | Path, iteration: int, rows: list[dict]) -> str:
    """The text of train_steps.csv with `iteration`'s rows replaced by `rows` (one row per global step:
    a dev point joins its step's row); other iterations' rows are kept as they are."""
    csv_path = Path(csv_path)
    kept: list[dict] = []
    if csv_path.exists():
        with csv_path.open(encoding="utf-8", newline="") as f:
            kept = [r for r in csv.DictReader(f) if int(r["iteration"]) != iteration]
    by_step: dict[int, dict] = {}
    for row in rows:
        merged = by_step.setdefault(int(row["global_step"]), {})
        merged.update({k: v for k, v in row.items() if v is not None})
    new = [{k: "" if merged.get(k) is None else merged[k] for k in CSV_COLUMNS} for _, merged in sorted(by_step.items())]
    all_rows = sorted(kept + new, key=lambda r: int(r["global_step"]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(all_rows)
    return buf.getvalue()
