"""finetune(): build the Trainer from config and fit a model on (prompt, completion) rows in place.

Strategies (`trainer.strategy`):

  auto   one device (trainer=cpu, trainer=gpu).
  ddp    data parallel over `trainer.devices` processes (trainer=ddp on GPUs, trainer=cpu_ddp on
         CPU with gloo).
  fsdp   fully sharded data parallel (trainer=fsdp): every decoder block (GPTJBlock, or the
         model's own `_no_split_modules` class) is its own FSDP unit, optionally with activation
         checkpointing; mixed precision comes from `trainer.precision` (bf16-mixed).

Why spawn: the STaR loop calls fit once per iteration, in the middle of a run that generates and
writes files. Lightning's default DDP/FSDP launcher re-runs the whole command line in N-1 new
processes (which would re-run generation and write the run directory N times) and can only do
that once per process. So both strategies here use a spawn launcher: each fit starts fresh
worker processes that run only `trainer.fit`, rank 0 gathers the full state dict, and the weights
come back into the caller's model object; generation, eval and every file stay in the one main
process. The cost: the module (model included) is pickled to each worker once per fit.

Under SLURM (`trainer.num_nodes` > 1 or `trainer.slurm_launch`, star/training/slurm.py) SLURM starts
the processes instead: every task of one job calls finetune(..., spawn=False), the plain DDP/FSDP
strategy takes its rank from SLURMEnvironment, and after the fit every rank joins the same gather
the spawn launcher does (the full state dict, the token count), so rank 0 can save M(n).

LoRA (`model.lora.enabled`): the model is wrapped with peft adapters for the fit, then the
adapters are merged into the weights and removed, so the caller's model is again a plain
transformers model with the same class and parameter names (M(n) is a plain checkpoint).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher, _WorkerOutput
from torch.utils.data import DataLoader, RandomSampler

from star.training.data import PackCollator, PadCollator, SFTDataset, tokenize_rows
from star.training.module import CausalLMModule

# Lightning announces its setup at INFO on every fit (accelerators, AMP, tips), twice over with
# Hydra's console handler: once per iteration that is noise; its warnings still show.
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# Under SLURM, submitit starts one process per task itself; Lightning's hint to prepend `srun` does not apply.
warnings.filterwarnings("ignore", message="The `srun` command is available on your system")

STRATEGIES = ("auto", "ddp", "fsdp")


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


# ----------------------------------------------------------------------------- spawn launchers


class _SpawnLauncher(_MultiProcessingLauncher):
    """Lightning's spawn launcher, plus: the module's own counters (losses, tokens, steps) come back
    to the main process, and the weights are gathered by the strategy (a full state dict under FSDP,
    not rank 0's shard), then loaded strictly: a key that does not match fails loudly."""

    def _collect_rank_zero_results(self, trainer, results):
        # Every rank must take part in gathering a sharded state dict.
        state_dict = trainer.strategy.lightning_module_state_dict()
        module = trainer.lightning_module
        n_tokens = int(trainer.strategy.reduce(torch.tensor(float(module.n_tokens)), reduce_op="sum"))
        if self._strategy.global_rank != 0:
            return None
        weights_path = os.path.join(tempfile.mkdtemp(), "weights.pt")
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, weights_path)
        extra = self.get_extra_results(trainer)
        extra["star"] = {"losses": list(module.losses), "n_tokens": n_tokens, "global_step": trainer.global_step}
        return _WorkerOutput(None, weights_path, trainer.state, results, extra)

    def _recover_results_in_main_process(self, worker_output, trainer) -> None:
        module = trainer.lightning_module
        state_dict = torch.load(worker_output.weights_path, map_location="cpu", weights_only=True)
        os.unlink(worker_output.weights_path)
        os.rmdir(os.path.dirname(worker_output.weights_path))
        module.load_state_dict(state_dict, strict=True)
        trainer.state = worker_output.trainer_state
        star = worker_output.extra.pop("star")
        self.update_main_process_results(trainer, worker_output.extra)
        module.losses = star["losses"]
        module.n_tokens = star["n_tokens"]
        module.spawned_global_step = star["global_step"]


class SpawnDDPStrategy(DDPStrategy):
    """DDP whose workers run only the fit (see the module docstring)."""

    def _configure_launcher(self) -> None:
        self._launcher = _SpawnLauncher(self, start_method="spawn")


class SpawnFSDPStrategy(FSDPStrategy):
    """FSDP whose workers run only the fit; rank 0 gathers the full state dict for the caller."""

    def _configure_launcher(self) -> None:
        self._launcher = _SpawnLauncher(self, start_method="spawn")


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


def build_strategy(trainer_cfg, model=None, spawn: bool = True):
    """The Lightning strategy for trainer.strategy (a string for `auto`, else a strategy object);
    spawn=False: Lightning's own DDP/FSDP, for processes that SLURM started (one per rank)."""
    name = trainer_cfg.strategy
    if name == "auto":
        return "auto"
    backend = trainer_cfg.process_group_backend
    if name == "ddp":
        return (SpawnDDPStrategy if spawn else DDPStrategy)(process_group_backend=backend)
    if name == "fsdp":
        blocks = block_classes(model) if model is not None else set()
        return (SpawnFSDPStrategy if spawn else FSDPStrategy)(
            process_group_backend=backend,
            sharding_strategy=trainer_cfg.sharding_strategy,
            auto_wrap_policy=blocks or None,
            activation_checkpointing_policy=blocks if (blocks and trainer_cfg.activation_checkpointing) else None,
            state_dict_type="full",
            cpu_offload=trainer_cfg.cpu_offload,
        )
    raise ValueError(f"trainer.strategy must be one of {', '.join(STRATEGIES)}, got '{name}'")


def build_trainer(trainer_cfg, steps: int, callbacks=(), progress: bool = True, model=None,
                  spawn: bool = True) -> L.Trainer:
    # Under SLURM, submitit (hydra-submitit-launcher) owns preemption and time-outs: it requeues the
    # job and the loop resumes from its stage markers. Lightning's auto-requeue would be a second
    # owner of the same signals: keep it off.
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    return L.Trainer(
        max_steps=steps,
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.num_nodes,
        strategy=build_strategy(trainer_cfg, model, spawn),
        precision=trainer_cfg.precision,
        gradient_clip_val=trainer_cfg.gradient_clip_val,
        logger=False,
        enable_checkpointing=False,  # the loop saves M(n) itself, atomically
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=list(callbacks),
        plugins=plugins,
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
             prefix: str = "", callbacks=(), progress: bool = True, lora: Any = None, spawn: bool = True) -> FitStats:
    """Fine-tune `model` in place for `steps` optimizer steps over `rows` (reshuffled each pass).

    spawn=False: this process is one rank of a job that SLURM started (star/training/slurm.py); every
    rank must call it. Under FSDP rank 0 gets the weights in FitStats.full_state_dict, not in `model`.

    `lora` (model.lora): when enabled, only adapters train and are merged into `model` afterwards.
    """
    examples = tokenize_rows(rows, tokenizer, prefix, trainer_cfg.max_seq_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if trainer_cfg.strategy == "auto":
        # The sampler's own generator fixes the data order, whatever else touched global RNG.
        sampler = RandomSampler(SFTDataset(examples), generator=torch.Generator().manual_seed(seed))
    else:
        # Lightning swaps in a DistributedSampler seeded by seed_everything (a torch.Generator
        # cannot be pickled to spawned workers).
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
    trainer = build_trainer(trainer_cfg, steps, callbacks, progress, model=model, spawn=spawn)
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
    if not spawn and trainer_cfg.strategy != "auto":
        # What _SpawnLauncher._collect_rank_zero_results does in its workers, on every rank.
        total = torch.tensor(float(module.n_tokens), device=trainer.strategy.root_device)
        module.n_tokens = int(trainer.strategy.reduce(total, reduce_op="sum"))
        if trainer_cfg.strategy == "fsdp":  # every rank takes part in gathering the full state dict
            state_dict = trainer.strategy.lightning_module_state_dict()
            if trainer.global_rank == 0:
                prefix_len = len("model.")  # CausalLMModule holds the model as .model
                full_state_dict = {k[prefix_len:]: v.detach().cpu() for k, v in state_dict.items()}
    if use_lora:
        merged = merge_lora(trained)
        assert merged is model  # peft replaced layers inside `model`; unloading puts plain ones back
    model.to(device)
    model.eval()
    tail = module.losses[-max(1, len(module.losses) // 4):]
    steps_done = getattr(module, "spawned_global_step", None) or trainer.global_step
    setup = {"strategy": trainer_cfg.strategy, "accelerator": trainer_cfg.accelerator,
             "world_size": trainer.world_size, "num_nodes": trainer_cfg.num_nodes,
             "precision": trainer_cfg.precision, "batch_size_per_device": trainer_cfg.batch_size,
             "packing": bool(trainer_cfg.packing),
             "activation_checkpointing": bool(trainer_cfg.activation_checkpointing),
             "lora": ({"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout,
                       "target_modules": list(lora.target_modules)} if use_lora else None)}
    return FitStats(steps=steps_done, loss=sum(tail) / len(tail) if tail else float("nan"),
                    n_tokens=module.n_tokens, seconds=seconds, setup=setup, full_state_dict=full_state_dict)
