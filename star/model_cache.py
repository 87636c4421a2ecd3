"""Which model M(n) is, and the models a run holds in memory.

    ref = model_ref(run_dir, 2)            # M(2): ModelRef(checkpoint="iter_02/checkpoint", prompted=False)
    cache = ModelCache(cfg, run_dir)
    model = cache.get(ref)                 # loaded once; the base M is kept for the whole run
    path = cache.directory(ref)            # where M(n) is saved (for engines that load it themselves)
    cache.put(ref, trained_model)          # a model just trained is M(n) without a reload

M(0) is the base with the few-shot prompt. M(n) is what iteration n's train stage wrote: its marker
names the checkpoint (an earlier one, or none for the base, when nothing was kept) and whether the
model is asked with the few-shot prompt (the format it was trained on).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from star import artifacts as A
from star import models  # called as models.X, not imported by name: a test patching star.models.X sees every load


@dataclass(frozen=True)
class ModelRef:
    """Which model M(n) is: a checkpoint directory (relative to the run) or the base (None), and
    whether it is asked with the few-shot prompt."""

    checkpoint: str | None
    prompted: bool


BASE = ModelRef(checkpoint=None, prompted=True)


def model_ref(run_dir: Path, iteration: int) -> ModelRef:
    """M(iteration), read from the iteration's train marker (M(0) is the prompted base)."""
    if iteration == 0:
        return BASE
    info = A.read_done(run_dir, iteration, "train")
    return ModelRef(checkpoint=info["checkpoint"], prompted=info["prompted"])


def model_stamp(run_dir: Path, iteration: int) -> str:
    """Which M(iteration) exactly: a hash of its train marker (it holds the fit's timing, so a retrained
    model gets a new stamp and shards generated with the old one are not reused); "base" for M0."""
    if iteration == 0:
        return "base"
    return hashlib.sha256(A.marker(run_dir, iteration, "train").read_bytes()).hexdigest()[:16]


class ModelCache:
    """The base model and tokenizer (loaded on first use, kept for the run: every iteration may start
    from it) and the one model last loaded or trained (the next stage usually asks for it again)."""

    def __init__(self, cfg, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self._base = None
        self._current: tuple[ModelRef, object] | None = None

    def base(self):
        """(model, tokenizer) of M, untouched by fine-tuning (the train stage trains a copy)."""
        if self._base is None:
            self._base = models.load_model_and_tokenizer(self.cfg.model, seed=self.cfg.seed)
        return self._base

    @property
    def tokenizer(self):
        return self.base()[1]

    def get(self, ref: ModelRef):
        """The model `ref` names: the base, the cached model, or its checkpoint loaded now."""
        if self._current is not None and self._current[0] == ref:
            return self._current[1]
        if ref.checkpoint is None:
            model = self.base()[0]
        else:
            model, _ = models.load_checkpoint(self.run_dir / ref.checkpoint, dtype=self.cfg.model.dtype)
        self._current = (ref, model)
        return model

    def directory(self, ref: ModelRef) -> str:
        """Where the model `ref` names is saved: its checkpoint, or the base's directory (or hub id), for an
        engine that loads it itself (generator=vllm). config.validate refuses such an engine for a base
        built in memory."""
        if ref.checkpoint is not None:
            return str(self.run_dir / ref.checkpoint)
        saved = models.saved_base(self.cfg.model)
        if saved is None:
            raise ValueError(f"model={self.cfg.model.name} is built in memory and has no directory to load from")
        return saved

    def put(self, ref: ModelRef, model) -> None:
        """Remember a model just trained as `ref`, so evaluating it does not reload the checkpoint."""
        self._current = (ref, model)

    def forget(self) -> None:
        """Drop the cached model (a fit outside this process wrote a new checkpoint)."""
        self._current = None
