"""What every stage of a run reads: the config, the run directory, the task, the models, and the
seeds and questions derived from them.

    ctx = StageContext(cfg, run_dir)              # the loop builds one per run
    ctx.generator(ref)                            # the configured generation engine for M(n) = ref
    ctx.prompt_for(ref)                           # the few-shot prefix M(n) is asked with ("" if none)
    ctx.train_questions(iteration)                # the (sampled) training questions of an iteration

All randomness derives from (seed, iteration, stage, example id) through `derive_seed`, so a stage
redone after a crash gives what the first try would have.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from star.generation import build_generator, loads_from_directory
from star.model_cache import ModelCache, ModelRef
from star.tasks import Task, build_task
from star.tasks.base import Example
from star.tracking import Tracker
from star.training import finetune


def derive_seed(seed: int, iteration: int, stage: str, key: str = "") -> int:
    """A stable 32-bit seed (numpy's range, which Lightning's seeding needs) for one
    (run seed, iteration, stage, example) cell."""
    digest = hashlib.sha256(f"{seed}/{iteration}/{stage}/{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass
class StageContext:
    """One run's shared state. make_generator and finetune_fn are injectable so tests can script
    generation and watch fine-tuning without a real model doing either."""

    cfg: object
    run_dir: Path
    make_generator: Callable | None = None     # (model or its directory, tokenizer) -> generator; default: cfg.generator
    finetune_fn: Callable = finetune
    tracker: Tracker | None = None
    task: Task = field(init=False)
    models: ModelCache = field(init=False)

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        self.task = build_task(self.cfg.task, seed=self.cfg.seed)
        self.models = ModelCache(self.cfg, self.run_dir)
        self._engine = None  # the engine of a backend that loads models itself, kept across passes
        if self.make_generator is None:
            self.make_generator = lambda model, tokenizer: build_generator(
                self.cfg.generator, model, tokenizer, model_cfg=self.cfg.model, seed=self.cfg.seed)

    def generator(self, ref: ModelRef):
        """The configured engine for M(n) = `ref`. hf generates with the model in memory; a backend that
        loads from a directory (vllm) gets M(n)'s directory; its engine is kept while the model stays the
        same (generator.engine_lifetime=model) and stopped at the end of the run (close)."""
        if not loads_from_directory(self.cfg.generator):
            return self.make_generator(self.models.get(ref), self.models.tokenizer)
        path = self.models.directory(ref)
        if self._engine is None:
            self._engine = self.make_generator(path, self.models.tokenizer)
        else:
            self._engine.use(path)
        return self._engine

    def close(self) -> None:
        """Stop the run's generation engine, if it has one of its own (its memory is freed)."""
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.close()

    def fewshot_prefix(self) -> str:
        """The method's few-shot prompt: with rationales, or answers only (method.direct)."""
        return self.task.fewshot_prompt(direct=self.cfg.method.direct)

    def prompt_for(self, ref: ModelRef) -> str:
        """What M(n) is asked with: the few-shot prompt when it was trained with it (or is the base)."""
        return self.fewshot_prefix() if ref.prompted else ""

    def seed(self, iteration: int, stage: str, key: str = "") -> int:
        return derive_seed(self.cfg.seed, iteration, stage, key)

    def train_questions(self, iteration: int) -> list[Example]:
        """The training pool, or a seeded sample of task.sample_per_iteration of it (in pool order)."""
        pool = self.task.load("train")
        k = self.cfg.task.sample_per_iteration
        if k is None or k >= len(pool):
            return pool
        rng = random.Random(self.seed(iteration, "sample"))
        return [pool[i] for i in sorted(rng.sample(range(len(pool)), k))]
