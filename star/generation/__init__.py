"""Generation backends: name -> (engine, config schema). Engines know nothing of Lightning or tasks.

    from star.generation import build_generator
    gen = build_generator(cfg.generator, model, tokenizer)

Each backend's keys are declared here, next to its registration (GeneratorConfig: what every backend
reads; HFGeneratorConfig adds the hf engine's own), and conf/generator/<name>.yaml starts from its
schema. Engines are imported when built, so importing this module (the config schemas do) is cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from star.slurm import ShardSlurmConfig


@dataclass
class GeneratorConfig:
    """The keys every generation backend reads."""

    name: str = MISSING
    batch_size: int = 16
    # Split each training-set pass (generate, rationalize) over worker processes on this node, one
    # per device: N (cuda:0..N-1, or N CPU processes without a GPU) or a list ([cuda:0,cuda:2]).
    # null: generate in the loop's process. Output is identical to one process (star/sharding.py).
    devices: Any = None
    # Or over a SLURM job array of this many shard tasks (0: off), with these resources.
    shards: int = 0
    slurm: ShardSlurmConfig = field(default_factory=ShardSlurmConfig)
    # Progress of generation passes and fits (star/progress.py): a bar on a terminal, a line every 10%
    # in a log (SLURM, a pipe); false: none.
    progress: bool = True


@dataclass
class HFGeneratorConfig(GeneratorConfig):
    """generator=hf: batched transformers generation (star/generation/hf.py)."""

    # Encode the shared few-shot prefix once per pass and reuse its KV cache.
    reuse_prefix: bool = True


# name -> ("module:Class" of the engine, its config schema)
GENERATORS: dict[str, tuple[str, type]] = {"hf": ("star.generation.hf:HFGenerator", HFGeneratorConfig)}


def generator_config_classes() -> dict[str, type]:
    """Backend name -> its config schema (registered in Hydra's ConfigStore by star/config.py)."""
    return {name: schema for name, (_, schema) in GENERATORS.items()}


def build_generator(generator_cfg, model, tokenizer):
    if generator_cfg.name not in GENERATORS:
        raise ValueError(f"unknown generator '{generator_cfg.name}'; choose one of: {', '.join(GENERATORS)}")
    module_name, class_name = GENERATORS[generator_cfg.name][0].split(":")
    engine = getattr(importlib.import_module(module_name), class_name)
    return engine(model, tokenizer, batch_size=generator_cfg.batch_size, reuse_prefix=generator_cfg.reuse_prefix,
                  progress=generator_cfg.progress)
