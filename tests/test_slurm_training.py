"""Fine-tuning as one SLURM job (trainer.num_nodes > 1 or trainer.slurm_launch=true, star/training/slurm.py):
config checks and the stale-job rule (fast), then on the real local cluster (the `slurm_cluster` fixture) one
node x 2 CPU tasks of gloo DDP through fit_on_slurm: the job ran 2 ranks, rank 0 wrote the checkpoint once,
its weights equal the same fit spawned on this machine; a failing job names itself and its log; and the
whole run through the CLI.

    python -m pytest -q tests/test_slurm_training.py              # the fast part
    python -m pytest -q -m slurm tests/test_slurm_training.py     # the cluster part
"""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch

from star import artifacts as A
from star.config import ConfigError, validate
from star.preflight import preflight
from star.slurm import final_states
from star.tracking import GLOBAL_STEP, read_wandb_offline, step_rows
from star.training import slurm as T
from tests.conftest import compose_config, run_star

POINT = ["~experiment", "model=tiny", "debug=fast", "logger=none", "n_iterations=1", "trainer=cpu_ddp"]


def test_slurm_training_is_off_by_default():
    cfg = compose_config(POINT)
    assert not T.enabled(cfg.trainer)
    assert T.enabled(compose_config([*POINT, "trainer.slurm_launch=true"]).trainer)
    assert T.enabled(compose_config([*POINT, "trainer.num_nodes=2"]).trainer)
    assert set(cfg.trainer.slurm) >= {"partition", "timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb"}


@pytest.mark.parametrize("override", ["trainer.num_nodes=2", "trainer.slurm_launch=true"])
def test_without_slurm_the_refusal_names_the_fix(monkeypatch, override):
    """Refused by the pre-flight checks (star/preflight.py), before any model loads."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError) as e:
        preflight(compose_config([*POINT, override]))
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
    assert T.failure_reason(failed) == "ValueError: boom"
    assert T.failure_reason("Job 7 (task: 0) with path p\nhas not produced any output (state: CANCELLED)\nmore") \
        == "Job 7 (task: 0) with path p; has not produced any output (state: CANCELLED)"


class FakeQueue:
    """squeue/scancel by script: `alive` maps job id -> state."""

    def __init__(self, alive: dict[str, str]):
        self.alive = alive
        self.cancelled: list[str] = []

    def states(self):
        return dict(self.alive)

    def cancel(self, ids):
        self.cancelled += ids


def test_a_stale_job_of_an_earlier_try_is_cancelled(tmp_path):
    """The job id in job_record is cancelled only while that job is alive; no record, or a bad one: nothing."""
    record, logged = tmp_path / "slurm_train.json", []
    queue = FakeQueue({"41": "RUNNING"})
    T.cancel_stale(record, queue, "iter 1 train", logged.append)
    record.write_text("not json")
    T.cancel_stale(record, queue, "iter 1 train", logged.append)
    A.write_json(record, {"job_id": "42"})
    T.cancel_stale(record, queue, "iter 1 train", logged.append)
    assert queue.cancelled == [] and logged == [], "job 42 is gone: nothing to cancel"
    queue.alive["42"] = "PENDING"
    T.cancel_stale(record, queue, "iter 1 train", logged.append)
    assert queue.cancelled == ["42"] and logged == ["[star] iter 1 train: cancelled SLURM job 42 of an earlier try"]


# ---------------------------------------------------------------- on the SLURM cluster
ROWS = [{"prompt": f"Q: {a} + 1\nA:", "completion": f" {a + 1}\n\n"} for a in range(8)]
STEPS, SEED = 3, 7


def cluster_point(cluster, *extra: str) -> list[str]:
    """POINT as a 1-node x 2-task SLURM fit on the test cluster (1 CPU per task)."""
    return [*POINT, "trainer.slurm_launch=true", f"trainer.slurm.partition={cluster.partition}",
            "trainer.slurm.cpus_per_task=1", "trainer.slurm.mem_gb=2", "trainer.slurm.poll_s=1", *extra]


def fit_as_job(cfg, out: Path, desc: str = "test train"):
    """fit_on_slurm of ROWS from the base model, every file under `out`."""
    return T.fit_on_slurm(cfg, start=None, rows=ROWS, steps=STEPS, seed=SEED, prefix="", save_to=out / "checkpoint",
                          job_dir=out / "slurm_train", job_record=out / "slurm_train.json", desc=desc,
                          log=lambda m: print(m))


@pytest.mark.slurm
def test_ddp_fit_as_one_slurm_job_equals_the_spawned_fit(slurm_cluster, tmp_path, monkeypatch):
    """One node x 2 tasks of gloo DDP: 2 ranks in one job, rank 0 alone saved a checkpoint that loads, and its
    weights equal, bit for bit, those of the same fit spawned on this machine (trainer.slurm_launch=false)."""
    from star.models import load_checkpoint
    from star.training import finetune

    cfg = compose_config(cluster_point(slurm_cluster))
    start = time.monotonic()
    stats = fit_as_job(cfg, tmp_path)
    print(f"[slurm] a 2-task training job took {time.monotonic() - start:.0f} s")
    assert stats.steps == STEPS and stats.setup["world_size"] == 2 and stats.setup["strategy"] == "ddp", stats
    job_id = stats.setup["slurm_job_id"]
    assert json.loads((tmp_path / "slurm_train.json").read_text())["job_id"] == job_id
    job_dir = tmp_path / "slurm_train" / job_id
    assert sorted(p.name for p in job_dir.glob("*_log.out")) == [f"{job_id}_0_log.out", f"{job_id}_1_log.out"]
    results = [pickle.loads((job_dir / f"{job_id}_{k}_result.pkl").read_bytes()) for k in (0, 1)]
    assert results[0][0] == "success" and results[1] == ("success", None), "rank 1 trained and returned without saving"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    job_model, _ = load_checkpoint(tmp_path / "checkpoint", device="cpu")
    # The same fit, spawned here: one thread per rank, as OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK gives the tasks.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    model, tok = T.load_start(cfg, None)
    spawned = finetune(model, tok, ROWS, steps=STEPS, trainer_cfg=cfg.trainer, seed=SEED, progress=False)
    assert (spawned.steps, spawned.n_tokens, spawned.loss) == (stats.steps, stats.n_tokens, stats.loss)
    here, there = model.state_dict(), job_model.state_dict()
    assert set(here) == set(there) and all(torch.equal(here[k], there[k]) for k in here), "weights differ"
    rows = final_states([job_id])
    assert [r[1] for r in rows] == ["COMPLETED"], rows


@pytest.mark.slurm
def test_failed_training_job_names_itself_and_its_log(slurm_cluster, tmp_path):
    """A job whose ranks fail (nccl on a machine without GPUs): TrainingJobError with `desc`, the job id and the
    failing task's log; nothing is saved."""
    cfg = compose_config(cluster_point(slurm_cluster, "trainer.process_group_backend=nccl"))
    with pytest.raises(T.TrainingJobError) as e:
        fit_as_job(cfg, tmp_path, desc="iter 3 train")
    job_id = json.loads((tmp_path / "slurm_train.json").read_text())["job_id"]
    message = str(e.value)
    assert message.startswith(f"iter 3 train: the training job {job_id} (SLURM state ") and "_log.err" in message, \
        message
    assert not (tmp_path / "checkpoint").exists()
    assert [r[1] for r in final_states([job_id])] == ["FAILED"]


@pytest.mark.slurm
def test_a_run_trains_as_one_slurm_job(slurm_cluster, tmp_path):
    """The whole CLI with a 2-task training job: the train marker records the job, M(1) is where the loop
    keeps it, the job's per-step rows reach train_steps.csv and the loop's W&B run, and the run completes."""
    run = tmp_path / "run"
    start = time.monotonic()
    with_wandb = [a for a in cluster_point(slurm_cluster) if a != "logger=none"]  # W&B offline: the default
    proc = run_star([*with_wandb, f"hydra.run.dir={run}"])
    print(f"[slurm] run with a 2-task training job took {time.monotonic() - start:.0f} s")
    logs = "".join(p.read_text(errors="replace") for p in sorted(run.rglob("slurm_train/**/*_log.*")))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-3000:]
    assert A.is_done(run, 1, "log"), "the run completed"
    train = A.read_done(run, 1, "train")
    setup = train["trainer"]
    assert setup["world_size"] == 2 and setup["strategy"] == "ddp", setup
    assert train["checkpoint"] == "iter_01/checkpoint" and train["steps"] > 0 and train["loss"] is not None
    assert json.loads((run / "iter_01" / "slurm_train.json").read_text())["job_id"] == setup["slurm_job_id"]
    assert list((run / "iter_01" / "checkpoint").glob("*.safetensors"))
    # The job's rank 0 wrote the per-step rows; the loop kept them and forwarded them to its W&B run.
    with A.train_steps_csv(run).open(newline="") as f:
        steps = [int(r["global_step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, train["steps"] + 1))
    logged = [int(r[GLOBAL_STEP]) for r in step_rows(read_wandb_offline(run)) if "train/loss" in r]
    assert logged == steps


@pytest.mark.slurm
def test_a_failed_training_job_stops_the_run_at_train(slurm_cluster, tmp_path):
    """The CLI with a failing training job: a user error naming the job, the stages before train kept."""
    run = tmp_path / "run"
    proc = run_star([*cluster_point(slurm_cluster, "trainer.process_group_backend=nccl"), f"hydra.run.dir={run}"])
    job_id = json.loads((run / "iter_01" / "slurm_train.json").read_text())["job_id"]
    assert proc.returncode == 2 and f"star: error: iter 1 train: the training job {job_id}" in proc.stderr, \
        proc.stderr[-3000:]
    assert A.is_done(run, 1, "rationalize") and not A.is_done(run, 1, "train")
