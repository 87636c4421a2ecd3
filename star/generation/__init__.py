"""Generation backends: name -> engine class. Engines know nothing of Lightning or tasks.

    from star.generation import build_generator
    gen = build_generator(cfg.generator, model, tokenizer)
"""

from __future__ import annotations

from star.generation.hf import HFGenerator

GENERATORS = {"hf": HFGenerator}


def build_generator(generator_cfg, model, tokenizer):
    if generator_cfg.name not in GENERATORS:
        raise ValueError(f"unknown generator '{generator_cfg.name}'; choose one of: {', '.join(GENERATORS)}")
    return GENERATORS[generator_cfg.name](
        model, tokenizer,
        batch_size=generator_cfg.batch_size,
        reuse_prefix=generator_cfg.reuse_prefix,
        progress=generator_cfg.progress,
    )
