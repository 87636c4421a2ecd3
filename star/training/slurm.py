"""Fine-tuning as ONE SLURM job over several GPUs and nodes (`trainer.num_nodes` > 1, or
`trainer.slurm_launch=true` on one node).

    star model=gptj_6b trainer=fsdp trainer.devices=8 trainer.num_nodes=2 trainer.slurm.partition=gpu
    star model=tiny debug=fast trainer=cpu_ddp trainer.slurm_launch=true      # 1 node x 2 CPU tasks (gloo)

The loop's process (the driver) submits the train stage through submitit as one job with
nodes=num_nodes, ntasks_per_node=devices (and gpus_per_node=devices on GPUs), resources from
trainer.slurm. srun starts one process per task and sets SLURM_NTASKS, SLURM_NTASKS_PER_NODE,
SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURM_NNODES and SLURM_JOB_NODELIST, which is exactly
what Lightning's SLURMEnvironment reads (world size, ranks, the first node as MASTER_ADDR, a port
from the job id). Every task runs `train_task`: load the start model (the base, or M(n-1) from its
checkpoint) as the loop does, finetune(..., spawn=False) with Lightning's own DDP/FSDP, then rank 0
saves M(n) with save_checkpoint (safetensors, atomic) where the in-process path saves it, and
returns the fit's stats; the driver writes the same train marker as the in-process path.

Files, in iter_NN/: slurm_train/<job id>/ (submitit's pickles and each task's log,
<job>_<task>_log.out/.err) and slurm_train.json (the job id; a rerun after the driver died cancels
that job if it still runs, then submits a new one: the stage is redone from scratch).

Deadlock: the driver waits for the job and holds what it was given meanwhile. Under SLURM, submit the
driver itself with small resources (a few CPUs, no GPU) so it does not hold the GPUs or nodes the
training job needs; the driver logs the job's state (PENDING, RUNNING) as it changes.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

from star import artifacts as A
from star.sharding import SlurmQueue, _without_job_environment, slurm_executor

JOB_FILE = "slurm_train.json"


class TrainingJobError(RuntimeError):
    """The SLURM training job failed; the message names the job and the failing task's log."""


def enabled(trainer_cfg) -> bool:
    """Does each fit run as a SLURM job (instead of in, or spawned from, the loop's process)?"""
    return int(trainer_cfg.num_nodes) > 1 or bool(trainer_cfg.get("slurm_launch", False))


def load_start(cfg, run_dir: Path, checkpoint: str | None):
    """(model, tokenizer) to fine-tune, on the CPU (Lightning moves it to this rank's device): the base as
    the loop builds it (same seed), or a checkpoint of this run."""
    from omegaconf import OmegaConf

    from star.models import load_checkpoint, load_model_and_tokenizer

    if checkpoint is None:
        return load_model_and_tokenizer(OmegaConf.merge(cfg.model, {"device": "cpu"}), seed=cfg.seed)
    return load_checkpoint(Path(run_dir) / checkpoint, dtype=cfg.model.dtype, device="cpu")


def train_task(run_dir: str, cfg: dict, start: str | None, rows: list[dict], steps: int, seed: int,
               prefix: str, checkpoint: str) -> dict | None:
    """One task (rank) of the training job: fit with the others, then rank 0 saves M(n) to `checkpoint`
    (relative to the run directory) and returns the fit's stats; other ranks return None."""
    from omegaconf import OmegaConf

    from star.models import save_checkpoint
    from star.training.fit import finetune

    cfg = OmegaConf.create(cfg)
    model, tokenizer = load_start(cfg, Path(run_dir), start)
    stats = finetune(model, tokenizer, rows, steps=steps, trainer_cfg=cfg.trainer, seed=seed, prefix=prefix,
                     progress=False, lora=cfg.model.lora, spawn=False)
    if int(os.environ.get("SLURM_PROCID", "0")) != 0:
        return None
    if stats.full_state_dict is not None:  # FSDP: this rank's model object is sharded; load the gathered weights
        model, _ = load_start(cfg, Path(run_dir), start)
        model.load_state_dict(stats.full_state_dict, strict=True)
        stats.full_state_dict = None
    save_checkpoint(model, tokenizer, Path(run_dir) / checkpoint, max_shard_size=cfg.checkpoint.max_shard_size)
    out = asdict(stats)
    del out["full_state_dict"]
    out["setup"]["slurm_job_id"] = os.environ.get("SLURM_JOB_ID")
    return out


def _cancel_stale(run_dir: Path, iteration: int, queue: SlurmQueue, log) -> None:
    """A training job from an earlier try of this stage (the driver died or was requeued) that still runs
    would write the same checkpoint: cancel it."""
    path = A.iter_dir(run_dir, iteration) / JOB_FILE
    if not path.exists():
        return
    try:
        old = str(A.read_json(path)["job_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if old in (queue.states() or {}):
        queue.cancel([old])
        log(f"[star] iter {iteration} train: cancelled SLURM job {old} of an earlier try")


def _reason(message: str) -> str:
    """The gist of a submitit error: the last line of the task's traceback (FailedJobError), else the
    first lines (UncompletedJobError: no result, with the job's state)."""
    parts = message.split("-" * 22)
    lines = [line.strip() for line in (parts[1] if len(parts) >= 3 else message).splitlines() if line.strip()]
    return ("; ".join(lines[-1:] if len(parts) >= 3 else lines[:2]))[-600:]


def fit_on_slurm(run_dir: Path, cfg, iteration: int, *, start: str | None, rows: list[dict], steps: int, seed: int,
                 prefix: str, checkpoint: str, log=lambda m: print(m, file=sys.stderr)):
    """Submit the fit as one job, wait for it, return rank 0's FitStats (M(n) is then at `checkpoint`).
    A failed job raises TrainingJobError naming the job and its log."""
    from omegaconf import OmegaConf

    from star.training.fit import FitStats

    t = cfg.trainer
    run_dir = Path(run_dir)
    folder = A.iter_dir(run_dir, iteration) / "slurm_train"
    queue = SlurmQueue(folder, t.slurm, "star-train")
    _cancel_stale(run_dir, iteration, queue, log)
    devices = int(t.devices)
    extra = {"nodes": int(t.num_nodes), "ntasks_per_node": devices}
    if str(t.accelerator) in ("gpu", "cuda") and not t.slurm.gpus_per_node:
        extra["gpus_per_node"] = devices
    ex = slurm_executor(folder, t.slurm, "star-train", **extra)
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    with _without_job_environment():
        job = ex.submit(train_task, str(run_dir), cfg_dict, start, rows, steps, seed, prefix, checkpoint)
    A.write_json(A.iter_dir(run_dir, iteration) / JOB_FILE, {"job_id": str(job.job_id)})
    log(f"[star] iter {iteration} train: SLURM job {job.job_id} ({t.num_nodes} node(s) x {devices} task(s)); "
        f"logs in {folder / str(job.job_id)}")
    last = None
    try:
        while not job.done():
            state = (queue.states() or {}).get(str(job.job_id))
            if state and state != last:
                log(f"[star] iter {iteration} train: SLURM job {job.job_id} is {state}" + (
                    " (the driver waits: it must not hold the resources this job needs)" if state == "PENDING" else ""))
                last = state
            time.sleep(float(t.slurm.poll_s))
    except KeyboardInterrupt:
        queue.cancel([str(job.job_id)])  # Ctrl-C: no orphan job keeps training (a rerun redoes the stage)
        raise
    try:
        results = job.results()
    except Exception as e:  # noqa: BLE001 - submitit raises its own errors for failed or vanished jobs
        found = re.search(r"\(task[=:] ?(\d+)\)", str(e))  # submitit names the (first) failing task
        failed = int(found.group(1)) if found else 0
        task_log = (job.task(failed) if job.num_tasks > 1 else job).paths.stderr
        raise TrainingJobError(
            f"iteration {iteration}: the training job {job.job_id} (SLURM state {job.state}) failed in task {failed}: "
            f"{_reason(str(e))}. Its log: {task_log} (every task's log in {job.paths.folder}); finished stages "
            "are kept: rerun the same command to resume") from None
    stats = results[0]
    if not isinstance(stats, dict):
        raise TrainingJobError(f"iteration {iteration}: rank 0 of the training job {job.job_id} returned no "
                               f"stats; its log: {job.paths.stderr}")
    return FitStats(**stats)
