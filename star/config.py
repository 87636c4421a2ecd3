"""Typed config schemas, registered in Hydra's ConfigStore.

conf/config.yaml lists `star_schema` first in its defaults, so every group file is
merged onto these dataclasses: an unknown key (`task.digitz=3`) or a wrong type
(`n_iterations=abc`) fails when the config is composed, not an hour into a job.
Range checks that a type cannot express live in `validate()`, which the CLI calls
before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class DataFilesConfig:
    train: Optional[str] = None
    dev: Optional[str] = None


@dataclass
class TaskConfig:
    name: str = MISSING
    # Arithmetic: the operand digit counts to draw from (paper: 1-5).
    digits: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    # Size of the training pool (N) and of the dev split.
    train_size: int = 1000
    dev_size: int = 100
    # Sample k of the N training questions each iteration (null: all of them).
    sample_per_iteration: Optional[int] = None
    # File-backed tasks read local files here (json, jsonl, parquet) when offline.
    data_files: DataFilesConfig = field(default_factory=DataFilesConfig)
    # File-backed tasks: the `datasets` hub id (and config name) read when data_files are not set.
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    # Longest completion the generator may write for this task.
    max_new_tokens: int = 128
    # gsm8k: where problems come from: hub_or_files (data_files, else the hub) or gsm_symbolic
    # (generated offline from the GSM-Symbolic templates, via reasoning_gym, from the seed).
    source: str = "hub_or_files"
    # reasoning_gym: the dataset name and the keyword arguments its config takes.
    dataset: Optional[str] = None
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoraConfig:
    # Train low-rank adapters (peft) instead of every weight; merged into M(n) after each fit.
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    # Module names to adapt (GPT-J and Llama both name their attention projections q_proj/v_proj).
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class ModelConfig:
    name: str = MISSING
    # HF hub id or local directory; ignored by builders that make their own model (tiny).
    name_or_path: Optional[str] = None
    # Tiny random model dimensions (model=tiny only).
    hidden_size: int = 64
    n_layers: int = 2
    n_heads: int = 4
    # Where converted checkpoints are cached (embedded default model).
    cache_dir: Optional[str] = None
    dtype: str = "float32"
    # Where the model lives for generation and eval: auto (the GPU when one is visible), cpu, cuda.
    device: str = "auto"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class MethodConfig:
    name: str = "star"
    # Whether iterations fine-tune at all (fewshot_* methods: no).
    train: bool = True
    # Keep the few-shot prompt in the training text (and so ask the fine-tuned model with it).
    keep_prompt_in_training: bool = False
    # Fine-tune the ORIGINAL base each iteration (paper); false continues from M(n-1).
    restart_from_base: bool = True
    # Keep only rationales whose every step checks out (tasks that can check steps).
    keep_only_faithful: bool = False
    # Answers only: the answers-only few-shot prompt, and answer-only training targets.
    direct: bool = False
    # Where training examples come from: "generated" (STaR: generate, filter, rationalize)
    # or "gold" (supervised fine-tuning on the gold answers of every training question).
    data: str = "generated"


@dataclass
class RationalizationConfig:
    enabled: bool = True
    # Probability that a failed question is retried with the hint.
    p_rationalization: float = 1.0
    # Rationalize with the few-shot exemplars shown WITH their hints (the model sees how a
    # hint is used), also for fine-tuned models that are otherwise asked without a prompt.
    hinted_prompt: bool = True
    # Debug only: "rationalizations" are the task's gold rationales instead of model output,
    # so a random-weight model (model=tiny) still has something to fine-tune on.
    gold_oracle: bool = False


@dataclass
class SamplingConfig:
    # 0 means greedy; any positive value samples (dev evaluation is always greedy).
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass
class ScheduleConfig:
    # exponential: base_steps * (1 + growth)^(n-1); linear: base_steps + increment*(n-1);
    # epoch: (base_epochs + epoch_growth*(n-1)) passes over the kept examples.
    mode: str = "exponential"
    base_steps: int = 40
    growth: float = 0.2
    increment: int = 20
    base_epochs: float = 1.0
    epoch_growth: float = 0.2


@dataclass
class SlurmJobConfig:
    # Resources of a SLURM job the loop submits (generator.slurm: each shard task; trainer.slurm: the
    # training job), names as in hydra/launcher=slurm. partition null: the driver's own partition when
    # it runs in a SLURM job, else the cluster's default. mem_gb is per node.
    partition: Optional[str] = None
    timeout_min: int = 240
    gpus_per_node: Optional[int] = None
    cpus_per_task: int = 4
    mem_gb: Optional[float] = 16
    # Anything else sbatch takes, e.g. {account: my-lab, qos: high}.
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=lambda: [
        'if [ -n "$SLURM_CPUS_PER_TASK" ]; then export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK; fi'])
    # How often the driver looks at the job (squeue / its files).
    poll_s: float = 5.0


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    # Fit as ONE SLURM job of num_nodes x devices tasks, each a Lightning rank (star/training/slurm.py):
    # always when num_nodes > 1; slurm_launch=true takes the same path on one node. Resources: slurm.
    slurm_launch: bool = False
    slurm: SlurmJobConfig = field(default_factory=SlurmJobConfig)
    # auto (one device), ddp or fsdp; ddp/fsdp spawn worker processes for each fit (star/training/fit.py).
    strategy: str = "auto"
    # torch.distributed backend for ddp/fsdp: null picks nccl on GPUs, gloo on CPU.
    process_group_backend: Optional[str] = None
    # fsdp only: FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD; recompute each decoder
    # block's activations in the backward pass; keep parameters on the CPU between uses.
    sharding_strategy: str = "FULL_SHARD"
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    # Refuse, before loading anything, a setup whose estimated memory exceeds the device's.
    memory_check: bool = True
    precision: str = "32-true"
    lr: float = 1e-5
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    warmup_steps: int = 100
    gradient_clip_val: float = 1.0
    batch_size: int = 8
    max_seq_len: int = 1024
    # Pack each batch's examples end to end into rows of at most max_seq_len tokens (no padding
    # work; per-example positions and a block-diagonal mask, so no cross-example attention).
    packing: bool = True
    # Evaluate on `callback_dev_size` dev questions every N training steps (null: never).
    eval_every_n_steps: Optional[int] = None
    callback_dev_size: int = 16


@dataclass
class ShardSlurmConfig(SlurmJobConfig):
    # Each shard task of generator.shards (see SlurmJobConfig for the shared keys).
    array_parallelism: int = 16
    # The driver generates any shard no task has claimed after this many seconds (0: at once, from
    # the last shard down) and so never waits on an array that cannot start.
    takeover_after_s: float = 0.0


@dataclass
class GeneratorConfig:
    name: str = "hf"
    batch_size: int = 16
    # Encode the shared few-shot prefix once per pass and reuse its KV cache.
    reuse_prefix: bool = True
    progress: bool = True
    # Split each training-set pass (generate, rationalize) over worker processes on this node, one
    # per device: N (cuda:0..N-1, or N CPU processes without a GPU) or a list ([cuda:0,cuda:2]).
    # null: generate in the loop's process. Output is identical to one process (star/sharding.py).
    devices: Any = None
    # Or over a SLURM job array of this many shard tasks (0: off), with these resources.
    shards: int = 0
    slurm: ShardSlurmConfig = field(default_factory=ShardSlurmConfig)


@dataclass
class LoggerConfig:
    wandb: bool = True
    csv: bool = True
    # offline | online | disabled ; offline by default so nothing leaves the machine.
    mode: str = "offline"
    project: str = "star"
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    n_samples: int = 8


@dataclass
class CheckpointConfig:
    # last_and_best: after each eval delete older iterations' checkpoints except the last and the
    # best by dev accuracy (deletions listed in <run>/checkpoint_retention.jsonl); all: keep every one.
    keep: str = "last_and_best"
    # Largest safetensors shard written by save_pretrained.
    max_shard_size: str = "2GB"


@dataclass
class StarConfig:
    seed: int = 0
    n_iterations: int = 3
    # Stop early when dev accuracy has not improved by min_delta for `patience` iterations.
    plateau_patience: Optional[int] = None
    plateau_min_delta: float = 0.0
    # Print the per-iteration table at the end of a run.
    print_table: bool = True
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    rationalization: RationalizationConfig = field(default_factory=RationalizationConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def register_configs() -> None:
    ConfigStore.instance().store(name="star_schema", node=StarConfig)


class ConfigError(ValueError):
    """A user error in the config: the message names the problem and the fix."""


SCHEDULE_MODES = ("exponential", "linear", "epoch")
OPTIMIZERS = ("adam", "adamw")
LOGGER_MODES = ("offline", "online", "disabled")
METHOD_DATA = ("generated", "gold")
STRATEGIES = ("auto", "ddp", "fsdp")  # star/training/fit.py builds them
SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")
CHECKPOINT_KEEP = ("last_and_best", "all")


def validate(cfg: Any) -> None:
    """Range and choice checks the dataclass types cannot express. Raises ConfigError."""
    from star.tasks import TASKS  # local: keep config import light

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(cfg.task.name in TASKS, f"unknown task '{cfg.task.name}'; choose one of: {', '.join(sorted(TASKS))} (task=NAME)")
    need(cfg.n_iterations >= 0, f"n_iterations must be >= 0 (0 runs only the few-shot baseline), got {cfg.n_iterations}")
    need(cfg.task.train_size > 0, f"task.train_size must be > 0, got {cfg.task.train_size}")
    need(cfg.task.dev_size > 0, f"task.dev_size must be > 0, got {cfg.task.dev_size}")
    need(len(cfg.task.digits) > 0 and all(d >= 1 for d in cfg.task.digits),
         f"task.digits must list digit counts >= 1, e.g. task.digits=[1,2,3]; got {list(cfg.task.digits)}")
    k = cfg.task.sample_per_iteration
    need(k is None or 0 < k <= cfg.task.train_size,
         f"task.sample_per_iteration must be in 1..task.train_size ({cfg.task.train_size}) or null, got {k}")
    need(cfg.task.max_new_tokens > 0, f"task.max_new_tokens must be > 0, got {cfg.task.max_new_tokens}")
    need(cfg.sampling.temperature >= 0, f"sampling.temperature must be >= 0 (0 = greedy), got {cfg.sampling.temperature}")
    need(0 < cfg.sampling.top_p <= 1, f"sampling.top_p must be in (0, 1], got {cfg.sampling.top_p}")
    p = cfg.rationalization.p_rationalization
    need(0 <= p <= 1, f"rationalization.p_rationalization must be in [0, 1], got {p}")
    need(cfg.schedule.mode in SCHEDULE_MODES, f"schedule.mode must be one of {', '.join(SCHEDULE_MODES)}, got '{cfg.schedule.mode}'")
    need(cfg.schedule.base_steps > 0, f"schedule.base_steps must be > 0, got {cfg.schedule.base_steps}")
    need(cfg.schedule.base_epochs > 0, f"schedule.base_epochs must be > 0, got {cfg.schedule.base_epochs}")
    need(cfg.trainer.lr > 0, f"trainer.lr must be > 0, got {cfg.trainer.lr}")
    need(cfg.trainer.batch_size > 0, f"trainer.batch_size must be > 0, got {cfg.trainer.batch_size}")
    need(cfg.trainer.warmup_steps >= 0, f"trainer.warmup_steps must be >= 0, got {cfg.trainer.warmup_steps}")
    need(cfg.trainer.optimizer in OPTIMIZERS, f"trainer.optimizer must be one of {', '.join(OPTIMIZERS)}, got '{cfg.trainer.optimizer}'")
    need(cfg.method.data in METHOD_DATA, f"method.data must be one of {', '.join(METHOD_DATA)}, got '{cfg.method.data}'")
    need(cfg.generator.batch_size > 0, f"generator.batch_size must be > 0, got {cfg.generator.batch_size}")
    validate_generator_split(cfg, need)
    need(cfg.logger.mode in LOGGER_MODES, f"logger.mode must be one of {', '.join(LOGGER_MODES)}, got '{cfg.logger.mode}'")
    need(cfg.plateau_patience is None or cfg.plateau_patience >= 1,
         f"plateau_patience must be >= 1 or null, got {cfg.plateau_patience}")
    validate_scale(cfg, need)
    from star.models import MODEL_BUILDERS, ModelNotFoundError, check_model_available

    need(cfg.model.name in MODEL_BUILDERS,
         f"unknown model '{cfg.model.name}'; choose one of: {', '.join(sorted(MODEL_BUILDERS))} (model=NAME)")
    if cfg.trainer.memory_check:
        # Before the model path is resolved or anything loads: a setup that cannot fit fails now.
        from star.memory import check_fits

        check_fits(cfg)
    try:
        check_model_available(cfg.model)
    except ModelNotFoundError as e:
        raise ConfigError(str(e)) from None
    validate_task_data(cfg)


def validate_scale(cfg: Any, need) -> None:
    """Checks of the multi-device, LoRA and checkpoint keys."""
    t, lora = cfg.trainer, cfg.model.lora
    need(t.strategy in STRATEGIES, f"trainer.strategy must be one of {', '.join(STRATEGIES)} "
         f"(trainer=ddp, trainer=fsdp, trainer=cpu_ddp), got '{t.strategy}'")
    validate_slurm_training(cfg, need)
    need(t.sharding_strategy in SHARDING_STRATEGIES,
         f"trainer.sharding_strategy must be one of {', '.join(SHARDING_STRATEGIES)}, got '{t.sharding_strategy}'")
    need(t.strategy == "auto" or not t.eval_every_n_steps,
         f"trainer.eval_every_n_steps is not supported with trainer.strategy={t.strategy} (the dev callback runs "
         "in the main process); set trainer.eval_every_n_steps=null")
    need(not (lora.enabled and t.strategy == "fsdp"),
         "model.lora.enabled=true is not supported with trainer.strategy=fsdp; use LoRA on one GPU (trainer=gpu) "
         "or DDP (trainer=ddp), or full fine-tuning with FSDP (model.lora.enabled=false)")
    need(lora.r > 0, f"model.lora.r must be > 0, got {lora.r}")
    need(lora.alpha > 0, f"model.lora.alpha must be > 0, got {lora.alpha}")
    need(0 <= lora.dropout < 1, f"model.lora.dropout must be in [0, 1), got {lora.dropout}")
    need(len(lora.target_modules) > 0, "model.lora.target_modules must name at least one module, e.g. [q_proj,v_proj]")
    need(cfg.checkpoint.keep in CHECKPOINT_KEEP,
         f"checkpoint.keep must be one of {', '.join(CHECKPOINT_KEEP)}, got '{cfg.checkpoint.keep}'")


def validate_slurm_training(cfg: Any, need) -> None:
    """Checks of trainer.num_nodes / trainer.slurm_launch (each fit as one SLURM job, star/training/slurm.py)."""
    import shutil

    t = cfg.trainer
    need(t.num_nodes >= 1, f"trainer.num_nodes must be >= 1, got {t.num_nodes}")
    if t.num_nodes == 1 and not t.slurm_launch:
        return
    what = f"trainer.num_nodes={t.num_nodes}" if t.num_nodes > 1 else "trainer.slurm_launch=true"
    missing = [c for c in ("sbatch", "srun", "squeue") if shutil.which(c) is None]
    need(not missing,
         f"{what} runs each fine-tuning as a SLURM job (one task per device on every node), but SLURM is not "
         f"available here (no {'/'.join(missing)} on PATH); run star on a SLURM cluster (a login node, or a small "
         "driver job), or train on this node: trainer.num_nodes=1 trainer.slurm_launch=false with "
         "trainer.devices=N")
    devices = t.devices
    need(isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1,
         f"{what} needs trainer.devices as a count of devices (tasks) per node, got {devices}")
    need(t.strategy in ("ddp", "fsdp") or (t.num_nodes == 1 and devices == 1),
         f"{what} with {t.num_nodes * devices} processes needs trainer.strategy=ddp or fsdp "
         f"(trainer=ddp, trainer=fsdp, trainer=cpu_ddp), got '{t.strategy}'")
    need(not t.eval_every_n_steps,
         f"trainer.eval_every_n_steps is not supported with {what} (the dev callback runs in the loop's "
         "process); set trainer.eval_every_n_steps=null")
    s = t.slurm
    need(s.cpus_per_task >= 1, f"trainer.slurm.cpus_per_task must be >= 1, got {s.cpus_per_task}")
    need(s.timeout_min >= 1, f"trainer.slurm.timeout_min must be >= 1, got {s.timeout_min}")
    need(s.poll_s > 0, f"trainer.slurm.poll_s must be > 0, got {s.poll_s}")


def validate_generator_split(cfg: Any, need) -> None:
    """Checks of generator.devices / generator.shards (splitting a pass, star/sharding.py)."""
    import shutil

    g = cfg.generator
    devices = g.devices
    need(devices is None or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)
         or (OmegaConf.is_list(devices) and len(devices) > 0 and all(isinstance(d, str) and d for d in devices)),
         f"generator.devices must be null, a count >= 1 or a list of devices like [cuda:0,cuda:1], got {devices}")
    need(g.shards >= 0, f"generator.shards must be >= 0 (0: no SLURM job array), got {g.shards}")
    need(devices is None or g.shards == 0,
         "generator.devices and generator.shards both split a pass: set one (devices: processes on this node; "
         "shards: a SLURM job array)")
    if devices is not None:
        from star.sharding import check_devices, resolve_devices

        problem = check_devices(resolve_devices(devices, cfg.model.device))
        need(problem is None, str(problem))
    if g.shards > 0:
        need(shutil.which("sbatch") is not None and shutil.which("squeue") is not None,
             f"generator.shards={g.shards} splits generation over a SLURM job array, but SLURM is not available "
             "here (no sbatch/squeue on PATH); set generator.shards=0, or generator.devices=N for worker "
             "processes on this machine")
        s = g.slurm
        need(s.cpus_per_task >= 1, f"generator.slurm.cpus_per_task must be >= 1, got {s.cpus_per_task}")
        need(s.timeout_min >= 1, f"generator.slurm.timeout_min must be >= 1, got {s.timeout_min}")
        need(s.array_parallelism >= 1, f"generator.slurm.array_parallelism must be >= 1, got {s.array_parallelism}")
        need(s.takeover_after_s >= 0, f"generator.slurm.takeover_after_s must be >= 0, got {s.takeover_after_s}")
        need(s.poll_s > 0, f"generator.slurm.poll_s must be > 0, got {s.poll_s}")


def validate_task_data(cfg: Any) -> None:
    """Build the task and read both splits and the prompt: bad data fails before any model loads.

    Tasks raise ValueError for problems in their config or data (too few problems for the
    requested size, a malformed row, an empty prompt file); here that becomes a ConfigError.
    """
    from star.tasks import build_task

    try:
        task = build_task(cfg.task, seed=cfg.seed)
        train = task.load("train")
        task.load("dev")
        task.fewshot_prompt(direct=cfg.method.direct)
    except (ValueError, OSError) as e:
        raise ConfigError(str(e)) from None
    if cfg.method.data == "gold" and not cfg.method.direct and train and task.gold_rationale(train[0]) is None:
        raise ConfigError(f"method.data=gold with rationales needs gold rationales, and task {cfg.task.name} has "
                          "none; set method.direct=true (method=direct_finetune) to train on the answers only")
