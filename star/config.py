"""Typed config schemas, registered in Hydra's ConfigStore, and the pure checks of a composed config.

conf/config.yaml lists `star_schema` (StarConfig) first in its defaults, so every group file is
merged onto a dataclass: an unknown key (`task.digitz=3`) or a wrong type (`n_iterations=abc`)
fails when the config is composed, not an hour into a job.

Options own their keys. The task, model and generator groups have one schema per option, declared
next to the option's code (star/tasks/<task>.py, star/models.py, star/generation/) and registered
here as `schema/<group>/<name>`; each option's YAML starts from its schema
(`defaults: [/schema/task/arithmetic@_here_, _self_]`). So a key the chosen option does not read
(`model.name_or_path` without `model=hf`) fails at compose time, and `describe_config_error` turns
that failure into one line naming the option that reads the key. The other groups' options are
presets of one schema each (trainer=gpu and trainer=cpu set the same keys); a key of a feature that
is switched off stays allowed, so sweeps can cross it, and `inactive_settings` names it.

Everything here is pure: no file, model, device or PATH is looked at (that is star/preflight.py).

    register_configs()                 # before composing (the CLI and tests do this)
    check_option_keys(cfg)             # keys added with "+" that the chosen option does not read
    validate(cfg)                      # ranges and choices the types cannot express
    validate_launcher(launcher_cfg)    # a sweep's hydra/launcher=slurm settings
    inactive_settings(cfg)             # ["rationalization.p_rationalization=0.5 (rationalization.enabled=false)"]
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from star.generation import GeneratorConfig, generator_config_classes, loads_from_directory
from star.models import DTYPES, MODELS, LoraConfig, ModelConfig, model_config_classes, models_with_directory
from star.slurm import SlurmJobConfig
from star.tasks import TASKS, task_config_classes
from star.tasks.base import TaskConfig

# Where a method's training examples come from (method.data).
METHOD_DATA = ("generated", "gold")

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
    # Keep only completions with at least this many non-empty lines of reasoning before their answer
    # line (CQA's one-paragraph rationales: sentences), direct and rationalized alike; 0 keeps a bare
    # "The answer is 67." too.
    min_rationale_lines: int = 0
    # With sampling.num_samples = k > 1: keep up to this many distinct correct completions of a question
    # (distinct after whitespace is normalized), in sample order; 1 keeps one example per question.
    max_kept_per_question: int = 1
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
    # Show the hinted exemplars to fine-tuned models too; false: a model fine-tuned without the few-shot
    # prompt is asked as it was trained (no prefix), the hint in the question only (a shorter, cheaper pass).
    hinted_prompt_for_finetuned: bool = True
    # Debug only: "rationalizations" are the task's gold rationales instead of model output,
    # so a random-weight model (model=tiny) still has something to fine-tune on.
    gold_oracle: bool = False


@dataclass
class SamplingConfig:
    # 0 means greedy; any positive value samples (dev evaluation is always greedy).
    temperature: float = 0.0
    top_p: float = 1.0
    # Completions per training question in each pass (generate, rationalize), each with its own seed;
    # k > 1 needs temperature > 0 (greedy would write k copies). 1: one completion, the paper's STaR.
    num_samples: int = 1


SCHEDULE_MODES = ("exponential", "linear", "epoch")
# The keys each schedule mode reads (the others have no effect).
SCHEDULE_KEYS = {"exponential": ("base_steps", "growth"), "linear": ("base_steps", "increment"),
                 "epoch": ("base_epochs", "epoch_growth")}

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


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
# Lightning's precision names (and their short aliases).
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "32", "16", "bf16", "64")
STRATEGIES = ("auto", "ddp", "fsdp")  # star/training/fit.py builds them
SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")
OPTIMIZERS = ("adam", "adamw")

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
    batch_size: int = 8
    max_seq_len: int = 1024
    # Pack each batch's examples end to end into rows of at most max_seq_len tokens (no padding
    # work; per-example positions and a block-diagonal mask, so no cross-example attention).
    packing: bool = True
    optimizer: str = "adamw"
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 100
    gradient_clip_val: float = 1.0
    # Evaluate on `callback_dev_size` dev questions every N training steps (null: never).
    eval_every_n_steps: Optional[int] = None
    callback_dev_size: int = 16


LOGGER_MODES = ("offline", "online", "disabled")

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


CHECKPOINT_KEEP = ("last_and_best", "all")

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
    # The task, model and generator options bring their own schemas (subclasses of these; module docstring).
    task: TaskConfig = MISSING
    model: ModelConfig = MISSING
    method: MethodConfig = field(default_factory=MethodConfig)
    rationalization: RationalizationConfig = field(default_factory=RationalizationConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    generator: GeneratorConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def option_schemas() -> dict[str, dict[str, type]]:
    """group -> option name -> schema, for the groups whose options own their keys."""
    return {"task": task_config_classes(), "model": model_config_classes(), "generator": generator_config_classes()}


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="star_schema", node=StarConfig)
    for group, schemas in option_schemas().items():
        for name, schema in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=schema)


class ConfigError(ValueError):
    """A user error in the config: the message names the problem and the fix."""




# ----------------------------------------------------------------------------- keys and their owners

def _fields(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def unknown_key_message(full_key: str, schema: type | None) -> str:
    """One line for a key the chosen option does not read: the option(s) that do read it, or its keys."""
    group, _, key = full_key.partition(".")
    options = option_schemas().get(group, {})
    if options and key and "." not in key:
        chosen = "/".join(name for name, s in options.items() if s is schema) or "?"
        owners = [name for name, s in options.items() if key in _fields(s)]
        if owners:
            also = f" (also {', '.join(f'{group}={o}' for o in owners[1:])})" if len(owners) > 1 else ""
            return (f"{full_key} is not read by {group}={chosen}; {group}={owners[0]} reads it{also}: "
                    f"add {group}={owners[0]}, or drop {full_key}")
        where = f"{group}={chosen}"
    else:
        where = full_key.rpartition(".")[0] or "the config"
    keys = ", ".join(_fields(schema)) if schema is not None and dataclasses.is_dataclass(schema) else "?"
    return f"{full_key} is not a key of {where} (its keys: {keys}); check the spelling"


def _omegaconf_error(exc: BaseException) -> OmegaConfBaseException | None:
    """The OmegaConf error behind a Hydra composition error (Hydra chains it as cause or context)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            return e
        todo += [e.__cause__, e.__context__]
    return None


def describe_config_error(exc: BaseException) -> str | None:
    """One line for a composition error about a key (unknown to the chosen option, or of the wrong type);
    None for any other error (the caller shows Hydra's own message)."""
    e = _omegaconf_error(exc)
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        return unknown_key_message(e.full_key, e.object_type)
    if isinstance(e, ValidationError):
        return f"{e.full_key}: {str(e.msg).splitlines()[0].rstrip('.')}{_type_hint(e.full_key, e.object_type)}"
    return None


def _type_hint(full_key: str, schema: Any) -> str:
    """What a key of the wrong type takes: its field's type and schema default ("; seed takes int, e.g. seed=0")."""
    name = full_key.rpartition(".")[2]
    field_ = next((f for f in dataclasses.fields(schema) if f.name == name), None) \
        if dataclasses.is_dataclass(schema) else None
    if field_ is None:
        return ""
    kind = field_.type.__name__ if isinstance(field_.type, type) else str(field_.type).replace("typing.", "")
    kind = f"{kind[len('Optional['):-1]} or null" if kind.startswith("Optional[") else kind
    default = field_.default_factory() if field_.default_factory is not dataclasses.MISSING else field_.default
    example = f", e.g. {full_key}={_override_text(default)}" if default not in (None, dataclasses.MISSING, MISSING) else ""
    return f"; {full_key} takes {kind}{example}"


def _override_text(value: Any) -> str:
    """A value as a command-line override writes it (true, [1,2], ...)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_text(v) for v in value) + "]"
    return str(value)


def check_option_keys(cfg: Any) -> None:
    """Keys added with "+" (Hydra lets them into typed nodes) that the node's schema does not have."""
    for full_key, schema in _extra_keys(cfg, ""):
        raise ConfigError(unknown_key_message(full_key, schema))


def _extra_keys(node: Any, path: str):
    schema = OmegaConf.get_type(node)
    names = set(_fields(schema)) if dataclasses.is_dataclass(schema) else None
    for key in node:
        full_key = f"{path}{key}"
        if names is not None and key not in names:
            yield full_key, schema
        elif not OmegaConf.is_missing(node, key) and OmegaConf.is_dict(child := node[key]):
            yield from _extra_keys(child, f"{full_key}.")


# ----------------------------------------------------------------------------- settings without effect

def inactive_settings(cfg: Any) -> list[str]:
    """Settings changed from their schema default that the chosen options never read, each with the
    setting that switches it off: allowed (a sweep may cross them), but worth one printed line."""
    schedule_keys = dict.fromkeys(key for keys in SCHEDULE_KEYS.values() for key in keys)
    schedule_unread = tuple(k for k in schedule_keys if k not in SCHEDULE_KEYS.get(cfg.schedule.mode, ()))
    slurm_fit = cfg.trainer.num_nodes > 1 or cfg.trainer.slurm_launch
    rules = [
        (not cfg.rationalization.enabled, "rationalization", RationalizationConfig,
         ("p_rationalization", "hinted_prompt", "hinted_prompt_for_finetuned", "gold_oracle"),
         "rationalization.enabled=false"),
        (cfg.sampling.temperature == 0, "sampling", SamplingConfig, ("top_p",), "sampling.temperature=0, greedy"),
        (True, "schedule", ScheduleConfig, schedule_unread, f"schedule.mode={cfg.schedule.mode}"),
        (not cfg.model.lora.enabled, "model.lora", LoraConfig, ("r", "alpha", "dropout", "target_modules"),
         "model.lora.enabled=false"),
        (cfg.trainer.strategy != "fsdp", "trainer", TrainerConfig, ("sharding_strategy", "cpu_offload"),
         f"trainer.strategy={cfg.trainer.strategy}"),
        (not slurm_fit, "trainer", TrainerConfig, ("slurm",), "trainer.num_nodes=1, trainer.slurm_launch=false"),
        (cfg.generator.shards == 0, "generator", GeneratorConfig, ("slurm",), "generator.shards=0"),
        (cfg.method.data == "gold", "method", MethodConfig, ("min_rationale_lines",), "method.data=gold"),
        (cfg.sampling.num_samples == 1 or cfg.method.data == "gold", "method", MethodConfig,
         ("max_kept_per_question",), "one completion per question: sampling.num_samples=1 or method.data=gold"),
    ]
    out = []
    for off, path, schema, keys, why in rules:
        if not off:
            continue
        node, default = OmegaConf.select(cfg, path), OmegaConf.structured(schema)
        for key in keys:
            value, usual = node[key], default[key]
            if OmegaConf.is_config(value):
                value, usual = OmegaConf.to_container(value), OmegaConf.to_container(usual)
            if value != usual:
                shown = str(value).lower() if isinstance(value, bool) else value
                out.append(f"{path}.{key}={shown} ({why})")
    return out


# ----------------------------------------------------------------------------- range checks

def validate(cfg: Any) -> None:
    """Range and choice checks the dataclass types cannot express. Pure. Raises ConfigError."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(cfg.task.name in TASKS, f"unknown task '{cfg.task.name}'; choose one of: {', '.join(sorted(TASKS))} (task=NAME)")
    need(cfg.n_iterations >= 0, f"n_iterations must be >= 0 (0 runs only the few-shot baseline), got {cfg.n_iterations}")
    for problem in OmegaConf.to_object(cfg.task).problems():
        need(False, problem)
    need(cfg.sampling.temperature >= 0, f"sampling.temperature must be >= 0 (0 = greedy), got {cfg.sampling.temperature}")
    need(0 < cfg.sampling.top_p <= 1, f"sampling.top_p must be in (0, 1], got {cfg.sampling.top_p}")
    k = cfg.sampling.num_samples
    need(k >= 1, f"sampling.num_samples must be >= 1 (completions per question and pass), got {k}")
    need(k == 1 or cfg.sampling.temperature > 0,
         f"sampling.num_samples={k} needs sampling.temperature > 0: greedy decoding writes the same completion "
         f"{k} times; add sampling=temperature (0.7) or sampling.temperature=0.7")
    need(cfg.method.max_kept_per_question >= 1,
         f"method.max_kept_per_question must be >= 1 (distinct correct completions kept per question), "
         f"got {cfg.method.max_kept_per_question}")
    p = cfg.rationalization.p_rationalization
    need(0 <= p <= 1, f"rationalization.p_rationalization must be in [0, 1], got {p}")
    need(cfg.schedule.mode in SCHEDULE_MODES, f"schedule.mode must be one of {', '.join(SCHEDULE_MODES)}, got '{cfg.schedule.mode}'")
    need(cfg.schedule.base_steps > 0, f"schedule.base_steps must be > 0, got {cfg.schedule.base_steps}")
    need(cfg.schedule.base_epochs > 0, f"schedule.base_epochs must be > 0, got {cfg.schedule.base_epochs}")
    need(cfg.trainer.lr > 0, f"trainer.lr must be > 0, got {cfg.trainer.lr}")
    need(cfg.trainer.batch_size > 0, f"trainer.batch_size must be > 0, got {cfg.trainer.batch_size}")
    need(cfg.trainer.warmup_steps >= 0, f"trainer.warmup_steps must be >= 0, got {cfg.trainer.warmup_steps}")
    need(cfg.trainer.optimizer in OPTIMIZERS, f"trainer.optimizer must be one of {', '.join(OPTIMIZERS)}, got '{cfg.trainer.optimizer}'")
    need(cfg.method.min_rationale_lines >= 0,
         f"method.min_rationale_lines must be >= 0 (0 keeps every correct completion), got {cfg.method.min_rationale_lines}")
    need(cfg.method.data in METHOD_DATA, f"method.data must be one of {', '.join(METHOD_DATA)}, got '{cfg.method.data}'")
    need(cfg.generator.batch_size > 0, f"generator.batch_size must be > 0, got {cfg.generator.batch_size}")
    validate_generator_split(cfg, need)
    validate_engine(cfg, need)
    need(cfg.logger.mode in LOGGER_MODES, f"logger.mode must be one of {', '.join(LOGGER_MODES)}, got '{cfg.logger.mode}'")
    need(cfg.plateau_patience is None or cfg.plateau_patience >= 1,
         f"plateau_patience must be >= 1 or null, got {cfg.plateau_patience}")
    validate_scale(cfg, need)
    need(cfg.model.name in MODELS,
         f"unknown model '{cfg.model.name}'; choose one of: {', '.join(sorted(MODELS))} (model=NAME)")
    need(cfg.model.dtype in DTYPES, f"model.dtype must be one of {', '.join(DTYPES)}, got '{cfg.model.dtype}'")
    need(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(cfg.model.device)) is not None,
         f"model.device must be auto, cpu, cuda, cuda:N or mps, got '{cfg.model.device}'")


def validate_scale(cfg: Any, need) -> None:
    """Checks of the multi-device, LoRA and checkpoint keys."""
    t, lora = cfg.trainer, cfg.model.lora
    need(t.accelerator in ACCELERATORS,
         f"trainer.accelerator must be one of {', '.join(ACCELERATORS)} (trainer=cpu, trainer=gpu), got '{t.accelerator}'")
    need(_is_devices(OmegaConf.to_container(t.devices) if OmegaConf.is_list(t.devices) else t.devices),
         f"trainer.devices must be a count (1, 2; -1: every device), a list of device ids like [0,1], or auto, "
         f"got {t.devices}")
    need(str(t.precision) in PRECISIONS,
         f"trainer.precision must be one of {', '.join(PRECISIONS)}, got '{t.precision}'")
    need(t.strategy in STRATEGIES, f"trainer.strategy must be one of {', '.join(STRATEGIES)} "
         f"(trainer=ddp, trainer=fsdp, trainer=cpu_ddp), got '{t.strategy}'")
    validate_slurm_training(cfg, need)
    need(t.sharding_strategy in SHARDING_STRATEGIES,
         f"trainer.sharding_strategy must be one of {', '.join(SHARDING_STRATEGIES)}, got '{t.sharding_strategy}'")
    need(t.strategy != "fsdp" or not t.eval_every_n_steps,
         "trainer.eval_every_n_steps is not supported with trainer.strategy=fsdp (each rank holds a shard of the "
         "weights, and gathering the whole model to generate every few steps would cost what FSDP saves); set "
         "trainer.eval_every_n_steps=null, or use trainer=ddp")
    need(not (lora.enabled and t.strategy == "fsdp"),
         "model.lora.enabled=true is not supported with trainer.strategy=fsdp; use LoRA on one GPU (trainer=gpu) "
         "or DDP (trainer=ddp), or full fine-tuning with FSDP (model.lora.enabled=false)")
    need(lora.r > 0, f"model.lora.r must be > 0, got {lora.r}")
    need(lora.alpha > 0, f"model.lora.alpha must be > 0, got {lora.alpha}")
    need(0 <= lora.dropout < 1, f"model.lora.dropout must be in [0, 1), got {lora.dropout}")
    need(len(lora.target_modules) > 0, "model.lora.target_modules must name at least one module, e.g. [q_proj,v_proj]")
    need(cfg.checkpoint.keep in CHECKPOINT_KEEP,
         f"checkpoint.keep must be one of {', '.join(CHECKPOINT_KEEP)}, got '{cfg.checkpoint.keep}'")


def _is_devices(devices: Any) -> bool:
    """What Lightning takes as devices: a count (-1: all), a list of ids, a string of ids ("0,1"), or auto."""
    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if is_int(devices):
        return devices >= 1 or devices == -1
    if isinstance(devices, list):
        return len(devices) > 0 and all(is_int(d) and d >= 0 for d in devices)
    return isinstance(devices, str) and re.fullmatch(r"auto|-1|\d+(\s*,\s*\d+)*,?", devices.strip()) is not None


def slurm_training_label(trainer_cfg: Any) -> str | None:
    """How the config asks for each fit as one SLURM job ("trainer.num_nodes=2"), or None when it does not."""
    if trainer_cfg.num_nodes > 1:
        return f"trainer.num_nodes={trainer_cfg.num_nodes}"
    return "trainer.slurm_launch=true" if trainer_cfg.slurm_launch else None


def validate_slurm_training(cfg: Any, need) -> None:
    """Checks of trainer.num_nodes / trainer.slurm_launch (each fit as one SLURM job, star/training/slurm.py)."""
    t = cfg.trainer
    need(t.num_nodes >= 1, f"trainer.num_nodes must be >= 1, got {t.num_nodes}")
    what = slurm_training_label(t)
    if what is None:
        return
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


def is_slurm_launcher(launcher_cfg: Any) -> bool:
    """Whether a sweep's hydra.launcher submits its points to SLURM (hydra/launcher=slurm, submitit_slurm)."""
    return str(launcher_cfg.get("_target_", "")).endswith(".SlurmLauncher")


def validate_launcher(launcher_cfg: Any) -> None:
    """hydra/launcher=slurm settings sbatch would refuse, checked before a sweep submits anything. Pure."""
    if not is_slurm_launcher(launcher_cfg):
        return
    for key, low, what in (("timeout_min", 1, "minutes of wall time per sweep point"),
                           ("array_parallelism", 1, "sweep points running at once"),
                           ("nodes", 1, "nodes per sweep point"), ("tasks_per_node", 1, "tasks per node")):
        if launcher_cfg[key] < low:
            raise ConfigError(f"hydra.launcher.{key} must be >= {low} ({what}), got {launcher_cfg[key]}")
    for key, low in (("cpus_per_task", 1), ("gpus_per_node", 0), ("mem_gb", 1)):
        if launcher_cfg.get(key) is not None and launcher_cfg[key] < low:
            raise ConfigError(f"hydra.launcher.{key} must be >= {low} or null, got {launcher_cfg[key]}")


def validate_engine(cfg: Any, need) -> None:
    """Checks of a generation backend that loads models itself (generator=vllm)."""
    g = cfg.generator
    if g.name not in generator_config_classes() or not loads_from_directory(g):
        return
    need(cfg.model.name in models_with_directory(),
         f"generator={g.name} loads each model from its directory, but model={cfg.model.name} is built in memory; "
         f"use a saved model (model={' or model='.join(models_with_directory())}), or generator=hf")
    need(g.engine_lifetime in ("model", "pass"),
         f"generator.engine_lifetime must be model (one engine per model) or pass (one engine per pass), got "
         f"'{g.engine_lifetime}'")
    need(g.gpu_memory_utilization is None or 0 < g.gpu_memory_utilization <= 1,
         f"generator.gpu_memory_utilization must be in (0, 1] or null, got {g.gpu_memory_utilization}")


def validate_generator_split(cfg: Any, need) -> None:
    """Checks of generator.devices / generator.shards (splitting a pass, star/sharding.py)."""
    g = cfg.generator
    devices = g.devices
    need(devices is None or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)
         or (OmegaConf.is_list(devices) and len(devices) > 0 and all(isinstance(d, str) and d for d in devices)),
         f"generator.devices must be null, a count >= 1 or a list of devices like [cuda:0,cuda:1], got {devices}")
    need(g.shards >= 0, f"generator.shards must be >= 0 (0: no SLURM job array), got {g.shards}")
    need(devices is None or g.shards == 0,
         "generator.devices and generator.shards both split a pass: set one (devices: processes on this node; "
         "shards: a SLURM job array)")
    if g.shards > 0:
        s = g.slurm
        need(s.cpus_per_task >= 1, f"generator.slurm.cpus_per_task must be >= 1, got {s.cpus_per_task}")
        need(s.timeout_min >= 1, f"generator.slurm.timeout_min must be >= 1, got {s.timeout_min}")
        need(s.array_parallelism >= 1, f"generator.slurm.array_parallelism must be >= 1, got {s.array_parallelism}")
        need(s.takeover_after_s >= 0, f"generator.slurm.takeover_after_s must be >= 0, got {s.takeover_after_s}")
        need(s.poll_s > 0, f"generator.slurm.poll_s must be > 0, got {s.poll_s}")
