"""The real CLI end to end on the tiny model: the run directory, W&B offline, resume after SIGKILL,
and user errors that exit with a message instead of a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from star import artifacts as A
from star.tracking import iteration_rows, read_wandb_offline, read_wandb_run_ids
from tests.conftest import run_star

FAST = ["~experiment", "model=tiny", "debug=fast", "n_iterations=2"]
# Files that must be byte-identical between equal runs (no timings, timestamps or paths in them).
DETERMINISTIC = ("generations.jsonl", "rationalizations.jsonl", "train.jsonl", "eval.json",
                 "checkpoint/model.safetensors")


def star_ok(args, **kw):
    proc = run_star(args, **kw)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def deterministic_files(run: Path) -> dict[str, bytes]:
    out = {}
    for it in sorted(run.glob("iter_*")):
        for name in DETERMINISTIC:
            if (it / name).exists():
                out[f"{it.name}/{name}"] = (it / name).read_bytes()
    return out


def files_outside_wandb(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.relative_to(run).parts[0] != "wandb"}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    proc = star_ok(FAST + [f"hydra.run.dir={run}"])
    assert "| iter |" in proc.stdout, "the run prints its per-iteration table"
    return run


@pytest.mark.slow
def test_run_directory_is_complete(reference_run):
    run = reference_run
    assert (run / ".hydra" / "config.yaml").exists()
    assert (run / "iter_00" / "eval.json").exists() and (run / "iter_00" / "eval.done").exists()
    for n in (1, 2):
        d = run / f"iter_{n:02d}"
        for name in ("generations.jsonl", "rationalizations.jsonl", "train.jsonl", "eval.json", "metrics.json",
                     "generate.done", "rationalize.done", "train.done", "eval.done", "log.done"):
            assert (d / name).exists(), f"{d.name}/{name} missing"
        assert (d / "checkpoint" / "model.safetensors").exists()
        ev = json.loads((d / "eval.json").read_text())
        assert 0.0 <= ev["accuracy"] <= 1.0 and set(ev["per_class"]) == {"1", "2"}
        assert len(A.read_jsonl(d / "generations.jsonl")) == 16
        assert len(A.read_jsonl(d / "train.jsonl")) > 0  # debug=fast trains on gold rationales
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,") and len(rows) == 4
    info = json.loads((run / "run_info.json").read_text())
    assert info["seed"] == 0 and info["versions"]["torch"].startswith("2.13")
    # No timings, timestamps or absolute paths in the files equal runs must reproduce.
    for name, data in deterministic_files(run).items():
        if name.endswith(".safetensors"):
            continue
        text = data.decode()
        assert str(run) not in text and "seconds" not in text and "time" not in text, name


@pytest.mark.slow
def test_wandb_offline_run_reads_back(reference_run):
    history = iteration_rows(read_wandb_offline(reference_run))
    assert [int(r["iteration"]) for r in history] == [0, 1, 2]
    for r in history:
        metrics = json.loads((reference_run / f"iter_{int(r['iteration']):02d}" / "metrics.json").read_text())
        assert r["eval/accuracy"] == pytest.approx(metrics["eval/accuracy"])
    assert history[1]["data/n_examples"] == 16
    assert len(read_wandb_run_ids(reference_run)) == 1
    assert not list(Path(reference_run).glob("wandb/**/*api_key*"))


@pytest.mark.slow
def test_same_seed_same_files(reference_run, tmp_path):
    run = tmp_path / "again"
    star_ok(FAST + [f"hydra.run.dir={run}", "logger=none"])
    assert deterministic_files(run) == deterministic_files(reference_run)


# Every stage boundary, and inside each stage: mid-generation (after a batch), mid-training
# (after a step), mid-evaluation (after a batch), and between a stage's work and its files.
KILL_POINTS = ["0/eval/start", "iter 0 eval/batch_1", "1/generate/start", "iter 1 generate/batch_1",
               "1/generate/after_batches", "1/rationalize/start", "1/train/start", "1/train/step_1",
               "1/train/after_fit", "1/eval/start", "iter 1 eval/batch_1", "1/log/start", "2/eval/before_write",
               "2/log/start"]


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_run_resumes_to_identical_artifacts(reference_run, tmp_path, point):
    run = tmp_path / "run"
    args = FAST + [f"hydra.run.dir={run}"]
    killed = run_star(args, env={"STAR_KILL_AT": point})
    assert killed.returncode == -9, f"expected SIGKILL at {point}: {killed.returncode}\n{killed.stderr[-2000:]}"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*.done")}
    star_ok(args)
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*.done")}
    assert all(after[p] == t for p, t in before.items()), "a finished stage was redone"
    assert deterministic_files(run) == deterministic_files(reference_run)
    # Not only `.*.tmp`: a leftover of any name (checkpoint.old, a partial file) differs from the reference.
    assert files_outside_wandb(run) == files_outside_wandb(reference_run), "files left behind or lost"
    iterations = [int(r["iteration"]) for r in iteration_rows(read_wandb_offline(run))]
    assert sorted(set(iterations)) == [0, 1, 2]
    assert len(read_wandb_run_ids(run)) == 1, "a resumed run logs to the same W&B run id"


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (["task.digits=[0]"], "task.digits"),
    (["model=hf", "model.name_or_path=/no/such/model"], "/no/such/model"),
    (["sampling.temperature=-1"], "sampling.temperature"),
    (["task.digitz=3"], "digitz"),
    (["schedule=nosuch"], "schedule"),
    (["task.digits=[1]", "task.train_size=500"], "task.train_size"),
])
def test_user_errors_exit_nonzero_without_traceback(tmp_path, args, needle):
    proc = run_star(["model=tiny", "debug=fast", "logger=none", f"hydra.run.dir={tmp_path / 'r'}", *args])
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
