"""Fine-tuning as one SLURM job (trainer.num_nodes > 1 or trainer.slurm_launch=true, star/training/slurm.py):
config checks (fast), then on the real local cluster (the `slurm_cluster` fixture) one node x 2 CPU tasks of
gloo DDP through the SLURM path: the job ran 2 ranks, rank 0 wrote the checkpoint once and it loads, the run ends.

    python -m pytest -q tests/test_slurm_training.py              # the fast part
    python -m pytest -q -m slurm tests/test_slurm_training.py     # the cluster part
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from star.config import ConfigError, validate
from star.training import slurm as T
from tests.conftest import compose_config, run_star
from tests.test_slurm_shards import sacct

POINT = ["~experiment", "model=tiny", "debug=fast", "logger=none", "n_iterations=1", "trainer=cpu_ddp"]


def test_slurm_training_is_off_by_default():
    cfg = compose_config(POINT)
    assert not T.enabled(cfg.trainer)
    assert T.enabled(compose_config([*POINT, "trainer.slurm_launch=true"]).trainer)
    assert T.enabled(compose_config([*POINT, "trainer.num_nodes=2"]).trainer)
    assert set(cfg.trainer.slurm) >= {"partition", "timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb"}


@pytest.mark.parametrize("override", ["trainer.num_nodes=2", "trainer.slurm_launch=true"])
def test_without_slurm_the_refusal_names_the_fix(monkeypatch, override):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError) as e:
        validate(compose_config([*POINT, override]))
    message = str(e.value)
    assert override in message and "SLURM is not available" in message
    assert "trainer.num_nodes=1 trainer.slurm_launch=false" in message


@pytest.mark.parametrize("overrides,needle", [
    (["trainer=cpu", "trainer.devices=2"], "trainer.strategy=ddp or fsdp"),
    (["trainer.devices=[0,1]"], "trainer.devices as a count"),
    (["trainer=cpu", "trainer.devices=1", "trainer.eval_every_n_steps=2"], "trainer.eval_every_n_steps"),
    (["trainer.slurm.cpus_per_task=0"], "trainer.slurm.cpus_per_task"),
    (["trainer.num_nodes=0", "trainer.slurm_launch=false"], "trainer.num_nodes must be >= 1"),
])
def test_slurm_training_bad_values(monkeypatch, overrides, needle):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(ConfigError) as e:
        validate(compose_config([*POINT, "trainer.slurm_launch=true", *overrides]))
    assert needle in str(e.value)


def test_multi_node_validates_with_slurm(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    validate(compose_config([*POINT, "trainer.num_nodes=2"]))


def test_reason_from_submitit_errors():
    failed = ("Job (task=1) failed during processing with trace:\n----------------------\nTraceback (most recent "
              "call last):\n  File x\nValueError: boom\n----------------------\nYou can check full logs with ...")
    assert T._reason(failed) == "ValueError: boom"
    assert T._reason("Job 7 (task: 0) with path p\nhas not produced any output (state: CANCELLED)\nmore") \
        == "Job 7 (task: 0) with path p; has not produced any output (state: CANCELLED)"


@pytest.mark.slurm
def test_ddp_fit_as_one_slurm_job(slurm_cluster, tmp_path):
    """One node x 2 tasks of gloo DDP through the SLURM path: 2 ranks, one checkpoint that loads, a finished run."""
    from star import artifacts as A
    from star.models import load_checkpoint

    run = tmp_path / "run"
    start = time.monotonic()
    proc = run_star([*POINT, "trainer.slurm_launch=true", f"trainer.slurm.partition={slurm_cluster.partition}",
                     "trainer.slurm.cpus_per_task=1", "trainer.slurm.mem_gb=2", "trainer.slurm.poll_s=1",
                     f"hydra.run.dir={run}"])
    print(f"[slurm] run with a 2-task training job took {time.monotonic() - start:.0f} s")
    logs = "".join(p.read_text(errors="replace") for p in sorted(run.rglob("slurm_train/**/*_log.*")))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-3000:]
    assert A.is_done(run, 1, "log"), "the run completed"
    train = A.read_done(run, 1, "train")
    setup = train["trainer"]
    assert setup["world_size"] == 2 and setup["strategy"] == "ddp", setup
    assert train["checkpoint"] == "iter_01/checkpoint" and train["steps"] > 0 and train["loss"] is not None
    job_id = setup["slurm_job_id"]
    assert json.loads((run / "iter_01" / T.JOB_FILE).read_text())["job_id"] == job_id
    # Both ranks ran in that job; only rank 0 saved (one checkpoint, no leftovers from a second writer).
    task_logs = sorted(p.name for p in (run / "iter_01" / "slurm_train" / job_id).glob("*_log.out"))
    assert task_logs == [f"{job_id}_0_log.out", f"{job_id}_1_log.out"], task_logs
    import pickle

    results = [pickle.loads((run / "iter_01" / "slurm_train" / job_id / f"{job_id}_{k}_result.pkl").read_bytes())
               for k in (0, 1)]
    assert results[0][0] == "success" and results[0][1]["setup"]["world_size"] == 2
    assert results[1] == ("success", None), "rank 1 trained and returned without saving"
    ckpt = run / "iter_01" / "checkpoint"
    assert sorted(p.name for p in (run / "iter_01").iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    assert list(ckpt.glob("*.safetensors"))
    model, _ = load_checkpoint(ckpt, device="cpu")
    assert sum(p.numel() for p in model.parameters()) > 0
    # Accounting lags the job's end by a moment: poll until slurmdbd has the final state.
    rows = sacct(slurm_cluster, [job_id], until=lambda rows: rows and rows[0][1] not in ("RUNNING", "PENDING"))
    assert [r[1] for r in rows] == ["COMPLETED"], rows


@pytest.mark.slurm
def test_failed_training_job_fails_the_stage_naming_its_log(slurm_cluster, tmp_path):
    """A job whose ranks fail (nccl on a machine without GPUs): the run stops at the train stage, with the
    job id and the failing task's log in the error; nothing after it is marked done."""
    from star import artifacts as A

    run = tmp_path / "run"
    start = time.monotonic()
    proc = run_star([*POINT, "trainer.slurm_launch=true", "trainer.process_group_backend=nccl",
                     f"trainer.slurm.partition={slurm_cluster.partition}", "trainer.slurm.cpus_per_task=1",
                     "trainer.slurm.mem_gb=2", "trainer.slurm.poll_s=1", f"hydra.run.dir={run}"])
    print(f"[slurm] run with a failing training job took {time.monotonic() - start:.0f} s")
    assert proc.returncode == 2 and "star: error: iteration 1: the training job" in proc.stderr, proc.stderr[-3000:]
    job_id = json.loads((run / "iter_01" / T.JOB_FILE).read_text())["job_id"]
    assert f"the training job {job_id}" in proc.stderr and "_log.err" in proc.stderr, proc.stderr[-3000:]
    assert A.is_done(run, 1, "rationalize") and not A.is_done(run, 1, "train")
