"""finetune(): build the Trainer from config and fit a model on (prompt, completion) rows in place.

Strategies (`trainer.strategy`):

  auto   one device (trainer=cpu, trainer=gpu).
  ddp    data parallel over `trainer.devices` processes (trainer=ddp on GPUs, trainer=cpu_ddp on
         CPU with gloo).
  fsdp   fully sharded data parallel (trainer=fsdp): every decoder block (GPTJBlock, or the
         model's own `_no_split_modules` class) is its own FSDP unit, optionally with activation
         checkpointing; mixed precision comes from `trainer.precision` (bf16-mixed).

One rank's code, `fit_rank`: tokenize, fit with Lightning's own DDP/FSDP, then (ddp, fsdp) every rank
joins the sum of the token counts and, under FSDP, the gather of the full state dict for rank 0.
Two ways to start the ranks run that same code:

  spawn (the default for ddp/fsdp): the STaR loop calls fit once per iteration, in the middle of a
         run that generates and writes files. Lightning's default launcher re-runs the whole command
         line in N-1 new processes (which would re-run generation and write the run directory N
         times). So finetune() starts `trainer.devices` fresh processes itself (torch.multiprocessing,
         spawn) that run only the fit: each one is a rank, told so by MASTER_ADDR/MASTER_PORT/
         LOCAL_RANK/NODE_RANK and Lightning's LightningEnvironment (Lightning launches nothing
         itself). Rank 0 writes the weights (a full state dict on the CPU) and the stats to a temp
         file; they are loaded into the caller's model (strictly: a key that does not match fails
         loudly). Generation, eval and every file stay in the one main process. The cost: the model
         is pickled to each worker once per fit. A worker's error is raised here with its traceback.
  SLURM  (`trainer.num_nodes` > 1 or `trainer.slurm_launch`, star/training/slurm.py): SLURM starts
         the processes, every task of one job calls finetune(..., spawn=False) and takes its rank
         from SLURMEnvironment; rank 0 saves the model itself.

LoRA (`model.lora.enabled`): the model is wrapped with peft adapters for the fit, then the
adapters are merged into the weights and removed, so the caller's model is again a plain
transformers model with the same class and parameter names (M(n) is a plain checkpoint).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch.utils.data import DataLoader, RandomSampler

from star.config import STRATEGIES
from star.training.callbacks import TrainProgress
from star.training.data import PackCollator, PadCollator, SFTDataset, tokenize_rows
from star.training.module import CausalLMModule

# Lightning announces its setup at INFO on every fit (accelerators, AMP, tips), twice over with
# Hydra's console handler: once per iteration that is noise; its warnings still show.
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# Under SLURM, submitit starts one process per task itself; Lightning's hint to prepend `srun` does not apply.
warnings.filterwarnings("ignore", message="The `srun` command is available on your system")


@dataclass
class FitStats:
    steps: int
    loss: float            # mean loss over the last quarter of steps (the end of training)
    n_tokens: int
    seconds: float
    setup: dict = field(default_factory=dict)  # strategy, world size, precision, LoRA: what actually ran
    # spawn=False under FSDP, rank 0 only: the gathered full state dict (the model object is sharded).
    full_state_dict: dict | None = field(default=None, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0


def block_classes(model) -> set[type]:
    """The model's decoder-block classes (GPTJBlock for GPT-J, LlamaDecoderLayer for tiny): the
    units FSDP wraps and activation checkpointing recomputes. Read from transformers'
    `_no_split_modules`, which names them for every architecture."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        raise ValueError(f"cannot find the decoder-block class of {type(model).__name__} "
                         f"(its _no_split_modules: {sorted(names) or 'none'}); FSDP needs it to wrap the model")
    return found


def build_strategy(trainer_cfg, model=None):
    """The Lightning strategy for trainer.strategy: a string for `auto`, else Lightning's own DDP/FSDP
    object, for a process that is one rank (spawned by finetune() or started by SLURM)."""
    name = trainer_cfg.strategy
    if name == "auto":
        return "auto"
    backend = trainer_cfg.process_group_backend
    if name == "ddp":
        return DDPStrategy(process_group_backend=backend)
    if name == "fsdp":
        blocks = block_classes(model) if model is not None else set()
        return FSDPStrategy(
            process_group_backend=backend,
            sharding_strategy=trainer_cfg.sharding_strategy,
            auto_wrap_policy=blocks or None,
            activation_checkpointing_policy=blocks if (blocks and trainer_cfg.activation_checkpointing) else None,
            state_dict_type="full",
            cpu_offload=trainer_cfg.cpu_offload,
        )
    raise ValueError(f"trainer.strategy must be one of {', '.join(STRATEGIES)}, got '{name}'")


def own_environment():
    """The cluster environment of a process that is not a spawned rank: under SLURM, SLURMEnvironment
    without auto-requeue (submitit, through hydra-submitit-launcher or star/training/slurm.py, owns
    preemption and time-outs: it requeues the job and the loop resumes from its stage markers;
    Lightning's auto-requeue would be a second owner of the same signals); else Lightning's default."""
    return SLURMEnvironment(auto_requeue=False) if SLURMEnvironment.detect() else None


def build_trainer(trainer_cfg, steps: int, callbacks=(), progress: bool = True, model=None,
                  environment=None, desc: str = "train") -> L.Trainer:
    """The Trainer for one fit; `environment`: Lightning's cluster-environment plugin (None: its default).
    `progress`: show the fit's progress as `<desc>: step k/K` with loss and tok/s (TrainProgress),
    not with Lightning's own bar, which reads `Epoch 2/-2` for a run of max_steps."""
    if progress:
        callbacks = [*callbacks, TrainProgress(desc, steps)]
    return L.Trainer(
        max_steps=steps,
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.num_nodes,
        strategy=build_strategy(trainer_cfg, model),
        precision=trainer_cfg.precision,
        gradient_clip_val=trainer_cfg.gradient_clip_val,
        logger=False,
        enable_checkpointing=False,  # the loop saves M(n) itself, atomically
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=list(callbacks),
        plugins=[environment] if environment is not None else None,
    )


# ----------------------------------------------------------------------------- LoRA


def add_lora(model, lora_cfg):
    """Wrap `model` in peft LoRA adapters (in place: its target Linear layers are replaced)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=list(lora_cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merge_lora(peft_model):
    """Fold the adapters into the base weights and remove them; returns the plain model (the same
    object that was wrapped), so save_pretrained writes an ordinary checkpoint."""
    return peft_model.merge_and_unload()


# ----------------------------------------------------------------------------- fit


def finetune(model, tokenizer, rows: list[dict], *, steps: int, trainer_cfg, seed: int,
             prefix: str = "", callbacks=(), progress: bool = True, lora: Any = None, spawn: bool = True,
             desc: str = "train") -> FitStats:
    """Fine-tune `model` in place for `steps` optimizer steps over `rows` (reshuffled each pass).

    ddp/fsdp with spawn=True: `trainer.devices` spawned processes fit; the weights come back into `model`.
    spawn=False: this process is one rank of a job that SLURM started (star/training/slurm.py); every
    rank must call it. Under FSDP rank 0 gets the weights in FitStats.full_state_dict, not in `model`.

    `lora` (model.lora): when enabled, only adapters train and are merged into `model` afterwards.
    `desc`: the progress label (`iter 1 train`); only rank 0 shows progress.
    """
    fit = dict(steps=steps, trainer_cfg=trainer_cfg, seed=seed, prefix=prefix, callbacks=callbacks,
               progress=progress, lora=lora, desc=desc)
    if spawn and trainer_cfg.strategy != "auto":
        return fit_spawned(model, tokenizer, rows, fit)
    return fit_rank(model, tokenizer, rows, environment=own_environment(), **fit)


def fit_rank(model, tokenizer, rows: list[dict], *, steps: int, trainer_cfg, seed: int, prefix: str, callbacks,
             progress: bool, lora: Any, environment, desc: str = "train") -> FitStats:
    """This process's part of the fit: all of it (auto), or one rank's (ddp, fsdp: every rank must call it).
    `environment`: Lightning's cluster-environment plugin that tells this process its rank (None: its default)."""
    examples = tokenize_rows(rows, tokenizer, prefix, trainer_cfg.max_seq_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if trainer_cfg.strategy == "auto":
        # The sampler's own generator fixes the data order, whatever else touched global RNG.
        sampler = RandomSampler(SFTDataset(examples), generator=torch.Generator().manual_seed(seed))
    else:
        # Lightning swaps in a DistributedSampler seeded by seed_everything.
        sampler = RandomSampler(SFTDataset(examples))
    # Packing (trainer.packing) lays out each batch's examples end to end instead of padding them:
    # the same examples and loss per step, less work (star/training/data.py).
    collate = PackCollator(pad_id, trainer_cfg.max_seq_len) if trainer_cfg.packing else PadCollator(pad_id)
    loader = DataLoader(SFTDataset(examples), batch_size=trainer_cfg.batch_size, sampler=sampler,
                        collate_fn=collate, num_workers=0)
    use_lora = bool(lora is not None and lora.enabled)
    trained = add_lora(model, lora) if use_lora else model
    module = CausalLMModule(trained, lr=trainer_cfg.lr, total_steps=steps, warmup_steps=trainer_cfg.warmup_steps,
                            weight_decay=trainer_cfg.weight_decay, optimizer=trainer_cfg.optimizer)
    trainer = build_trainer(trainer_cfg, steps, callbacks, progress, model=model, environment=environment, desc=desc)
    # FSDP checkpoints its own wrapped blocks; elsewhere transformers recomputes each block.
    recompute = trainer_cfg.activation_checkpointing and trainer_cfg.strategy != "fsdp"
    if recompute:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    L.seed_everything(seed, workers=True, verbose=False)
    trained.train()
    device = next(model.parameters()).device  # Lightning leaves the module on the CPU after fit
    start = time.perf_counter()
    try:
        trainer.fit(module, train_dataloaders=loader)
    finally:
        if recompute:
            model.activation_checkpointing_disable()
    seconds = time.perf_counter() - start
    full_state_dict = None
    if trainer_cfg.strategy != "auto":
        # Rank 0 reports the tokens of every rank.
        total = torch.tensor(float(module.n_tokens), device=trainer.strategy.root_device)
        module.n_tokens = int(trainer.strategy.reduce(total, reduce_op="sum"))
        if trainer_cfg.strategy == "fsdp":  # every rank takes part in gathering the full state dict
            state_dict = trainer.strategy.lightning_module_state_dict()
            if trainer.global_rank == 0:
                prefix_len = len("model.")  # CausalLMModule holds the model as .model
                full_state_dict = {k[prefix_len:]: v.detach().cpu() for k, v in state_dict.items()}
        leave_process_group()
    if use_lora:
        merged = merge_lora(trained)
        assert merged is model  # peft replaced layers inside `model`; unloading puts plain ones back
    model.to(device)
    model.eval()
    tail = module.losses[-max(1, len(module.losses) // 4):]
    setup = {"strategy": trainer_cfg.strategy, "accelerator": trainer_cfg.accelerator,
             "world_size": trainer.world_size, "num_nodes": trainer_cfg.num_nodes,
             "precision": trainer_cfg.precision, "batch_size_per_device": trainer_cfg.batch_size,
             "packing": bool(trainer_cfg.packing),
             "activation_checkpointing": bool(trainer_cfg.activation_checkpointing),
             "lora": ({"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout,
                       "target_modules": list(lora.target_modules)} if use_lora else None)}
    return FitStats(steps=trainer.global_step, loss=sum(tail) / len(tail) if tail else float("nan"),
                    n_tokens=module.n_tokens, seconds=seconds, setup=setup, full_state_dict=full_state_dict)


def leave_process_group() -> None:
    """Every rank leaves the process group together once nothing more is exchanged: a gloo rank whose
    peer exits while it still holds their connection can abort (SIGABRT) on its way out."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------- spawned ranks


def n_ranks(trainer_cfg) -> int:
    """How many processes Lightning runs for trainer.devices on this node (a count, a list of ids, -1...)."""
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
    from omegaconf import OmegaConf

    devices = trainer_cfg.devices
    devices = OmegaConf.to_container(devices) if OmegaConf.is_list(devices) else devices
    accelerator = CPUAccelerator if trainer_cfg.accelerator == "cpu" else CUDAAccelerator
    return len(accelerator.get_parallel_devices(accelerator.parse_devices(devices)))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now: the ranks' rendezvous (the parent picks it, every rank uses it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit_spawned(model, tokenizer, rows: list[dict], fit: dict) -> FitStats:
    """Spawn one process per rank, each running fit_rank; load rank 0's weights into `model` (strictly)
    and return its stats, with the seconds the whole fit took here (process start-up included)."""
    n = n_ranks(fit["trainer_cfg"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="star-fit-") as tmp:
        result_path = os.path.join(tmp, "rank0.pt")
        # join=True: a rank that fails stops the others and raises here with that rank's traceback.
        torch.multiprocessing.start_processes(
            _spawned_rank, args=(n, free_port(), result_path, global_state(), model, tokenizer, rows, fit), nprocs=n,
            join=True, start_method="spawn")  # a fresh interpreter: no forked CUDA or thread state
        result = torch.load(result_path, map_location="cpu", weights_only=True)
    model.load_state_dict(result["weights"], strict=True)
    model.eval()
    return FitStats(**{**result["stats"], "seconds": time.perf_counter() - start})


def global_state() -> dict:
    """The caller's global RNG states and torch's determinism switches, for the spawned ranks to take over:
    fit_rank initializes LoRA adapters from the global RNG (before seed_everything), so a spawned rank
    starts them as a fit in the caller's process would."""
    import random

    import numpy as np

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def restore_global_state(state: dict) -> None:
    """In a spawned rank: take over what global_state() captured in the caller."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    torch.use_deterministic_algorithms(state["deterministic"], warn_only=state["warn_only"])
    torch.backends.cudnn.benchmark = state["cudnn_benchmark"]


def _spawned_rank(local_rank: int, world_size: int, port: int, result_path: str, state: dict, model, tokenizer,
                  rows: list[dict], fit: dict) -> None:
    """One spawned process = one rank on this node; rank 0 writes the weights and stats to `result_path`."""
    restore_global_state(state)
    # LightningEnvironment reads the rank from these (and launches nothing, as LOCAL_RANK is set). Under a
    # SLURM driver Lightning would otherwise pick SLURMEnvironment and give every rank SLURM_PROCID's rank.
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "LOCAL_RANK": str(local_rank),
                       "NODE_RANK": "0", "WORLD_SIZE": str(world_size), "RANK": str(local_rank)})
    _unshare(model)
    stats = fit_rank(model, tokenizer, rows, environment=LightningEnvironment(), **fit)
    if local_rank != 0:
        return
    weights = stats.full_state_dict  # FSDP: gathered; DDP: every rank's model holds the weights
    if weights is None:
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    stats.full_state_dict = None  # asdict() would copy every tensor
    report = asdict(stats)
    del report["full_state_dict"]
    torch.save({"weights": weights, "stats": report}, result_path)


@torch.no_grad()
def _unshare(model) -> None:
    """torch.multiprocessing hands CPU tensors to spawned processes in shared memory: every rank would
    train the same storage. Give this rank its own copy of the weights."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.device.type == "cpu":
            tensor.data = tensor.data.clone()
