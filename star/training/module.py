"""CausalLMModule: supervised fine-tuning of a transformers causal LM in Lightning.

Loss is the model's own shifted cross-entropy over tokens whose label is not -100
(the completion). Optimizer: Adam or AdamW, linear warmup then constant lr. The warmup
is capped at a quarter of the run's steps: the paper's code used 100 warmup steps with
40 training steps, so early iterations never reached the set learning rate.
"""

from __future__ import annotations

import lightning as L
import torch


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step."""


def effective_warmup(warmup_steps: int, total_steps: int) -> int:
    return min(warmup_steps, total_steps // 4)


class CausalLMModule(L.LightningModule):
    def __init__(self, model, lr: float, total_steps: int, warmup_steps: int = 0,
                 weight_decay: float = 0.0, optimizer: str = "adamw"):
        super().__init__()
        self.model = model
        self.lr = lr
        self.total_steps = total_steps
        self.warmup_steps = effective_warmup(warmup_steps, total_steps)
        self.weight_decay = weight_decay
        self.optimizer_name = optimizer
        # Running totals the caller reads after fit (loss per step, tokens seen).
        self.losses: list[float] = []
        self.n_tokens = 0

    def training_step(self, batch, batch_idx):
        batch = dict(batch)
        # PackCollator counts real tokens itself; a padded batch's mask does.
        n_tokens = batch.pop("n_tokens", None)
        n_tokens = int(n_tokens if n_tokens is not None else batch["attention_mask"].sum())
        # use_cache=False: training needs no KV cache, and with one transformers ignores packed
        # position_ids and lets packed examples attend to each other (tests/test_packing.py).
        out = self.model(**batch, use_cache=False)
        loss = out.loss
        if not torch.isfinite(loss.detach()):
            # Stop rather than train on garbage; the loop adds the iteration to the message.
            raise NonFiniteLossError(
                f"training loss is {float(loss.detach())} at step {self.global_step + 1}; lower trainer.lr "
                "(or use trainer.precision=32-true), then rerun the same command to resume")
        self.losses.append(float(loss.detach()))
        self.n_tokens += n_tokens
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self):
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.optimizer_name]
        opt = cls(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        warmup = self.warmup_steps

        def factor(step: int) -> float:
            return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
