"""Fine-tuning: a LightningModule for causal-LM SFT (loss on completions only), its data, and
the generation callback. Knows nothing of STaR: it trains a model on (prompt, completion) pairs.

    from star.training import finetune
    stats = finetune(model, tokenizer, rows, steps=40, trainer_cfg=cfg.trainer, seed=0)
"""

from star.training.fit import FitStats, finetune

__all__ = ["FitStats", "finetune"]
