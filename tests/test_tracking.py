"""Tracker: real offline W&B runs read back, metrics.csv, logger=none, online without a key.

Every test points HOME (and the XDG dirs) into tmp_path and runs from a cwd inside
it, so anything wandb writes outside the run directory shows up (and fails the test).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from star.config import LoggerConfig
from star.tracking import (
    GLOBAL_STEP,
    METRICS_CSV,
    RUN_ID_FILE,
    STEP_BLOCK,
    Tracker,
    _inspect_records,
    _offline_logs,
    iteration_rows,
    read_wandb_offline,
    read_wandb_run_ids,
    read_wandb_summary,
    step_rows,
)

WANDB_ENV = ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")
FAKE_KEY = "0123456789abcdef" * 2 + "fakekey0"  # 40 chars: looks like an API key


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    cwd = tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "NETRC",
                "WANDB_MODE", "WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_RESUME", *WANDB_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(cwd)
    return tmp_path


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_wandb_offline_roundtrip_and_resume(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An API key in the environment must never end up in the run directory.
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    run_dir = sandbox / "run"
    cfg = LoggerConfig(project="star-test", group="g1")
    config = {"seed": 0, "task": {"name": "arithmetic"}}
    logged = {
        0: {"eval/accuracy": 0.25, "eval/accuracy/1": 0.5},
        1: {"eval/accuracy": 0.5, "gen/solve_rate": 0.125, "train/steps": 40},
        2: {"eval/accuracy": 0.75, "gen/solve_rate": 0.375, "train/steps": 48},
    }
    samples = [
        {"iteration": 1, "kind": "direct", "question": "1+1", "completion": "2", "answer": "2", "correct": True},
        {"iteration": 1, "kind": "rationalized", "question": "2+2", "completion": "4", "answer": "4", "correct": True},
        {"iteration": 1, "kind": "eval", "question": "3+3", "completion": "7", "answer": None, "correct": False},
    ]

    # First process: the baseline and iteration 1 (with a samples table).
    with Tracker(run_dir, cfg, config, run_name="job-a") as tracker:
        tracker.log_iteration(0, logged[0], samples=[])
        tracker.log_iteration(1, logged[1], samples=samples)
    for var in WANDB_ENV:
        assert var not in os.environ, f"{var} not restored"
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    assert run_id

    # Second process (same run directory): resumes the same run and logs iteration 2.
    with Tracker(run_dir, cfg, config, run_name="job-a") as tracker:
        tracker.log_iteration(2, logged[2], samples=samples[:1])
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id

    # One run id, one offline part per logged iteration (each flushed to disk when
    # log_iteration returns), all rows read back in order.
    assert read_wandb_run_ids(run_dir) == {run_id}
    parts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(parts) == 3
    rows = read_wandb_offline(run_dir)
    assert [{k: v for k, v in r.items() if k != "_step"} for r in rows] == [{**logged[i], "iteration": i} for i in (0, 1, 2)]
    # W&B steps keep increasing across processes: the second starts past the block the first reserved.
    assert [r["_step"] for r in rows] == [0, 1, STEP_BLOCK]

    # The samples tables were written as run media, one per iteration that had samples.
    tables = [t for log in _offline_logs(run_dir) for t in log.parent.glob("files/media/table/samples_*.table.json")]
    assert len(tables) == 2
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["iteration", "kind", "question", "completion", "answer", "correct"]
    assert table["data"][2] == [1, "eval", "3+3", "7", None, False]

    # metrics.csv holds all three iterations (the second process kept the first's rows).
    csv_rows = read_csv_rows(run_dir / METRICS_CSV)
    assert [r["iteration"] for r in csv_rows] == ["0", "1", "2"]
    assert list(csv_rows[0]) == ["iteration", "eval/accuracy", "eval/accuracy/1", "gen/solve_rate", "train/steps"]
    assert float(csv_rows[2]["gen/solve_rate"]) == 0.375

    # Nothing outside the run directory, and no secret inside it.
    assert files_under(sandbox / "home") == []
    assert files_under(sandbox / "cwd") == []
    assert {p.name for p in sandbox.iterdir()} == {"home", "cwd", "run"}
    for path in files_under(run_dir):
        assert FAKE_KEY.encode() not in path.read_bytes(), f"API key written to {path}"


def test_live_step_rows_go_on_the_global_step_and_steps_keep_increasing(sandbox: Path) -> None:
    run_dir = sandbox / "run"
    cfg = LoggerConfig(csv=False)
    with Tracker(run_dir, cfg, {}) as tracker:
        tracker.log_iteration(0, {"eval/accuracy": 0.1}, samples=[])
        with tracker.live():
            for step in (1, 2):
                tracker.log_step({"iteration": 1, "step": step, "global_step": step, "train/loss": 2.0 / step,
                                  "train/lr": 1e-4, "train/grad_norm": None})
            tracker.log_step({"iteration": 1, "step": 2, "global_step": 2, "fit/dev_accuracy": 0.25})
        tracker.log_iteration(1, {"eval/accuracy": 0.2, "train/final_loss": 1.0}, samples=[])
    tracker.log_step({"global_step": 3, "train/loss": 0.5})  # outside live(): not logged (no open run)
    # A second process redoes iteration 1's fit (a kill): the same global steps, larger W&B steps.
    with Tracker(run_dir, cfg, {}) as tracker, tracker.live():
        tracker.log_step({"iteration": 1, "step": 1, "global_step": 1, "train/loss": 2.0})
        tracker.summarize({"final/dev_accuracy": 0.2, "stop_reason": "finished"})

    history = read_wandb_offline(run_dir)
    assert [r["iteration"] for r in iteration_rows(history)] == [0, 1]
    steps = step_rows(history)
    assert [(r[GLOBAL_STEP], r.get("train/loss"), r.get("fit/dev_accuracy")) for r in steps] == [
        (1, 2.0, None), (2, 1.0, None), (2, None, 0.25), (1, 2.0, None)]
    assert "train/grad_norm" not in steps[0], "a None value is left out, not logged"
    w_steps = [r["_step"] for r in history]
    assert w_steps == sorted(w_steps) and len(set(w_steps)) == len(w_steps)
    summary = read_wandb_summary(run_dir)  # also W&B's own last value of every logged key
    assert summary["final/dev_accuracy"] == 0.2 and summary["stop_reason"] == "finished"
    # Per-step keys are charted on the global step; everything else on the iteration.
    defined = {(m["metric"].get("name") or m["metric"].get("glob_name"), m["metric"].get("step_metric"))
               for log in _offline_logs(run_dir) for m in _inspect_records(log) if m.get("type") == "metric"}
    assert {("train/loss", GLOBAL_STEP), ("fit/dev_accuracy", GLOBAL_STEP), ("*", "iteration")} <= defined
    assert ("eval/accuracy", GLOBAL_STEP) not in defined


def test_a_wandb_failure_during_a_fit_is_a_warning_not_the_fits_failure(sandbox: Path) -> None:
    run_dir = sandbox / "run"
    with Tracker(run_dir, LoggerConfig(csv=False), {}) as tracker:
        with pytest.warns(UserWarning, match="could not close the fit's per-step rows: Connection lost"):
            with tracker.live():
                tracker.log_step({"global_step": 1, "train/loss": 1.0})

                def lost(*args, **kwargs):  # what wandb raises when wandb-core died (a preempted job)
                    raise ConnectionResetError("Connection lost")

                tracker.run.finish = lost
        for var in WANDB_ENV:
            assert var not in os.environ, f"{var} not restored"
        tracker.log_iteration(1, {"eval/accuracy": 0.5}, samples=[])  # the next session starts afresh
    assert [r["iteration"] for r in iteration_rows(read_wandb_offline(run_dir))] == [1]


def test_csv_rows_resume_and_relog(sandbox: Path) -> None:
    run_dir = sandbox / "run"
    cfg = LoggerConfig(wandb=False, csv=True)
    with Tracker(run_dir, cfg, {}) as tracker:
        tracker.log_iteration(0, {"eval/accuracy": 0.1}, samples=[])
        tracker.log_iteration(1, {"eval/accuracy": 0.2, "train/final_loss": 1.5}, samples=[{"q": "x"}])
    rows = read_csv_rows(run_dir / METRICS_CSV)
    assert rows == [
        {"iteration": "0", "eval/accuracy": "0.1", "train/final_loss": ""},
        {"iteration": "1", "eval/accuracy": "0.2", "train/final_loss": "1.5"},
    ]

    # A resumed job keeps earlier rows; a redone iteration replaces its row.
    with Tracker(run_dir, cfg, {}) as tracker:
        tracker.log_iteration(1, {"eval/accuracy": 0.3, "train/final_loss": 1.25}, samples=[])
        tracker.log_iteration(2, {"eval/accuracy": 0.4, "time/train_s": 3.0}, samples=[])
    rows = read_csv_rows(run_dir / METRICS_CSV)
    assert [r["iteration"] for r in rows] == ["0", "1", "2"]
    assert rows[1] == {"iteration": "1", "eval/accuracy": "0.3", "time/train_s": "", "train/final_loss": "1.25"}
    assert rows[2]["time/train_s"] == "3.0"

    # CSV only: no W&B files at all, and no temp files left behind.
    assert [p.name for p in run_dir.iterdir()] == [METRICS_CSV]
    assert files_under(sandbox / "home") == []


@pytest.mark.parametrize(
    "cfg",
    [LoggerConfig(wandb=False, csv=False), LoggerConfig(csv=False, mode="disabled")],
    ids=["none", "wandb-disabled"],
)
def test_logger_none_writes_nothing(sandbox: Path, cfg: LoggerConfig) -> None:
    run_dir = sandbox / "run"
    with Tracker(run_dir, cfg, {"a": 1}) as tracker:
        tracker.log_iteration(1, {"eval/accuracy": 0.5}, samples=[{"q": "x"}])
    assert not run_dir.exists()
    assert files_under(sandbox) == []


def test_online_without_api_key_fails_fast(sandbox: Path) -> None:
    run_dir = sandbox / "run"
    cfg = replace(LoggerConfig(), mode="online", csv=False)
    with pytest.raises(RuntimeError, match=r"WANDB_API_KEY.*logger\.mode=offline"):
        Tracker(run_dir, cfg, {})
    for var in WANDB_ENV:
        assert var not in os.environ, f"{var} not restored"
    assert files_under(sandbox / "home") == []


def test_offline_parts_sorted_by_time_then_suffix(tmp_path: Path) -> None:
    names = [
        "offline-run-20260101_000001-abc-10",
        "offline-run-20260101_000001-abc-2",
        "offline-run-20260101_000001-abc",
        "offline-run-20251231_235959-abc",
        "run-20260101_000000-abc",  # an online part: not read back offline
    ]
    for name in names:
        part = tmp_path / "wandb" / name
        part.mkdir(parents=True)
        (part / "run-abc.wandb").touch()
    assert [p.parent.name for p in _offline_logs(tmp_path)] == [
        "offline-run-20251231_235959-abc",
        "offline-run-20260101_000001-abc",
        "offline-run-20260101_000001-abc-2",
        "offline-run-20260101_000001-abc-10",
    ]
    assert read_wandb_run_ids(tmp_path) == {"abc"}
