"""Fine-tuning as ONE SLURM job over several GPUs and nodes (`trainer.num_nodes` > 1, or
`trainer.slurm_launch=true` on one node).

    star model=gptj_6b trainer=fsdp trainer.devices=8 trainer.num_nodes=2 trainer.slurm.partition=gpu
    star model=tiny debug=fast trainer=cpu_ddp trainer.slurm_launch=true      # 1 node x 2 CPU tasks (gloo)

    stats = fit_on_slurm(cfg, start=None, rows=rows, steps=40, seed=0, prefix="", save_to=out / "checkpoint",
                         job_dir=out / "slurm_train", job_record=out / "slurm_train.json", desc="iter 1 train")

The caller (the driver) submits the fit through submitit as one job with nodes=num_nodes,
ntasks_per_node=devices (and gpus_per_node=devices on GPUs), resources from trainer.slurm. srun
starts one process per task and sets SLURM_NTASKS, SLURM_NTASKS_PER_NODE, SLURM_PROCID,
SLURM_LOCALID, SLURM_NODEID, SLURM_NNODES and SLURM_JOB_NODELIST, which is exactly what Lightning's
SLURMEnvironment reads (world size, ranks, the first node as MASTER_ADDR, a port from the job id).
Every task runs `train_task`: load the start model (the base built from cfg.model with cfg.seed,
or the checkpoint at `start`), finetune(..., spawn=False) with Lightning's own DDP/FSDP, then rank 0
saves the result with save_checkpoint (safetensors, atomic) at `save_to` and returns the fit's
stats, which fit_on_slurm returns as FitStats.

Files: `job_dir`/<job id>/ (submitit's pickles and each task's log, <job>_<task>_log.out/.err) and
`job_record` (the job id; a rerun after the driver died cancels that job if it still runs, then
submits a new one: the fit is redone from scratch). Where they lie is the caller's business.

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
from star.slurm import SlurmQueue
from star.training.fit import FitStats, finetune


class TrainingJobError(RuntimeError):
    """The SLURM training job failed; the message names the job and the failing task's log."""


def enabled(trainer_cfg) -> bool:
    """Does each fit run as a SLURM job (instead of in, or spawned from, the loop's process)?"""
    return int(trainer_cfg.num_nodes) > 1 or bool(trainer_cfg.get("slurm_launch", False))


def load_start(cfg, start: str | None):
    """(model, tokenizer) to fine-tune, on the CPU (Lightning moves it to this rank's device): the base as
    the loop builds it (same seed), or the checkpoint directory `start`."""
    from omegaconf import OmegaConf

    from star.models import load_checkpoint, load_model_and_tokenizer

    if start is None:
        return load_model_and_tokenizer(OmegaConf.merge(cfg.model, {"device": "cpu"}), seed=cfg.seed)
    return load_checkpoint(Path(start), dtype=cfg.model.dtype, device="cpu")


def train_task(cfg: dict, start: str | None, rows: list[dict], steps: int, seed: int, prefix: str,
               save_to: str, callbacks=()) -> dict | None:
    """One task (rank) of the training job: fit with the others, then rank 0 saves the fine-tuned model
    to `save_to` and returns the fit's stats; other ranks return None. `callbacks`: Lightning callbacks
    pickled from the driver (the StepLog that writes the per-step rows the driver forwards to W&B)."""
    from omegaconf import OmegaConf

    from star.models import save_checkpoint

    cfg = OmegaConf.create(cfg)
    model, tokenizer = load_start(cfg, start)
    stats = finetune(model, tokenizer, rows, steps=steps, trainer_cfg=cfg.trainer, seed=seed, prefix=prefix,
                     callbacks=list(callbacks), progress=False, lora=cfg.model.lora, spawn=False)
    if int(os.environ.get("SLURM_PROCID", "0")) != 0:
        return None
    if stats.full_state_dict is not None:  # FSDP: this rank's model object is sharded; load the gathered weights
        model, _ = load_start(cfg, start)
        model.load_state_dict(stats.full_state_dict, strict=True)
        stats.full_state_dict = None
    save_checkpoint(model, tokenizer, Path(save_to), max_shard_size=cfg.checkpoint.max_shard_size)
    out = asdict(stats)
    del out["full_state_dict"]
    out["setup"]["slurm_job_id"] = os.environ.get("SLURM_JOB_ID")
    return out


def cancel_stale(job_record: Path, queue: SlurmQueue, desc: str, log) -> None:
    """A training job from an earlier try of this fit (the driver died or was requeued) that still runs
    would write the same checkpoint: cancel it."""
    if not job_record.exists():
        return
    try:
        old = str(A.read_json(job_record)["job_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if old in (queue.states() or {}):
        queue.cancel([old])
        log(f"[star] {desc}: cancelled SLURM job {old} of an earlier try")


def failure_reason(message: str) -> str:
    """The gist of a submitit error: the last line of the task's traceback (FailedJobError), else the
    first lines (UncompletedJobError: no result, with the job's state)."""
    parts = message.split("-" * 22)
    lines = [line.strip() for line in (parts[1] if len(parts) >= 3 else message).splitlines() if line.strip()]
    return ("; ".join(lines[-1:] if len(parts) >= 3 else lines[:2]))[-600:]


def wait(job, queue: SlurmQueue, poll_s: float, desc: str, log) -> None:
    """Until the job ends, logging its squeue state as it changes; Ctrl-C cancels it."""
    last = None
    try:
        while not job.done():
            state = (queue.states() or {}).get(str(job.job_id))
            if state and state != last:
                log(f"[star] {desc}: SLURM job {job.job_id} is {state}" + (
                    " (the driver waits: it must not hold the resources this job needs)" if state == "PENDING" else ""))
                last = state
            time.sleep(poll_s)
    except KeyboardInterrupt:
        queue.cancel([str(job.job_id)])  # Ctrl-C: no orphan job keeps training (a rerun redoes the fit)
        raise


def rank_zero_stats(job, desc: str) -> dict:
    """Rank 0's return value of the ended job; TrainingJobError naming the job and the failing task's log."""
    try:
        results = job.results()
    except Exception as e:  # noqa: BLE001 - submitit raises its own errors for failed or vanished jobs
        found = re.search(r"\(task[=:] ?(\d+)\)", str(e))  # submitit names the (first) failing task
        failed = int(found.group(1)) if found else 0
        task_log = (job.task(failed) if job.num_tasks > 1 else job).paths.stderr
        raise TrainingJobError(
            f"{desc}: the training job {job.job_id} (SLURM state {job.state}) failed in task {failed}: "
            f"{failure_reason(str(e))}. Its log: {task_log} (every task's log in {job.paths.folder}); finished "
            "stages are kept: rerun the same command to resume") from None
    if not isinstance(results[0], dict):
        raise TrainingJobError(f"{desc}: rank 0 of the training job {job.job_id} returned no stats; its log: "
                               f"{job.paths.stderr}")
    return results[0]


def fit_on_slurm(cfg, *, start: Path | None, rows: list[dict], steps: int, seed: int, prefix: str,
                 save_to: Path, job_dir: Path, job_record: Path, desc: str, callbacks=(),
                 log=lambda m: print(m, file=sys.stderr)) -> FitStats:
    """Submit the fit of `cfg` (the whole run config) as one job, wait for it, return rank 0's FitStats (the
    fine-tuned model is then at `save_to`). `start`: the checkpoint directory to fine-tune, None for the base.
    submitit's files go under `job_dir`; `job_record` holds the job id (a stale job of an earlier try is
    cancelled first). A failed job raises TrainingJobError naming the job and its log."""
    from omegaconf import OmegaConf

    t = cfg.trainer
    queue = SlurmQueue(job_dir, t.slurm, "star-train")
    cancel_stale(Path(job_record), queue, desc, log)
    devices = int(t.devices)
    shape = {"nodes": int(t.num_nodes), "ntasks_per_node": devices}
    if str(t.accelerator) in ("gpu", "cuda") and not t.slurm.gpus_per_node:
        shape["gpus_per_node"] = devices
    job = queue.submit_job(train_task, OmegaConf.to_container(cfg, resolve=True), None if start is None else str(start),
                           rows, steps, seed, prefix, str(save_to), list(callbacks), **shape)
    A.write_json(Path(job_record), {"job_id": str(job.job_id)})
    log(f"[star] {desc}: SLURM job {job.job_id} ({t.num_nodes} node(s) x {devices} task(s)); "
        f"logs in {Path(job_dir) / str(job.job_id)}")
    wait(job, queue, float(t.slurm.poll_s), desc, log)
    return FitStats(**rank_zero_stats(job, desc))
