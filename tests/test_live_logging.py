"""Watching a run as W&B users do (the real CLI on the tiny model): per-step fine-tuning rows on a global step
that keeps increasing over iterations, the generation callback's dev points, the run's summary, and
train_steps.csv after a kill mid-fit; plus the step file's writer, forwarder and merge on their own."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from star import artifacts as A
from star.tracking import GLOBAL_STEP, iteration_rows, read_wandb_offline, read_wandb_summary, step_rows
from star.training.steps import CSV_COLUMNS, StepForwarder, merge_train_steps, read_step_rows
from tests.conftest import run_star

# Two iterations of 4 and 5 steps (schedule growth 0.2), a dev point every 2 steps: global steps 1..9.
ARGS = ["~experiment", "model=tiny", "debug=fast", "n_iterations=2", "schedule.base_steps=4",
        "trainer.eval_every_n_steps=2"]
GLOBAL_STEPS = list(range(1, 10))
TIMINGS = ("train/tokens_per_s", "time/elapsed_s")


def csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


@pytest.fixture(scope="module")
def live_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("live") / "run"
    proc = run_star([*ARGS, f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.mark.slow
def test_wandb_gets_every_step_on_an_increasing_global_step(live_run):
    history = read_wandb_offline(live_run)
    steps = [r for r in step_rows(history) if "train/loss" in r]
    assert [int(r[GLOBAL_STEP]) for r in steps] == GLOBAL_STEPS  # strictly increasing over both iterations
    for r in steps:
        assert r["train/lr"] > 0 and r["train/grad_norm"] > 0 and r["train/tokens_per_s"] > 0
    dev = [(int(r[GLOBAL_STEP]), r["fit/dev_accuracy"]) for r in step_rows(history) if "fit/dev_accuracy" in r]
    assert [s for s, _ in dev] == [2, 6, 8]  # steps 2 (of 4) and 2, 4 (of 5): every 2 steps, not at the end
    assert all(0.0 <= acc <= 1.0 for _, acc in dev)
    assert [int(r["iteration"]) for r in iteration_rows(history)] == [0, 1, 2]
    w_steps = [r["_step"] for r in history]
    assert w_steps == sorted(set(w_steps)), "W&B's own step increases over every row"


@pytest.mark.slow
def test_the_summary_holds_what_a_sweep_table_needs(live_run):
    summary = read_wandb_summary(live_run)
    metrics = [A.read_json(A.metrics_of(live_run, n)) for n in (0, 1, 2)]
    assert summary["final/dev_accuracy"] == metrics[2]["eval/accuracy"]
    assert summary["best/dev_accuracy"] == max(m["eval/accuracy"] for m in metrics)
    assert summary["final/test_accuracy"] == metrics[2]["test/accuracy"]
    assert summary["iterations"] == 2 and summary["stop_reason"] == "finished"
    assert summary["time/total_s"] > 0
    on_disk = A.read_json(live_run / "summary.json")
    assert {k: summary[k] for k in on_disk} == on_disk


@pytest.mark.slow
def test_train_steps_csv_and_metrics(live_run):
    rows = csv_rows(A.train_steps_csv(live_run))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(r["global_step"]) for r in rows] == GLOBAL_STEPS
    assert [(r["iteration"], r["step"]) for r in rows] == [("1", str(k)) for k in range(1, 5)] + [
        ("2", str(k)) for k in range(1, 6)]
    assert [r["global_step"] for r in rows if r["fit/dev_accuracy"]] == ["2", "6", "8"]
    last = A.read_json(A.metrics_of(live_run, 2))
    assert "train/loss" not in last and last["train/final_loss"] > 0
    assert last["fit/final_dev_accuracy"] == float(rows[7]["fit/dev_accuracy"])  # its last dev point (step 8)
    assert not list(live_run.glob("iter_*/train_steps.live.jsonl")), "the live stream is removed once kept"


@pytest.mark.slow
def test_a_fit_killed_midway_keeps_each_step_once_from_the_attempt_that_finished(live_run, tmp_path):
    run = tmp_path / "run"
    args = [*ARGS, f"hydra.run.dir={run}"]
    killed = run_star(args, env={"STAR_KILL_AT": "2/train/step_3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = read_step_rows(A.steps_stream(run, 2))
    assert [r["step"] for r in partial if "train/loss" in r] == [1, 2, 3], "the killed attempt's rows"
    assert [r["global_step"] for r in csv_rows(A.train_steps_csv(run))] == ["1", "2", "3", "4"]
    assert run_star(args).returncode == 0
    rows = csv_rows(A.train_steps_csv(run))
    assert [int(r["global_step"]) for r in rows] == GLOBAL_STEPS
    assert without_timings(rows) == without_timings(csv_rows(A.train_steps_csv(live_run)))
    # The redone fit logged its steps again with the same global steps; W&B's step still increased.
    history = read_wandb_offline(run)
    logged = [int(r[GLOBAL_STEP]) for r in step_rows(history) if "train/loss" in r]
    assert set(logged) == set(GLOBAL_STEPS) and logged[-5:] == [5, 6, 7, 8, 9]
    assert [r["_step"] for r in history] == sorted(set(r["_step"] for r in history))


@pytest.mark.slow
def test_the_dev_callback_runs_under_ddp_on_rank_0(tmp_path):
    run = tmp_path / "run"
    proc = run_star(["~experiment", "model=tiny", "debug=fast", "n_iterations=1", "trainer=cpu_ddp",
                     "schedule.base_steps=4", "trainer.eval_every_n_steps=2", f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = csv_rows(A.train_steps_csv(run))
    assert [r["global_step"] for r in rows] == ["1", "2", "3", "4"], "rank 0 alone writes the steps"
    assert [r["global_step"] for r in rows if r["fit/dev_accuracy"]] == ["2"]
    assert A.read_done(run, 1, "train")["dev_curve"] == [{"step": 2, "accuracy": float(rows[1]["fit/dev_accuracy"])}]
    assert A.read_done(run, 1, "train")["trainer"]["world_size"] == 2
    dev = [r for r in step_rows(read_wandb_offline(run)) if "fit/dev_accuracy" in r]
    assert [int(r[GLOBAL_STEP]) for r in dev] == [2], "forwarded from the spawned rank to the loop's W&B run"


# ----------------------------------------------------------------------------- the pieces on their own

def test_forwarder_hands_over_whole_lines_only_and_drains_at_exit(tmp_path):
    path = tmp_path / "steps.jsonl"
    got = []
    with StepForwarder(path, got.append, poll_s=0.01):
        with path.open("w") as f:
            f.write(json.dumps({"global_step": 1}) + "\n" + '{"global_step": 2')  # the second line is half written
            f.flush()
            time.sleep(0.1)
            assert got == [{"global_step": 1}]
            f.write("}\n")
    assert got == [{"global_step": 1}, {"global_step": 2}]
    assert read_step_rows(path) == got


def test_forwarder_sink_errors_stop_forwarding_not_the_fit(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text('{"global_step": 1}\n{"global_step": 2}\n')
    calls = []

    def sink(row):
        calls.append(row)
        raise RuntimeError("W&B is down")

    with StepForwarder(path, sink, poll_s=0.01) as forwarder:
        time.sleep(0.05)
    assert isinstance(forwarder.error, RuntimeError)
    assert calls == [{"global_step": 1}], "forwarding stops at the first sink error"


def test_merge_replaces_one_iterations_rows_and_joins_dev_points(tmp_path):
    path = tmp_path / "train_steps.csv"
    first = [{"iteration": 1, "step": s, "global_step": s, "train/loss": 1.0 / s} for s in (1, 2)]
    path.write_text(merge_train_steps(path, 1, first))
    second = [{"iteration": 2, "step": 1, "global_step": 3, "train/loss": 0.4},
              {"iteration": 2, "step": 1, "global_step": 3, "fit/dev_accuracy": 0.5}]
    path.write_text(merge_train_steps(path, 2, second))
    redo = [{"iteration": 1, "step": 1, "global_step": 1, "train/loss": 0.9}]  # iteration 1 redone, shorter
    path.write_text(merge_train_steps(path, 1, redo))
    rows = csv_rows(path)
    assert [(r["iteration"], r["global_step"], r["train/loss"], r["fit/dev_accuracy"]) for r in rows] == [
        ("1", "1", "0.9", ""), ("2", "3", "0.4", "0.5")]
