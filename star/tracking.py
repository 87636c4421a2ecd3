"""Per-iteration tracking: W&B (offline by default) and a metrics.csv.

What
    `Tracker` records one row of metrics per STaR iteration (step = iteration)
    and a table of sample rationales, to
      - Weights & Biases, when `logger.wandb` is true and `logger.mode` is not
        "disabled" (mode "offline" by default: nothing leaves the machine), and
      - `<run>/metrics.csv`, when `logger.csv` is true.
    With both off (logger=none) it does nothing and writes nothing.

How to use
    with Tracker(run_dir, cfg.logger, config=OmegaConf.to_container(cfg), run_name="job") as tracker:
        tracker.log_iteration(1, {"eval/accuracy": 0.5}, samples=[{"iteration": 1, "kind": "eval", ...}])

    The caller chooses which samples to log (see `logger.n_samples`).

Run directory layout (everything W&B writes stays inside the run directory)
    <run>/wandb_run_id.txt             the one W&B run id of this run directory
    <run>/wandb_step.txt               the next W&B step to hand out (see Resuming)
    <run>/wandb/offline-run-<time>-<id>[-N]/run-<id>.wandb
                                       one per process (a resumed run adds one)
    <run>/wandb/{data,cache,config,artifacts}/
                                       what wandb would otherwise put under ~
    <run>/metrics.csv                  one row per iteration

Durability
    Each log_iteration() opens the W&B run (resume="allow"), logs and finishes it, so
    an iteration reported as logged is on disk even if the job is SIGKILLed later.

Resuming
    A new Tracker on the same run directory reuses the stored run id with
    resume="allow". Offline, each W&B session (one per logged iteration) writes a NEW
    `offline-run-*` directory holding that part of the run; `wandb sync <run>/wandb/offline-run-*`
    uploads them as one run, file by file in order of start time. Every row gets a W&B
    step larger than all before it (a counter reserved ahead in <run>/wandb_step.txt),
    so steps keep increasing across parts and restarts; charts use `iteration` as the x
    axis of per-iteration rows and `train/global_step` for per-step rows. Re-logging an
    iteration replaces its row in metrics.csv and adds a row in W&B (same `iteration`).

Live fine-tuning curves
    with tracker.live(): ... tracker.log_step(row)  holds the W&B run open during a fit
    and logs each per-step row (train/loss, train/lr, train/grad_norm, train/tokens_per_s,
    fit/dev_accuracy; star/training/steps.py) on `train/global_step` as it comes. A fit
    redone after a kill logs its steps again with the same global steps.
    `tracker.summarize({...})` sets the run's summary (final/best accuracies, stop_reason).

Reading back (tests, reports)
    `read_wandb_offline(run_dir)` returns every history row of the offline run
    parts, in time order. It runs `wandb leet inspect --json FILE` (the decoder
    that ships with wandb, in wandb-core) on each `run-<id>.wandb` log, because
    wandb 0.31 no longer ships a Python reader for the transaction log.
    `read_wandb_run_ids(run_dir)` returns the run ids found there.

Limits
    One open W&B Tracker per process: wandb keeps one global session, and finish()
    tears it down (so the next run directory gets a wandb-core of its own).
    Because WANDB_CONFIG_DIR points into the run directory, wandb's global settings
    file (~/.config/wandb/settings) is not read: for a non-default server in online
    mode set WANDB_BASE_URL. The API key still comes from WANDB_API_KEY or ~/.netrc.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import string
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from star import artifacts as A

RUN_ID_FILE = "wandb_run_id.txt"
# The next W&B step not yet handed out (reserved in blocks): every row of every part gets a larger step
# than the rows before it, per-iteration and per-step rows alike, across restarts.
STEP_FILE = "wandb_step.txt"
STEP_BLOCK = 100
# Per-step rows (log_step) are charted against this; per-iteration rows against `iteration`.
GLOBAL_STEP = "train/global_step"
METRICS_CSV = "metrics.csv"
WANDB_SUBDIR = "wandb"

# wandb has no Settings field for these; it reads them from the environment (and
# wandb-core inherits the environment when it starts). Without them it writes to
# ~/.cache/wandb, ~/.local/share/wandb, ~/.config/wandb. Value: subfolder of <run>/wandb.
_WANDB_ENV_DIRS = {
    "WANDB_DATA_DIR": "data",
    "WANDB_CACHE_DIR": "cache",
    "WANDB_CONFIG_DIR": "config",
    "WANDB_ARTIFACT_DIR": "artifacts",
}

# wandb names a part offline-run-YYYYMMDD_HHMMSS-<id>, plus -N when the name is taken
# (two parts of one run started within the same second).
_OFFLINE_DIR_RE = re.compile(r"^offline-run-(\d{8}_\d{6})-(.+)$")


def _csv_cell(value: Any) -> str:
    return "" if value is None else str(value)


def _read_csv(path: Path) -> dict[int, dict[str, str]]:
    """Rows of an existing metrics.csv keyed by iteration (empty cells dropped)."""
    if not path.exists():
        return {}
    rows: dict[int, dict[str, str]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            iteration = int(row.pop("iteration"))
            rows[iteration] = {k: v for k, v in row.items() if v != ""}
    return rows


def _samples_table(samples: list[dict]) -> Any:
    import wandb

    # Columns: every key seen, in first-seen order, so rows of different kinds fit.
    columns: list[str] = []
    for sample in samples:
        columns.extend(k for k in sample if k not in columns)

    def cell(value: Any) -> Any:
        # A table cell must be a plain value; anything else is shown as text.
        return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)

    return wandb.Table(columns=columns, data=[[cell(s.get(c)) for c in columns] for s in samples])


class Tracker:
    """Logs per-iteration metrics and samples to W&B and/or metrics.csv (see module doc)."""

    def __init__(self, run_dir: Path, logger_cfg: Any, config: dict, run_name: str | None = None):
        # Absolute: the W&B env vars below must not depend on a later chdir.
        self.run_dir = Path(run_dir).absolute()
        self.logger_cfg = logger_cfg
        self.use_wandb = bool(logger_cfg.wandb) and logger_cfg.mode != "disabled"
        self.use_csv = bool(logger_cfg.csv)
        self.run: Any = None  # the wandb Run while one is open
        self._saved_env: dict[str, str | None] = {}
        # Earlier rows survive a restart: a resumed job keeps them in metrics.csv.
        self._rows = _read_csv(self.run_dir / METRICS_CSV) if self.use_csv else {}
        self._config, self._run_name = config, run_name
        self._next_step = self._reserved_step = None  # W&B steps, loaded on first use
        self._step_keys: set[str] = set()  # per-step keys declared (define_metric) in the open session
        if self.use_wandb and logger_cfg.mode == "online":
            # Fail before any work, not at the end of iteration 0.
            self._start_wandb(config, run_name)
            self._close_wandb()

    # ---- context manager ----
    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # A run left by an exception is marked failed rather than finished.
        self.finish(exit_code=1 if exc_type is not None else None)

    # ---- W&B ----
    def run_id(self) -> str:
        """The run directory's W&B run id, created (and stored atomically) on first use."""
        path = self.run_dir / RUN_ID_FILE
        if path.exists():
            run_id = path.read_text(encoding="utf-8").strip()
            if run_id:
                return run_id
        # Same shape as wandb's own ids: 8 lowercase letters and digits.
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        A.write_text(path, run_id + "\n")
        return run_id

    def _start_wandb(self, config: dict, run_name: str | None) -> None:
        import wandb

        cfg = self.logger_cfg
        wandb_dir = self.run_dir / WANDB_SUBDIR
        wandb_dir.mkdir(parents=True, exist_ok=True)
        for var, sub in _WANDB_ENV_DIRS.items():
            self._saved_env[var] = os.environ.get(var)
            os.environ[var] = str(wandb_dir / sub)
        settings = wandb.Settings(
            silent=True,  # no banners or sync hints on stdout
            console="off",  # our stdout is not copied into the run
            use_dot_wandb=False,  # always <run>/wandb, even if a .wandb folder exists
        )
        try:
            self.run = wandb.init(
                dir=str(self.run_dir),  # wandb writes to <dir>/wandb
                id=self.run_id(),
                resume="allow",
                mode=cfg.mode,
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group,
                name=cfg.name or run_name,
                config=config,
                settings=settings,
            )
        except Exception as e:
            self._close_wandb(exit_code=1)
            if cfg.mode == "online":
                raise RuntimeError(
                    f"W&B could not start an online run ({e}). Set WANDB_API_KEY (or run "
                    "`wandb login`), or log locally with logger.mode=offline and upload later "
                    "with `wandb sync`."
                ) from e
            raise
        # Charts use the iteration as x axis, also for rows from a resumed part; per-step keys (log_step)
        # are declared on the global step as they first appear.
        self.run.define_metric("iteration")
        self.run.define_metric(GLOBAL_STEP)
        self.run.define_metric("*", step_metric="iteration")
        self._step_keys = set()

    def _close_wandb(self, exit_code: int | None = None) -> None:
        import wandb

        try:
            if self.run is not None:
                self.run.finish(exit_code=exit_code)
        finally:
            self.run = None
            try:
                # Stop wandb-core: it keeps the environment it started with, and the
                # next Tracker (another run directory) must start one with its own.
                wandb.teardown(exit_code=exit_code)
            finally:
                for var, old in self._saved_env.items():
                    if old is None:
                        os.environ.pop(var, None)
                    else:
                        os.environ[var] = old
                self._saved_env = {}

    def _wandb_step(self) -> int:
        """The next W&B step: larger than every step logged before in this run directory (by any process)."""
        path = self.run_dir / STEP_FILE
        if self._next_step is None:
            if path.exists():
                self._next_step = int(path.read_text(encoding="utf-8"))
            else:  # past any row logged before steps were counted here (those used step = iteration)
                self._next_step = _max_iteration(self.run_dir) + 1
            self._reserved_step = self._next_step
        if self._next_step >= self._reserved_step:
            # Reserved on disk before use: a killed process's successor starts past every step it used.
            self._reserved_step = self._next_step + STEP_BLOCK
            A.write_text(path, f"{self._reserved_step}\n")
        step = self._next_step
        self._next_step += 1
        return step

    # ---- logging ----
    @contextmanager
    def live(self) -> Iterator[None]:
        """Hold the W&B run open for a block (a fit), so that log_step rows go out as they come.

        Best effort: the rows are in train_steps.csv whatever happens here, so a W&B failure (wandb-core
        killed with a preempted job's process group, a network error online) is a warning, never the
        fit's failure."""
        if not self.use_wandb:
            yield
            return
        try:
            self._start_wandb(self._config, self._run_name)
        except Exception as e:  # noqa: BLE001 - see above
            warnings.warn(f"[star] W&B gets no per-step rows for this fit: {e}", stacklevel=3)
            yield
            return
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            try:
                self._close_wandb(exit_code=1 if failed else None)
            except Exception as e:  # noqa: BLE001 - see above
                warnings.warn(f"[star] W&B could not close the fit's per-step rows: {e}", stacklevel=3)

    def log_step(self, row: dict) -> None:
        """One per-step row of a fit (star/training/steps.py) on the global step, inside `live()`.
        Outside it (or without W&B) this does nothing: train_steps.csv keeps the rows either way."""
        if self.run is None:
            return
        data = {k: v for k, v in row.items() if k not in ("iteration", "step", "global_step") and v is not None}
        for key in data.keys() - self._step_keys:
            self.run.define_metric(key, step_metric=GLOBAL_STEP)
            self._step_keys.add(key)
        self.run.log({**data, GLOBAL_STEP: int(row["global_step"])}, step=self._wandb_step())

    def summarize(self, summary: dict[str, Any]) -> None:
        """Set the W&B run's summary (what a sweep table shows); metrics.csv is not touched."""
        if not self.use_wandb:
            return
        self._start_wandb(self._config, self._run_name)
        try:
            self.run.summary.update(summary)
        except BaseException:
            self._close_wandb(exit_code=1)
            raise
        self._close_wandb()

    def log_iteration(self, iteration: int, metrics: dict[str, float], samples: list[dict]) -> None:
        """Log one iteration's metrics (step = iteration) and, if any, its samples table."""
        iteration = int(iteration)
        metrics = {k: v for k, v in metrics.items() if k != "iteration"}
        if self.use_csv:
            # Replace, not append: a redone iteration must not appear twice.
            self._rows[iteration] = {k: _csv_cell(v) for k, v in metrics.items()}
            self._write_csv()
        if self.use_wandb:
            # One W&B session per iteration, finished before returning: wandb-core buffers
            # its offline log, and a job killed later (SIGKILL, preemption) would otherwise
            # lose iterations it had already marked as logged.
            self._start_wandb(self._config, self._run_name)
            try:
                data: dict[str, Any] = {**metrics, "iteration": iteration}
                if samples:
                    data["samples"] = _samples_table(samples)
                self.run.log(data, step=self._wandb_step())
            except BaseException:
                self._close_wandb(exit_code=1)
                raise
            self._close_wandb()

    def _write_csv(self) -> None:
        keys = sorted({k for row in self._rows.values() for k in row})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["iteration", *keys], restval="", lineterminator="\n")
        writer.writeheader()
        for iteration in sorted(self._rows):
            writer.writerow({"iteration": iteration, **self._rows[iteration]})
        A.write_text(self.run_dir / METRICS_CSV, buf.getvalue())

    def finish(self, exit_code: int | None = None) -> None:
        """Close the W&B run (if any) and restore the environment. Safe to call twice."""
        if self._saved_env or self.run is not None:
            self._close_wandb(exit_code=exit_code)


def _max_iteration(run_dir: Path) -> int:
    """The last iteration with metrics.json (-1: none)."""
    done = [int(p.parent.name[len("iter_"):]) for p in Path(run_dir).glob("iter_*/metrics.json")]
    return max(done, default=-1)


# ---- reading back ----
def _offline_logs(run_dir: Path) -> list[Path]:
    """Every offline run-<id>.wandb log under <run>/wandb, oldest part first."""
    found = []
    for part in (Path(run_dir) / WANDB_SUBDIR).glob("offline-run-*"):
        match = _OFFLINE_DIR_RE.match(part.name)
        if not match or not part.is_dir():
            continue
        timespec, rest = match.groups()
        for log in part.glob("run-*.wandb"):
            run_id = log.name[len("run-") : -len(".wandb")]
            suffix = rest[len(run_id) + 1 :] if rest.startswith(run_id + "-") else ""
            # Same-second parts: the -N suffix orders them (numerically, so -10 > -9).
            found.append(((timespec, int(suffix) if suffix.isdigit() else 0, part.name), log))
    return [log for _, log in sorted(found)]


def _inspect_records(log: Path) -> list[dict]:
    """The records of one .wandb log, decoded by `wandb leet inspect --json`."""
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"`wandb leet inspect --json {log}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _json_number(value: Any) -> Any:
    # JSON has no NaN or infinities; leet writes them as these strings.
    return float(value) if value in ("NaN", "Infinity", "-Infinity") else value


def read_wandb_offline(run_dir: Path) -> list[dict]:
    """Every history row logged to the offline W&B run parts in run_dir, in time order.

    Each row holds the logged scalar values plus `_step`; media (the samples table)
    and wandb's own `_runtime` / `_timestamp` are left out.
    """
    rows = []
    for log in _offline_logs(run_dir):
        for record in _inspect_records(log):
            if record.get("type") != "history":
                continue
            history = record["history"]
            item = history.get("item", {})
            # leet flattens nested values to "key.sub"; media (the samples table) is a
            # nested value with a "_type" entry, e.g. "samples._type": "table-file".
            media = {k[: -len("._type")] for k in item if k.endswith("._type")}
            row = {
                k: _json_number(v)
                for k, v in item.items()
                if not k.startswith("_")
                and k not in media
                and k.split(".", 1)[0] not in media
                and (v is None or isinstance(v, (str, int, float, bool)))
            }
            # protobuf JSON omits zero values, so step 0 may have no explicit number.
            row["_step"] = item.get("_step", history.get("step", {}).get("num", 0))
            rows.append(row)
    return rows


def read_wandb_summary(run_dir: Path) -> dict:
    """The W&B run's summary as the offline parts set it (later updates win; wandb's own `_` keys left out)."""
    summary: dict = {}
    for log in _offline_logs(run_dir):
        for record in _inspect_records(log):
            if record.get("type") == "summary":
                update = record["summary"].get("update", {})
                summary.update({k: _json_number(v) for k, v in update.items() if not k.startswith("_")})
    return summary


def iteration_rows(history: list[dict]) -> list[dict]:
    """The per-iteration rows of read_wandb_offline's history (per-step rows have no `iteration`)."""
    return [r for r in history if "iteration" in r]


def step_rows(history: list[dict]) -> list[dict]:
    """The per-step rows (train/*, fit/* on train/global_step) of read_wandb_offline's history."""
    return [r for r in history if GLOBAL_STEP in r]


def read_wandb_run_ids(run_dir: Path) -> set[str]:
    """The W&B run ids of the offline parts in run_dir (wandb names each log run-<id>.wandb)."""
    return {log.name[len("run-") : -len(".wandb")] for log in _offline_logs(run_dir)}
