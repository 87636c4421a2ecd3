"""Faults that are not a clean kill: corrupt artifacts on resume, two processes on one run,
a non-finite loss, a full disk, an unwritable run directory; and no code execution of outputs."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from star import artifacts as A
from star import cli
from star.artifacts import RunLock, RunLockedError
from star.loop import StarLoop
from star.training.module import NonFiniteLossError
from tests.conftest import REPO, compose_config
from tests.test_loop import BASE, ScriptedGenerator

DETERMINISTIC = ("generations.jsonl", "rationalizations.jsonl", "train.jsonl", "eval.json")


def scripted_loop(run_dir: Path, overrides=("n_iterations=2",)):
    cfg = compose_config(BASE + list(overrides))
    return StarLoop(cfg, run_dir, make_generator=lambda m, t: ScriptedGenerator([]))


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {f"{d.name}/{n}": (d / n).read_bytes() for d in sorted(run_dir.glob("iter_*"))
            for n in DETERMINISTIC if (d / n).exists()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("done") / "run"
    scripted_loop(run).run()
    return run


def copy_run(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def test_truncated_jsonl_is_detected_and_its_stage_redone(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    path = run / "iter_01" / "generations.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a half-written line
    later = A.marker(run, 2, "eval").stat().st_mtime_ns
    with pytest.warns(UserWarning, match=r"iter_01/generations.jsonl is corrupt .*generate"):
        scripted_loop(run).run()
    assert snapshot(run) == snapshot(finished_run)
    assert A.marker(run, 2, "eval").stat().st_mtime_ns != later, "stages after the corrupt one are redone"


def test_checkpoint_missing_a_file_is_detected(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "iter_02" / "checkpoint" / "model.safetensors").unlink()
    before_1 = A.marker(run, 1, "train").stat().st_mtime_ns
    with pytest.warns(UserWarning, match=r"iter_02/checkpoint is corrupt"):
        scripted_loop(run).run()
    assert (run / "iter_02" / "checkpoint" / "model.safetensors").exists()
    assert A.marker(run, 1, "train").stat().st_mtime_ns == before_1, "earlier stages are kept"
    assert snapshot(run) == snapshot(finished_run)


def test_intact_run_resumes_without_warnings(finished_run, tmp_path, recwarn):
    run = copy_run(finished_run, tmp_path / "run")
    scripted_loop(run).run()
    assert not [w for w in recwarn if "corrupt" in str(w.message)]


HOLD = "import sys, time; from star.artifacts import RunLock; l = RunLock(sys.argv[1]).__enter__(); print('held', flush=True); time.sleep(60)"


def hold_lock(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_refuses_and_a_killed_owner_does_not_block(tmp_path):
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid}.*hydra.run.dir"):
            RunLock(run).__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(run):  # the kernel released the dead owner's lock
        pass


def test_cli_refuses_a_locked_run_directory(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        monkeypatch.setattr(sys, "argv", ["star", "model=tiny", "debug=fast", "logger=none", "n_iterations=0",
                                          f"hydra.run.dir={run}"])
        with pytest.raises(SystemExit) as e:
            cli.main()
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "in use by pid" in err and "Traceback" not in err
        assert not (run / "iter_00").exists() and not (run / "run_info.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_non_finite_loss_stops_with_iteration_and_step(tmp_path):
    loop = scripted_loop(tmp_path / "run", ["n_iterations=1"])
    model = loop.ctx.models.base()[0]

    def poison(module, args, kwargs, output):
        if module.training and output.loss is not None:
            output.loss = output.loss * float("nan")
        return output

    model.register_forward_hook(poison, with_kwargs=True)  # deep copies for training keep it
    with pytest.raises(NonFiniteLossError, match=r"iteration 1: training loss is nan at step 1"):
        loop.run()
    assert A.is_done(loop.run_dir, 1, "rationalize") and not A.is_done(loop.run_dir, 1, "train")
    assert (loop.run_dir / "iter_00" / "eval.json").exists()


def test_full_disk_marks_nothing_done_and_keeps_finished_files(tmp_path, monkeypatch):
    loop = scripted_loop(tmp_path / "run", ["n_iterations=1"])
    real = A._atomic_write_bytes

    def full_disk(path, data):
        if Path(path).name == "train.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(A, "_atomic_write_bytes", full_disk)
    with pytest.raises(OSError, match="No space left"):
        loop.run()
    d = A.iter_dir(loop.run_dir, 1)
    assert not A.is_done(loop.run_dir, 1, "train") and not (d / "train.jsonl").exists()
    assert A.is_done(loop.run_dir, 1, "rationalize") and A.corrupt_reason(d / "generations.jsonl") is None
    monkeypatch.setattr(A, "_atomic_write_bytes", real)
    scripted_loop(loop.run_dir, ["n_iterations=1"]).run()  # resumes once the disk has room
    assert A.is_done(loop.run_dir, 1, "log")


def test_unwritable_run_directory_is_a_clear_error(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setattr(sys, "argv", ["star", "model=tiny", "logger=none", f"hydra.run.dir={blocker}/run"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "not a writable directory" in err and "Traceback" not in err


def test_model_output_is_never_executed():
    """Answers are parsed, never evaluated: no eval/exec/compile, unpickling or sympy parsing in the package
    (reasoning_gym's scorers: tests/test_reasoning_gym_audit.py)."""
    for path in (REPO / "star").rglob("*.py"):
        code = path.read_text()
        assert not re.search(r"(?<![\w.])(eval|exec|compile)\(", code), f"{path} calls eval/exec/compile"
        assert not re.search(r"^\s*(import|from)\s+sympy|(?<![\w.])(parse_expr|sympify)\(", code, re.MULTILINE), \
            f"{path} parses with sympy"
        assert "pickle.load" not in code, f"{path} unpickles"
        for call in re.findall(r"torch\.load\([^)]*\)", code):
            assert "weights_only=True" in call, f"{path}: {call} may unpickle code"


def test_pause_point_holds_the_first_process_and_lets_a_rerun_through(tmp_path):
    """STAR_PAUSE_AT holds a job at a known point until a signal ends it; the requeued job goes on."""
    sentinel = tmp_path / "paused"
    code = "from star.faults import crash_point; crash_point('1/train/step_2'); print('went on')"
    env = {**os.environ, "STAR_PAUSE_AT": f"1/train/step_2:{sentinel}"}
    first = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not sentinel.exists():
            assert first.poll() is None and time.monotonic() < deadline, "the pause never began"
            time.sleep(0.05)
        time.sleep(0.5)
        assert first.poll() is None, "the paused process went on"
    finally:
        first.kill()
    assert "went on" not in first.communicate()[0]
    rerun = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert rerun.stdout.strip() == "went on", rerun.stderr
    other = subprocess.run([sys.executable, "-c", code.replace("step_2", "step_3")], capture_output=True,
                           text=True, timeout=60, env={**env, "STAR_PAUSE_AT": f"1/train/step_2:{tmp_path}/x"})
    assert other.stdout.strip() == "went on", "only the named point pauses"
