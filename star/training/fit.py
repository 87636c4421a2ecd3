"""finetune(): build the Trainer from config and fit a model on (prompt, completion) rows in place."""

from __future__ import annotations

import time
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, RandomSampler

from star.training.data import PadCollator, SFTDataset, tokenize_rows
from star.training.module import CausalLMModule


@dataclass
class FitStats:
    steps: int
    loss: float            # mean loss over the last quarter of steps (the end of training)
    n_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0


def build_trainer(trainer_cfg, steps: int, callbacks=(), progress: bool = True) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        strategy=trainer_cfg.strategy,
        precision=trainer_cfg.precision,
        gradient_clip_val=trainer_cfg.gradient_clip_val,
        logger=False,
        enable_checkpointing=False,  # the loop saves M(n) itself, atomically
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )


def finetune(model, tokenizer, rows: list[dict], *, steps: int, trainer_cfg, seed: int,
             prefix: str = "", callbacks=(), progress: bool = True) -> FitStats:
    """Fine-tune `model` in place for `steps` optimizer steps over `rows` (reshuffled each pass)."""
    examples = tokenize_rows(rows, tokenizer, prefix, trainer_cfg.max_seq_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # The sampler's own generator fixes the data order, whatever else touched global RNG.
    sampler = RandomSampler(SFTDataset(examples), generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(SFTDataset(examples), batch_size=trainer_cfg.batch_size, sampler=sampler,
                        collate_fn=PadCollator(pad_id), num_workers=0)
    module = CausalLMModule(model, lr=trainer_cfg.lr, total_steps=steps, warmup_steps=trainer_cfg.warmup_steps,
                            weight_decay=trainer_cfg.weight_decay, optimizer=trainer_cfg.optimizer)
    trainer = build_trainer(trainer_cfg, steps, callbacks, progress)
    L.seed_everything(seed, workers=True, verbose=False)
    model.train()
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    model.eval()
    tail = module.losses[-max(1, len(module.losses) // 4):]
    return FitStats(steps=trainer.global_step, loss=sum(tail) / len(tail) if tail else float("nan"),
                    n_tokens=module.n_tokens, seconds=seconds)
