"""Task data through `datasets`: a hub dataset when online, local files with the same fields offline.

One place for what every file-backed task (cqa, gsm8k) does the same way: find the rows of
a split, check them, make the three splits leak-free, and cap them. The tasks only say which
fields a row needs, what a good row looks like and which questions their few-shot files hold.

    source = DataSource(task="cqa", hub_id="tau/commonsense_qa", hub_config=None,
                        hub_splits={"train": "train", "test": "validation"},
                        data_files={"train": "cqa_train.jsonl", "dev": None, "test": None},
                        required=("id", "question", "choices", "answerKey"), schema=CQA_SCHEMA)
    source.task_splits()                     # ("train", "dev"): a train file and no test file
    rows = load_rows(source, "train", limit=None, check_row=my_row_checker)
    splits = split_rows(source, read, question=lambda r: r["question"], exemplars=[...],
                        sizes={"train": 1000, "dev": 500, "test": 1500})
    # The same schema read from elsewhere (a task's hub_id, hub_config and data_files keys):
    mine = source.with_location("me/cqa-copy", None, {"train": "a.jsonl", "dev": None})

Their config keys (task.data_files, task.hub_id, task.hub_config) are `HubDataConfig`, which
each file-backed task's own config schema extends.

Where each split comes from (split_rows):
- train: its file, else the hub's train split.
- dev: its file, else carved from the train rows: task.dev_size rows picked by a constant seed
  (random.Random("star-<task>-dev"), never the run seed, so every run of every seed selects on
  the same dev questions), kept in file order. The carve takes dev first, from all train rows,
  so dev does not change with train_size.
- test: its file, else the hub's test split (hub_splits["test"]) when train comes from the hub
  too. A run given a train file and no test file has no test split (task_splits() says so).
Leak-free: a row whose question is a few-shot exemplar's is dropped from every split; test
keeps the rest; dev drops questions of the test data; train drops those of the test data and
of dev (a dev file's rows, or the carved ones). Questions compare by normalize_question
(whitespace collapsed, case folded). Then each split keeps its first task.<split>_size rows.

Decisions worth knowing:
- A split with a file in data_files is read from that file (json: one array of objects or
  JSON lines; jsonl; parquet) with `datasets.load_dataset("json" | "parquet", ...)`. A split
  without one is read from the hub with `datasets.load_dataset(hub_id, hub_config,
  split=...)`. The hub is never contacted for a split that has a file.
- Every row of every file is checked, also rows past the cap or dropped as leaks, so a broken
  file fails whatever the cap. Errors name the row (counting from 1 in file order, plus its
  id when it has one) and at most MAX_REPORTED rows are listed.
- The cap keeps the first `limit` rows in file order; a file with fewer rows is used whole.
- Errors are TaskDataError, a ValueError: config validation turns it into a one-line
  ConfigError before any model loads.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from star.tasks.base import SPLITS, TaskConfig, normalize_question

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
MAX_REPORTED = 10

# What load("test") says when a run given a train file has no test file.
NO_TEST_FIX = "set task.data_files.test=PATH to add one (with a train file, test comes only from a file)"

# Offline, `datasets` retries the hub for about 25 s before it gives up; this says how to skip that.
OFFLINE_TIP = "set HF_HUB_OFFLINE=1 to fail fast without the network"


@dataclass
class DataFilesConfig:
    """task.data_files: a local file per split, read instead of the hub. None: train and test
    from the hub (test: only when train is too), dev carved from the train rows."""

    train: Optional[str] = None
    dev: Optional[str] = None
    test: Optional[str] = None


@dataclass
class HubDataConfig(TaskConfig):
    """The config keys of a task whose data comes through `datasets` (cqa, gsm8k)."""

    # Local files (json, jsonl, parquet) with the hub's fields, read instead of the hub (offline).
    data_files: DataFilesConfig = field(default_factory=DataFilesConfig)
    # The `datasets` hub id (and config name) read for a split without a file.
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None


def data_files_of(task_cfg) -> dict[str, str | None]:
    """{"train": file or None, "dev": ..., "test": ...} from a task config's data_files (absent: None)."""
    files = getattr(task_cfg, "data_files", None)
    return {split: getattr(files, split, None) for split in SPLITS}


class TaskDataError(ValueError):
    """Task data that cannot be read or is malformed; the message names the row or field and the fix."""


@dataclass(frozen=True)
class DataSource:
    """Where a task's splits come from and what their rows must hold.

    task:       the task name, for messages ("cqa")
    hub_id:     `datasets` hub id read when a split has no local file (None: files only)
    hub_config: the hub dataset's config name ("main" for gsm8k), or None
    hub_splits: our split name -> the hub's ("test" -> "validation"); dev is never read from the hub
    data_files: our split name -> a local file, or None (see the module docstring)
    required:   fields every row must have (a missing one is a schema error)
    schema:     one example row in the expected schema, shown in schema errors
    """

    task: str
    hub_id: str | None
    hub_config: str | None
    hub_splits: Mapping[str, str]
    data_files: Mapping[str, str | None]
    required: tuple[str, ...]
    schema: str
    splits: tuple[str, ...] = field(default=SPLITS)

    def with_location(self, hub_id: str | None, hub_config: str | None,
                      data_files: Mapping[str, str | None] | None) -> "DataSource":
        """A copy that reads this hub dataset and these files: data_files maps a split to a file;
        a split it does not name (or maps to None) comes from the hub; other keys are dropped."""
        files = dict(data_files or {})
        return replace(self, hub_id=hub_id, hub_config=hub_config,
                       data_files={split: files.get(split) for split in self.splits})

    def task_splits(self) -> tuple[str, ...]:
        """The splits a task reading this source has: test only from a test file, or from the
        hub when train comes from the hub too."""
        if self.data_files.get("test") or not self.data_files.get("train"):
            return SPLITS
        return ("train", "dev")

    def files_hint(self) -> str:
        return (f"task.data_files.train=PATH task.data_files.test=PATH, and task.data_files.dev=PATH or none "
                f"(dev is then carved from train) (json, jsonl or parquet; one row per question with the "
                f"hub's fields, e.g. {self.schema})")


@dataclass(frozen=True)
class SourcedRow:
    """A checked row and where it was read: origin is the file or hub split ("train", "dev",
    "test"; a carved dev row's origin is "train") and index its position there, from 0."""

    origin: str
    index: int
    row: dict


def load_rows(source: DataSource, split: str, limit: int | None,
              check_row: Callable[[dict], list[str]] | None = None,
              row_id: Callable[[dict], Any] | None = None, unique: str | None = None) -> list[dict]:
    """The rows of `split` as plain dicts in file order, every row checked, the first `limit` kept.

    check_row(row) returns the row's problems as short phrases ([] for a good row); row_id(row)
    gives an id to name the row in messages; `unique` names a field no two rows may share.
    Raises TaskDataError.
    """
    if split not in source.splits:
        raise TaskDataError(f"unknown split '{split}' for {source.task}; valid splits: {', '.join(source.splits)}")
    path = source.data_files.get(split)
    if path:
        where = f"{source.task} {split} file {path} (task.data_files.{split})"
        dataset = _load_file(Path(path), where)
    else:
        where = f"{source.task} {split} split of {source.hub_id}"
        dataset = _load_hub(source, split)
    check_columns(list(dataset.column_names), source, where)
    rows = dataset.to_list()
    if not rows:
        raise TaskDataError(f"{where} has no rows; give it at least one question")
    if check_row is not None:
        check_rows(rows, check_row, where, row_id)
    if unique is not None:
        check_unique(rows, unique, where)
    return rows if limit is None else rows[:limit]


def split_rows(source: DataSource, read: Callable[[str], list[dict]], question: Callable[[dict], str],
               exemplars: list[str], sizes: Mapping[str, int]) -> dict[str, list[SourcedRow]]:
    """The rows of every split in source.task_splits(), leak-free and capped (the module
    docstring says how): split -> SourcedRows in file order.

    read(split) gives every row of the file or hub split `split`, checked (it raises otherwise);
    question(row) a row's question; exemplars the few-shot files' questions; sizes the caps.
    Raises TaskDataError when a split has no row left.
    """
    def key(r: SourcedRow) -> str:
        return normalize_question(question(r.row))

    taken = {normalize_question(q) for q in exemplars}
    out: dict[str, list[SourcedRow]] = {}
    train = sourced("train", read("train"))
    if "test" in source.task_splits():
        test = sourced("test", read("test"))
        out["test"] = [r for r in test if key(r) not in taken][: sizes["test"]]
        taken |= {key(r) for r in test}
    if source.data_files.get("dev"):
        dev = sourced("dev", read("dev"))
        out["dev"] = [r for r in dev if key(r) not in taken][: sizes["dev"]]
        taken |= {key(r) for r in dev}
    else:
        # A constant seed, not the run's: every run of every seed selects on the same dev questions.
        rng = random.Random(f"star-{source.task}-dev")
        out["dev"] = carve(train, lambda r: key(r) not in taken, sizes["dev"], rng)
        taken |= {key(r) for r in out["dev"]}
    out["train"] = [r for r in train if key(r) not in taken][: sizes["train"]]
    for split, rows in out.items():
        if not rows:
            raise TaskDataError(f"{source.task} {split} split has no rows left: "
                                f"{empty_reason(source, split, sizes['dev'])}")
    return {split: out[split] for split in source.task_splits()}


def sourced(origin: str, rows: list[dict]) -> list[SourcedRow]:
    """Rows read from `origin`, each with its position there."""
    return [SourcedRow(origin, n, row) for n, row in enumerate(rows)]


def carve(rows: list[SourcedRow], eligible: Callable[[SourcedRow], bool], n: int,
          rng: random.Random) -> list[SourcedRow]:
    """n eligible rows picked in the order of one shuffle of all rows (so which rows are
    eligible moves the pick only where they differ), returned in file order."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    picked: list[int] = []
    for i in order:
        if len(picked) == n:
            break
        if eligible(rows[i]):
            picked.append(i)
    return [rows[i] for i in sorted(picked)]


def empty_reason(source: DataSource, split: str, dev_size: int) -> str:
    """Why a split can end up empty, and the fix."""
    dropped = "every question is a few-shot exemplar's"
    if split == "dev" and not source.data_files.get("dev"):
        return f"dev is carved from the train rows and {dropped} or in the test data; pass task.data_files.dev=PATH"
    if split == "train" and not source.data_files.get("dev"):
        return (f"dev is carved from the train rows (task.dev_size={dev_size}) and takes every row whose "
                f"question is not a few-shot exemplar's or in the test data; lower task.dev_size or pass "
                f"task.data_files.dev=PATH")
    higher = {"test": "", "dev": " or in the test data", "train": ", in the dev data or in the test data"}[split]
    return f"{dropped}{higher}; give task.data_files.{split} questions of its own"


def check_columns(columns: list[str], source: DataSource, where: str) -> None:
    missing = [f for f in source.required if f not in columns]
    if missing:
        raise TaskDataError(
            f"{where}: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(found: {', '.join(columns) or 'none'}). Each row must have the hub's fields, e.g. {source.schema}. "
            f"Fix: convert the file to that schema (see tests/data/{source.task}/ for small examples)")


def check_rows(rows: list[dict], check_row: Callable[[dict], list[str]], where: str,
               row_id: Callable[[dict], Any] | None = None) -> None:
    """Raise one TaskDataError listing every bad row (the first MAX_REPORTED of them)."""
    bad: list[str] = []
    n_bad = 0
    for n, row in enumerate(rows, 1):
        problems = check_row(row)
        if problems:
            n_bad += 1
            if len(bad) < MAX_REPORTED:
                rid = row_id(row) if row_id is not None else None
                name = f"row {n}" + (f" (id {rid!r})" if isinstance(rid, str) and rid else "")
                bad.append(f"{name}: {'; '.join(problems)}")
    if n_bad:
        more = f"\n  ... and {n_bad - len(bad)} more bad rows" if n_bad > len(bad) else ""
        raise TaskDataError(f"{where}: {n_bad} bad row{'s' if n_bad > 1 else ''} (rows count from 1 in file order); "
                            f"fix or drop them:\n  " + "\n  ".join(bad) + more)


def check_unique(rows: list[dict], key: str, where: str) -> None:
    """Raise naming the rows that share a value of `key` (e.g. duplicated ids)."""
    first: dict[Any, int] = {}
    dups: list[str] = []
    for n, row in enumerate(rows, 1):
        value = row.get(key)
        if not isinstance(value, str):
            continue
        if value in first:
            dups.append(f"row {n} repeats {key} {value!r} of row {first[value]}")
        else:
            first[value] = n
    if dups:
        more = f"\n  ... and {len(dups) - MAX_REPORTED} more" if len(dups) > MAX_REPORTED else ""
        raise TaskDataError(f"{where}: duplicated {key}s ({len(dups)}); every {key} must be unique, "
                            f"drop or rename the repeats:\n  " + "\n  ".join(dups[:MAX_REPORTED]) + more)


# ----------------------------------------------------------------------------- field checks
# Each returns a problem phrase, or None when the value is fine.

def text_problem(row: dict, key: str) -> str | None:
    """A required non-empty string field."""
    if key not in row or row[key] is None:
        return f"missing {key}"
    value = row[key]
    if not isinstance(value, str):
        return f"{key} must be a string, got {type(value).__name__} {_short(value)}"
    if not value.strip():
        return f"{key} is empty"
    return None


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


# ----------------------------------------------------------------------------- loading

def _load_file(path: Path, where: str):
    if path.is_dir():
        raise TaskDataError(f"{where} is a directory; pass one file ({', '.join(FILE_BUILDERS)})")
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise TaskDataError(f"{where}: unsupported file type '{path.suffix or '(none)'}'; "
                            f"use one of {', '.join(FILE_BUILDERS)}")
    if not path.is_file():
        raise TaskDataError(f"{where}: no such file (relative paths start at the directory star runs in: "
                            f"{Path.cwd()}); pass an existing file")
    if path.stat().st_size == 0:
        raise TaskDataError(f"{where} is empty; give it at least one question")
    if builder == "json":
        # Checked here, not by `datasets`: its reader logs its own error lines around ours, and reads
        # a file of blank lines as "no data".
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise TaskDataError(f"{where} is empty (blank lines only); give it at least one question")
        if detail := _json_problem(text):
            raise TaskDataError(f"{where} could not be read as {path.suffix.lstrip('.')}: {detail}; fix it: "
                                "one JSON object per line (.jsonl), or one array of objects (.json)")
    import datasets

    try:
        with _quiet(datasets, local=True):
            return datasets.load_dataset(builder, data_files={"data": str(path)}, split="data")
    except Exception as e:  # noqa: BLE001 - every reader failure becomes one message with the fix
        raise TaskDataError(f"{where} could not be read as {path.suffix.lstrip('.')}: {_cause(e)}") from e


def _load_hub(source: DataSource, split: str):
    if not source.hub_id:
        raise TaskDataError(f"{source.task} has no hub dataset configured (task.hub_id) and no file for "
                            f"the {split} split; pass {source.files_hint()}")
    hub_split = source.hub_splits[split]
    import datasets

    try:
        with _quiet(datasets, local=False):
            return datasets.load_dataset(source.hub_id, source.hub_config, split=hub_split)
    except Exception as e:  # noqa: BLE001 - offline, missing, gated: all end in the same fix
        config = f" (config {source.hub_config})" if source.hub_config else ""
        raise TaskDataError(
            f"could not load the {split} split of {source.task} from the Hugging Face hub: "
            f"{source.hub_id}{config}, split '{hub_split}' ({_cause(e)}). Offline? Pass local files "
            f"instead: {source.files_hint()}{_offline_tip()}") from e


def _offline_tip() -> str:
    return "" if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE") else f"; {OFFLINE_TIP}"


def _json_problem(text: str) -> str | None:
    """The first unreadable line of a JSON-lines file's text (or the position in a JSON array file)."""
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            return f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            return "a .json file must hold one array of objects (one per question), or JSON lines"
        return None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            return f"line {n} is not valid JSON ({e.msg}): {_short(line, 60)}"
        if not isinstance(value, dict):
            return f"line {n} is not a JSON object (one object per line): {_short(line, 60)}"
    return None


def _cause(e: BaseException) -> str:
    # datasets wraps reader errors (DatasetGenerationError); the innermost one says what broke.
    while e.__cause__ is not None and str(e.__cause__):
        e = e.__cause__
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


class _quiet:
    """While loading: hide `datasets` progress bars (they clutter a run's log) and, for local
    files, skip the download-count ping `datasets` sends to the hub for its "json"/"parquet"
    readers (offline its DNS lookup can stall a load for seconds). Restores both after."""

    def __init__(self, datasets_module, local: bool):
        self.ds = datasets_module
        self.local = local
        self.bars_were_enabled = True
        self.counts = None

    def __enter__(self):
        self.bars_were_enabled = not self.ds.are_progress_bars_disabled()
        self.ds.disable_progress_bars()
        if self.local:
            self.counts = self.ds.config.HF_UPDATE_DOWNLOAD_COUNTS
            self.ds.config.HF_UPDATE_DOWNLOAD_COUNTS = False

    def __exit__(self, *exc):
        if self.bars_were_enabled:
            self.ds.enable_progress_bars()
        if self.local:
            self.ds.config.HF_UPDATE_DOWNLOAD_COUNTS = self.counts
        return False
