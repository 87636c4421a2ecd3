"""The run directory: the one place that knows its layout, plus atomic writes, stage markers,
checkpoint retention, the run lock and the check of finished stages.

Layout (one Hydra job; DESIGN.md and the README's "Outputs and resuming"):

    <run>/.hydra/config.yaml                 the composed config (written by Hydra)
    <run>/iter_00/eval.json                  few-shot baseline on dev
    <run>/iter_NN/generations.jsonl          every training question, answered by M(n-1)
    <run>/iter_NN/rationalizations.jsonl     the retries with the hint
    <run>/iter_NN/train.jsonl                the hint-free examples trained on
    <run>/iter_NN/checkpoint/                M(n)
    <run>/iter_NN/eval.json, metrics.json    dev accuracy; everything logged for the iteration
    <run>/iter_NN/<stage>.done               one marker per finished stage, written last
    <run>/iter_NN/shards/, slurm_train/      a pass split over workers; a fit run as a SLURM job
    <run>/metrics.csv                        one row per iteration
    <run>/train_steps.csv                    one row per fine-tuning step (global step), every iteration

Every file is written to a temp file in the same directory and renamed into place,
so a reader never sees half a file. A stage counts as finished only once its marker
exists; a restarted job redoes any stage without a marker from scratch.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable

# Files each stage writes in iter_NN/ (besides its marker and, for train, the checkpoint).
STAGE_FILES = {"generate": ("generations.jsonl",), "rationalize": ("rationalizations.jsonl",),
               "train": ("train.jsonl",), "eval": ("eval.json",), "log": ("metrics.json",)}
HYDRA_CONFIG = Path(".hydra") / "config.yaml"


def iter_dir(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / f"iter_{iteration:02d}"


def stage_file(run_dir: Path, iteration: int, name: str) -> Path:
    """A file of iteration `iteration`, e.g. stage_file(run, 1, "generations.jsonl")."""
    return iter_dir(run_dir, iteration) / name


def checkpoint_of_iteration(iteration: int) -> str:
    """Where M(iteration) is saved, relative to the run directory (train markers hold this form)."""
    return f"iter_{iteration:02d}/checkpoint"


TRAIN_STEPS_CSV = "train_steps.csv"


def train_steps_csv(run_dir: Path) -> Path:
    """<run>/train_steps.csv: one row per global training step of every finished fit."""
    return Path(run_dir) / TRAIN_STEPS_CSV


def steps_stream(run_dir: Path, iteration: int) -> Path:
    """The per-step rows of iteration `iteration`'s fit while it runs (star/training/steps.py); removed
    once they are in train_steps.csv."""
    return iter_dir(run_dir, iteration) / "train_steps.live.jsonl"


def shards_dir(run_dir: Path, iteration: int) -> Path:
    """Shard files of the passes of an iteration split over workers (star/sharding.py)."""
    return iter_dir(run_dir, iteration) / "shards"


def slurm_train_paths(run_dir: Path, iteration: int) -> tuple[Path, Path]:
    """(submitit's folder, the file holding the job id) of a fit run as one SLURM job."""
    d = iter_dir(run_dir, iteration)
    return d / "slurm_train", d / "slurm_train.json"


def hydra_config(run_dir: Path) -> Path:
    return Path(run_dir) / HYDRA_CONFIG


def hydra_overrides(run_dir: Path) -> Path:
    """The command line's overrides of the run (written by Hydra)."""
    return Path(run_dir) / HYDRA_CONFIG.parent / "overrides.yaml"


def metrics_of(run_dir: Path, iteration: int) -> Path:
    """iter_NN/metrics.json: written by the last stage, so its presence means the iteration finished."""
    return stage_file(run_dir, iteration, "metrics.json")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    """Write `text` as UTF-8, byte for byte (no newline translation), atomically."""
    _atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def marker(run_dir: Path, iteration: int, stage: str) -> Path:
    return iter_dir(run_dir, iteration) / f"{stage}.done"


def is_done(run_dir: Path, iteration: int, stage: str) -> bool:
    return marker(run_dir, iteration, stage).exists()


def mark_done(run_dir: Path, iteration: int, stage: str, info: dict | None = None) -> None:
    """Write the stage marker, holding the stage's own numbers (counts, timings) as JSON.

    Called only after every file of the stage is in place; a marker is never rewritten.
    """
    path = marker(run_dir, iteration, stage)
    if path.exists():
        raise RuntimeError(f"stage marker {path} exists already; a finished stage is never redone")
    write_json(path, info or {})


def read_done(run_dir: Path, iteration: int, stage: str) -> dict:
    return read_json(marker(run_dir, iteration, stage))


def temp_dir_for(dst: Path) -> Path:
    """A fresh temp directory beside `dst` (same filesystem, so the final rename is atomic)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp"))


def replace_dir(src: Path, dst: Path) -> None:
    """Move a fully written directory into place, replacing any stale one."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(src, dst)


def remove_stale_temps(directory: Path) -> None:
    """Delete temp files/dirs a killed process left behind (never read as complete)."""
    directory = Path(directory)
    if not directory.exists():
        return
    for p in directory.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


# ----------------------------------------------------------------------------- checkpoint retention

RETENTION_LOG = "checkpoint_retention.jsonl"


def _accuracy(run_dir: Path, iteration: int) -> float | None:
    path = iter_dir(run_dir, iteration) / "eval.json"
    return read_json(path)["accuracy"] if path.exists() else None


def _checkpoint_of(run_dir: Path, iteration: int) -> str | None:
    """The checkpoint (relative to the run) that IS M(iteration): its train marker's, which may be an
    older iteration's when nothing was kept; None for the base."""
    if iteration == 0 or not is_done(run_dir, iteration, "train"):
        return None
    return read_done(run_dir, iteration, "train").get("checkpoint")


def retained_deletions(run_dir: Path) -> set[str]:
    """Checkpoints the retention policy deleted on purpose (relative paths)."""
    log = Path(run_dir) / RETENTION_LOG
    return {r["deleted"] for r in read_jsonl(log)} if log.exists() else set()


def prune_checkpoints(run_dir: Path, iteration: int) -> list[str]:
    """checkpoint.keep=last_and_best: after iteration `iteration`'s eval, delete every checkpoint of
    iterations <= `iteration` except M(iteration) (the last: the next iteration generates with it,
    and trains from it when not restarting from the base) and the best by dev accuracy (ties: the
    earliest). Each deletion is logged to <run>/checkpoint_retention.jsonl before the directory is
    renamed to a temp name and removed, so a kill at any point leaves either the checkpoint or a
    temp dir that remove_stale_temps clears. Returns the deleted paths (relative to the run)."""
    run_dir = Path(run_dir)
    last = _checkpoint_of(run_dir, iteration)
    scored = [(acc, k) for k in range(1, iteration + 1)
              if (acc := _accuracy(run_dir, k)) is not None and _checkpoint_of(run_dir, k) is not None]
    best_iteration = max(scored, key=lambda s: (s[0], -s[1]))[1] if scored else None
    keep = {c for c in (last, _checkpoint_of(run_dir, best_iteration) if best_iteration else None) if c}
    existing = sorted(f"{d.parent.name}/{d.name}" for k in range(1, iteration + 1)
                      if (d := iter_dir(run_dir, k) / "checkpoint").is_dir())
    doomed = [c for c in existing if c not in keep]
    if not doomed:
        return []
    log = run_dir / RETENTION_LOG
    rows = read_jsonl(log) if log.exists() else []
    logged = {r["deleted"] for r in rows}
    rows += [{"after_iteration": iteration, "deleted": c, "kept": sorted(keep), "best_iteration": best_iteration}
             for c in doomed if c not in logged]
    write_jsonl(log, rows)
    for c in doomed:
        src = run_dir / c
        tmp = src.with_name(f".{src.name}.deleted.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        os.replace(src, tmp)
        shutil.rmtree(tmp)
    return doomed


# ----------------------------------------------------------------------------- run lock

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds this run directory."""


class RunLock:
    """An exclusive lock on a run directory, so two processes never write the same run.

    flock() is released by the kernel when its owner dies, SIGKILL included, so a killed or
    requeued job never blocks its own restart. The file keeps the last owner's pid and host
    for the error message."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(
                f"run directory {self.path.parent} is in use by {holder}; wait for that run to finish, "
                "or choose another hydra.run.dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# ----------------------------------------------------------------------------- verification

def corrupt_reason(path: Path) -> str | None:
    """Why a finished stage's file cannot be trusted (missing, unparsable), or None if it reads.
    Directories are checkpoints: config.json and every safetensors file must open."""
    path = Path(path)
    if not path.exists():
        return "missing"
    try:
        if path.is_dir():
            if not (path / "config.json").is_file():
                return "config.json missing"
            shards = sorted(path.glob("*.safetensors"))
            if not shards:
                return "no .safetensors file"
            from safetensors import safe_open

            for shard in shards:
                with safe_open(str(shard), framework="pt") as f:
                    f.keys()
            index = path / "model.safetensors.index.json"
            if index.exists():
                needed = set(read_json(index)["weight_map"].values())
                missing = sorted(n for n in needed if not (path / n).is_file())
                if missing:
                    return f"shard {missing[0]} missing"
        elif path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    return f"line {n} is not JSON ({e.msg})"
        elif path.suffix in (".json", ".done"):
            read_json(path)
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable ({e})"
    return None


def stage_problem(run_dir: Path, iteration: int, stage: str) -> tuple[Path, str] | None:
    """(path, why) for the first file a finished stage left that is missing or corrupt, or None."""
    why = corrupt_reason(marker(run_dir, iteration, stage))
    if why:
        return marker(run_dir, iteration, stage), why
    files = [stage_file(run_dir, iteration, name) for name in STAGE_FILES[stage]]
    if stage == "train":
        checkpoint = read_done(run_dir, iteration, "train").get("checkpoint")
        # A checkpoint the retention policy deleted on purpose is not a fault.
        if checkpoint and checkpoint not in retained_deletions(run_dir):
            files.append(Path(run_dir) / checkpoint)
    return next(((f, why) for f in files if (why := corrupt_reason(f))), None)


def undo_from_first_corrupt_stage(run_dir: Path, order: list[tuple[int, str]]) -> tuple[int, str, Path, str] | None:
    """Find the first finished stage (in run order) whose files are truncated or corrupt and remove its
    marker and every later one (they were built from it), so the run redoes them. Returns (iteration,
    stage, the bad file, why) of that stage, or None when every finished stage reads."""
    for k, (iteration, stage) in enumerate(order):
        if not is_done(run_dir, iteration, stage):
            continue
        problem = stage_problem(run_dir, iteration, stage)
        if problem is None:
            continue
        for later_iteration, later_stage in order[k:]:
            marker(run_dir, later_iteration, later_stage).unlink(missing_ok=True)
        return iteration, stage, *problem
    return None
