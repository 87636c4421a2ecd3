"""Everything the project asks of SLURM, in one place: submitit executors built from config, the
guard that hides a driver job's own SLURM_* variables while it submits, the queue the driver
watches (squeue, scancel, submission of one job or a job array), and waiting for a job's final
state in accounting (sacct).

    from star.slurm import SlurmQueue, final_states
    queue = SlurmQueue(folder, cfg.generator.slurm, "star-generate-shards")
    ids = queue.submit(fn, [(a, b), (c, d)])          # a job array, one task per argument tuple
    job = queue.submit_job(fn, a, b, nodes=2, ntasks_per_node=4)    # one job, submitit's Job
    queue.states(); queue.cancel(ids)
    final_states(ids)                                  # [(JobID, State, Elapsed)] once sacct has them final

Users: star/sharding.py (generation split over a job array) and star/training/slurm.py (a fit as
one job); the tests' private cluster (tests/slurm_cluster.py) reads accounting through final_states.
Config (`c` below): generator.slurm or trainer.slurm, whose schemas (SlurmJobConfig, ShardSlurmConfig)
are declared here.
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

# squeue states of a job (or array task) that is working: started and not yet gone.
RUNNING_STATES = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "RESIZING", "SIGNALING"})
# sacct states after which a job may still change (queued, running, requeued, held); any other is final.
ACTIVE_STATES = RUNNING_STATES | {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SUSPENDED"}


@dataclass
class SlurmJobConfig:
    """Resources of a SLURM job the loop submits (generator.slurm: each shard task; trainer.slurm: the
    training job), names as in hydra/launcher=slurm."""

    # null: the driver's own partition when it runs in a SLURM job, else the cluster's default.
    partition: Optional[str] = None
    timeout_min: int = 240
    gpus_per_node: Optional[int] = None
    cpus_per_task: int = 4
    mem_gb: Optional[float] = 16  # per node
    # Anything else sbatch takes, e.g. {account: my-lab, qos: high}.
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=lambda: [
        'if [ -n "$SLURM_CPUS_PER_TASK" ]; then export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK; fi'])
    # How often the driver looks at the job (squeue / its files).
    poll_s: float = 5.0


@dataclass
class ShardSlurmConfig(SlurmJobConfig):
    """Each shard task of generator.shards (a job array)."""

    array_parallelism: int = 16
    # The driver generates any shard no task has claimed after this many seconds (0: at once, from
    # the last shard down) and so never waits on an array that cannot start.
    takeover_after_s: float = 0.0


@contextmanager
def without_job_environment():
    """sbatch from inside a SLURM job (the driver) would pass the driver's SLURM_* variables to the
    jobs it submits, where srun reads them (a driver's SLURM_MEM_PER_CPU against a task's --mem is a
    fatal srun error): hide them, except SLURM_CONF, while submitting."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("SLURM_") and k != "SLURM_CONF"}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


def executor(folder: Path, c, job_name: str, **params: Any):
    """A submitit SlurmExecutor for jobs with the resources of `c` (generator.slurm, trainer.slurm: partition
    null means the driver's own partition when it runs in a SLURM job); `params` adds or overrides sbatch
    settings (array_parallelism, nodes, ntasks_per_node, gpus_per_node). Submit inside without_job_environment()."""
    import submitit

    ex = submitit.SlurmExecutor(folder=Path(folder) / "%j", max_num_timeout=0)
    base: dict[str, Any] = {"job_name": job_name, "time": int(c.timeout_min), "cpus_per_task": int(c.cpus_per_task),
                            "setup": list(c.setup), "additional_parameters": dict(c.additional_parameters)}
    partition = c.partition or os.environ.get("SLURM_JOB_PARTITION")  # default: the driver's own
    if partition:
        base["partition"] = partition
    if c.gpus_per_node:
        base["gpus_per_node"] = int(c.gpus_per_node)
    if c.mem_gb:
        base["mem"] = f"{int(round(float(c.mem_gb) * 1024))}M"  # sbatch takes whole numbers only
    ex.update_parameters(**{**base, **params})
    return ex


class SlurmQueue:
    """What the driver asks of SLURM: submit (submitit: a job array, or one job), which jobs are alive
    (squeue), cancel (scancel). Jobs get the resources of `slurm_cfg`, their files go under `folder`.
    Tests swap in a fake with the same submit / states / cancel."""

    def __init__(self, folder: Path, slurm_cfg, job_name: str):
        self.folder = Path(folder)
        self.cfg = slurm_cfg
        self.job_name = job_name

    def submit(self, fn: Callable, args: list[tuple]) -> list[str]:
        """One array task per argument tuple (at most slurm_cfg.array_parallelism at once); their job ids."""
        ex = executor(self.folder, self.cfg, self.job_name, array_parallelism=int(self.cfg.array_parallelism))
        with without_job_environment():
            jobs = ex.map_array(fn, *zip(*args))
        return [str(j.job_id) for j in jobs]

    def submit_job(self, fn: Callable, *args: Any, **sbatch: Any):
        """One job running fn(*args) in each of its tasks (`sbatch`: nodes, ntasks_per_node, ...): submitit's Job."""
        ex = executor(self.folder, self.cfg, self.job_name, **sbatch)
        with without_job_environment():
            return ex.submit(fn, *args)

    def states(self) -> dict[str, str] | None:
        """job id -> state of every alive job of this user (array tasks one by one); None when squeue fails."""
        try:
            proc = subprocess.run(["squeue", "-h", "-r", "-u", str(os.getuid()), "-o", "%i|%T"],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
        if proc.returncode != 0:
            return None
        return dict(line.split("|", 1) for line in proc.stdout.split() if "|" in line)

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)


def accounting(job_ids: list[str], fields: tuple[str, ...] = ("JobID", "State", "Elapsed"),
               env: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    """sacct's rows (`fields` of each) for the jobs (allocations only, no steps); [] when sacct fails."""
    cmd = ["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return []
    return [tuple(line.split("|")) for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []


def is_final(state: str) -> bool:
    """Whether a sacct state is one a job ends in ("CANCELLED by 0" counts as CANCELLED)."""
    return bool(state) and state.split()[0] not in ACTIVE_STATES


def final_states(job_ids: list[str], fields: tuple[str, ...] = ("JobID", "State", "Elapsed"), *,
                 timeout: float = 60, poll_s: float = 1, env: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    """sacct's rows for the jobs once every row is in a final state (`fields` must include State), polled
    every poll_s seconds: accounting lags a job's end (slurmdbd may still say RUNNING, or have no row yet).
    After `timeout` seconds, the last rows seen, final or not (the caller's check then says what is wrong)."""
    column = fields.index("State")
    deadline = time.monotonic() + timeout
    while True:
        rows = accounting(job_ids, fields, env)
        if (rows and all(is_final(r[column]) for r in rows)) or time.monotonic() > deadline:
            return rows
        time.sleep(poll_s)
