"""Pre-flight: the checks of a config that look at the machine and the data, run by the CLI after the
pure checks (star/config.py) and before any model loads.

    preflight(cfg)      # raises ConfigError with the fix: SLURM missing, a GPU not visible, a setup
                        # that cannot fit in memory, a missing model or package, a bad data row

Each check reads files, devices or PATH but loads no weights; the slowest one builds the task and
reads its splits (which is also what catches a malformed row before anything expensive runs).
"""

from __future__ import annotations

import shutil
from typing import Any

from star.config import ConfigError, is_slurm_launcher, slurm_training_label
from star.memory import check_fits
from star.models import ModelNotFoundError, check_model_available
from star.sharding import check_devices, resolve_devices
from star.tasks import build_task


def preflight(cfg: Any) -> None:
    """Every I/O check, in the order a user would fix them. Raises ConfigError."""
    check_slurm_available(cfg)
    check_generation_engine(cfg)
    if cfg.generator.devices is not None:
        problem = check_devices(resolve_devices(cfg.generator.devices, cfg.model.device))
        if problem is not None:
            raise ConfigError(str(problem))
    if cfg.trainer.memory_check:
        # Before the model path is resolved or anything loads: a setup that cannot fit fails now.
        check_fits(cfg)
    try:
        check_model_available(cfg.model)
    except ModelNotFoundError as e:
        raise ConfigError(str(e)) from None
    check_task_data(cfg)


def check_generation_engine(cfg: Any) -> None:
    """A backend with an environment of its own (generator=vllm) finds it, before any model loads."""
    if cfg.generator.name == "vllm":
        from star.generation.vllm_engine import environment_problem

        if problem := environment_problem(cfg.generator.python):
            raise ConfigError(problem)


def check_slurm_available(cfg: Any) -> None:
    """The SLURM commands the config needs (fits as SLURM jobs; generation shards) are on PATH."""
    what = slurm_training_label(cfg.trainer)
    missing = [c for c in ("sbatch", "srun", "squeue") if shutil.which(c) is None]
    if what is not None and missing:
        raise ConfigError(
            f"{what} runs each fine-tuning as a SLURM job (one task per device on every node), but SLURM is not "
            f"available here (no {'/'.join(missing)} on PATH); run star on a SLURM cluster (a login node, or a small "
            "driver job), or train on this node: trainer.num_nodes=1 trainer.slurm_launch=false with "
            "trainer.devices=N")
    shards = cfg.generator.shards
    if shards > 0 and (shutil.which("sbatch") is None or shutil.which("squeue") is None):
        raise ConfigError(
            f"generator.shards={shards} splits generation over a SLURM job array, but SLURM is not available "
            "here (no sbatch/squeue on PATH); set generator.shards=0, or generator.devices=N for worker "
            "processes on this machine")


def check_sweep_launcher_available(launcher_cfg: Any) -> None:
    """A sweep with hydra/launcher=slurm needs sbatch and srun (submitit looks for both) on PATH."""
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if is_slurm_launcher(launcher_cfg) and missing:
        raise ConfigError(
            f"hydra/launcher=slurm submits every sweep point with sbatch, but SLURM is not available here (no "
            f"{'/'.join(missing)} on PATH); run the sweep on a SLURM login node, or on this machine with "
            "hydra/launcher=local (one point after another) or hydra/launcher=submitit (each point its own process)")


def check_task_data(cfg: Any) -> None:
    """Build the task and read its splits and the prompt: bad data fails before any model loads.

    Tasks raise ValueError for problems in their config or data (too few problems for the
    requested size, a malformed row, an empty prompt file); here that becomes a ConfigError.
    """
    try:
        task = build_task(cfg.task, seed=cfg.seed)
        train = task.load("train")
        for split in task.splits:
            task.load(split)
        task.fewshot_prompt(direct=cfg.method.direct)
    except (ValueError, OSError) as e:
        raise ConfigError(str(e)) from None
    if cfg.method.data == "gold" and not cfg.method.direct and train and task.gold_rationale(train[0]) is None:
        raise ConfigError(f"method.data=gold with rationales needs gold rationales, and task {cfg.task.name} has "
                          "none; set method.direct=true (method=direct_finetune) to train on the answers only")
