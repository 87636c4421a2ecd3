"""The kill-anywhere benchmark's short version (benchmarks/kill_anywhere.py): the real `star` CLI on the
tiny model, SIGKILLed from outside (its whole process group) at seeded random moments, resumed after
each kill, and compared with an uninterrupted run. Also: the comparison itself catches what it must
(a leftover of any name, a changed byte, a lost file, a second metrics.csv row, a second W&B run id)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def kill_anywhere():
    spec = importlib.util.spec_from_file_location("kill_anywhere", REPO / "benchmarks" / "kill_anywhere.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference(kill_anywhere, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ka") / "reference"
    kill_anywhere.run_reference(run, kill_anywhere.RUNS["tiny"], run.parent / "reference.log")
    return run


@pytest.mark.slow
@pytest.mark.parametrize("model,kills", [("tiny", 4), ("tiny_samples", 3)])  # tiny_samples: 4 samples a question
def test_random_outside_kills_lose_nothing(kill_anywhere, tmp_path, model, kills):
    result = kill_anywhere.benchmark(model, kills=kills, seed=1, workdir=tmp_path)
    assert len(result.kills) >= kills
    assert result.problems == []
    assert all(k.stage for k in result.kills)
    text = kill_anywhere.report(result, "test")
    assert f"**{len(result.kills)} kills in {len(result.rounds)} rounds; 0 differences" in text


@pytest.mark.slow
def test_an_uninterrupted_copy_compares_equal(kill_anywhere, reference, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy, symlinks=True)
    assert kill_anywhere.compare(reference, copy) == []


@pytest.mark.slow
@pytest.mark.parametrize("damage,expected", [
    (lambda r: (r / "iter_01" / "checkpoint.old").write_text("x"), "left behind: iter_01/checkpoint.old"),
    (lambda r: (r / "iter_02" / "partial").write_bytes(b""), "left behind: iter_02/partial"),
    (lambda r: (r / "iter_01" / "train.jsonl").write_text((r / "iter_01" / "train.jsonl").read_text()[:-5]),
     "differs: iter_01/train.jsonl"),
    (lambda r: (r / "iter_02" / "eval.json").unlink(), "missing: iter_02/eval.json"),
    (lambda r: (r / "iter_01" / "metrics.json").write_text('{"eval/accuracy": 0.5'), "not whole JSON"),
    (lambda r: (r / "metrics.csv").write_text(
        (r / "metrics.csv").read_text() + (r / "metrics.csv").read_text().splitlines()[-1] + "\n"),
     "metrics.csv rows by iteration"),
    (lambda r: shutil.copytree(next((r / "wandb").glob("offline-run-*")),
                               r / "wandb" / "offline-run-20000101_000000-zzzzzzzz", symlinks=True)
     and next((r / "wandb" / "offline-run-20000101_000000-zzzzzzzz").glob("run-*.wandb")).rename(
         r / "wandb" / "offline-run-20000101_000000-zzzzzzzz" / "run-zzzzzzzz.wandb"),
     "W&B run ids"),
])
def test_the_comparison_catches_damage(kill_anywhere, reference, tmp_path, damage, expected):
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy, symlinks=True)
    damage(copy)
    problems = kill_anywhere.compare(reference, copy)
    assert any(expected in p for p in problems), problems


def test_the_survivor_check_counts_live_members_not_zombies(kill_anywhere):
    import os
    import signal
    import subprocess
    import time

    # A group whose leader sleeps and whose child has exited unreaped (a zombie): the leader is a survivor.
    leader = subprocess.Popen([sys.executable, "-c",
                               "import os, time\nif os.fork() == 0: os._exit(0)\ntime.sleep(60)"],
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and kill_anywhere.live_members(leader.pid) != [leader.pid]:
            time.sleep(0.05)
        assert kill_anywhere.survivors([leader.pid], grace_s=0.1) == [leader.pid]
        # Killed: the leader becomes a zombie of ours (not yet waited for), its child a zombie for PID 1.
        os.killpg(leader.pid, signal.SIGKILL)
        assert kill_anywhere.survivors([leader.pid], grace_s=5) == []
    finally:
        if kill_anywhere.live_members(leader.pid):  # an assertion failed before the kill
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
