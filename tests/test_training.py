"""Fine-tuning: loss only on completions (colons included), warmup capped, the loss really drops; (slow)
DDP over 2 spawned CPU processes brings the trained weights back, and a failing rank's traceback too.

    python -m pytest -q tests/test_training.py              # the fast part
    python -m pytest -q -m slow tests/test_training.py      # the spawned DDP fits (about 20 s each)
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from star.models import build_char_tokenizer, load_model_and_tokenizer
from star.training import finetune
from star.training.data import IGNORE_INDEX, PadCollator, tokenize_rows
from star.training.module import effective_warmup
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_loss_covers_the_whole_completion_even_after_a_colon(tok):
    row = {"prompt": "Q: 1 + 2\nA:", "completion": " note: 1+2+0=3, write 3.\nThe answer is 3.\n\n"}
    [ex] = tokenize_rows([row], tok, prefix="", max_seq_len=1024)
    n_prompt = len(row["prompt"])  # one token per character
    assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert tok.decode(ex.input_ids[n_prompt:]) == row["completion"]


def test_prefix_is_prompt_too(tok):
    row = {"prompt": "Q: 1 + 2\nA:", "completion": " 3\n\n"}
    [ex] = tokenize_rows([row], tok, prefix="Q: 0 + 0\nA: 0\n\n", max_seq_len=1024)
    supervised = [t for t, l in zip(ex.input_ids, ex.labels) if l != IGNORE_INDEX]
    assert tok.decode(supervised) == " 3\n\n"


def test_truncation_keeps_the_completion(tok):
    row = {"prompt": "x" * 50, "completion": "abcdef"}
    [ex] = tokenize_rows([row], tok, prefix="", max_seq_len=10)
    assert len(ex.input_ids) == 10
    assert tok.decode(ex.input_ids[-6:]) == "abcdef" and ex.labels[-6:] == ex.input_ids[-6:]


def test_collator_masks_padding(tok):
    rows = [{"prompt": "ab", "completion": "c"}, {"prompt": "abcd", "completion": "ef"}]
    batch = PadCollator(tok.pad_token_id)(tokenize_rows(rows, tok, "", 64))
    assert batch["input_ids"].shape == (2, 6)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    assert batch["labels"][0].tolist()[3:] == [IGNORE_INDEX] * 3


@pytest.mark.parametrize("warmup,steps,expected", [(100, 40, 10), (100, 1000, 100), (0, 40, 0), (5, 40, 5)])
def test_warmup_never_longer_than_the_run(warmup, steps, expected):
    assert effective_warmup(warmup, steps) == expected


def test_finetune_fits_a_small_set(tmp_path):
    cfg = compose_config(["model=tiny", "trainer.lr=3e-3", "trainer.batch_size=4", "trainer.warmup_steps=0"])
    model, tok = load_model_and_tokenizer(cfg.model, seed=0)
    rows = [{"prompt": f"Q: {a} + 1\nA:", "completion": f" {a + 1}\n\n"} for a in range(8)]
    first = finetune(model, tok, rows, steps=2, trainer_cfg=cfg.trainer, seed=0, progress=False)
    model2, _ = load_model_and_tokenizer(cfg.model, seed=0)
    longer = finetune(model2, tok, rows, steps=60, trainer_cfg=cfg.trainer, seed=0, progress=False)
    assert first.steps == 2 and longer.steps == 60
    assert longer.loss < 0.5 * first.loss, (first.loss, longer.loss)
    assert longer.n_tokens > 0 and longer.tokens_per_s > 0


ROWS = [{"prompt": f"Q: {a} + 1\nA:", "completion": f" {a + 1}\n\n"} for a in range(8)]
DDP = ["model=tiny", "trainer=cpu_ddp", "trainer.batch_size=2", "trainer.warmup_steps=0", "trainer.lr=1e-2"]


@pytest.mark.slow
def test_ddp_spawns_two_ranks_and_brings_the_weights_back():
    """trainer=cpu_ddp: 2 spawned gloo ranks fit; the caller's model object holds the trained weights."""
    cfg = compose_config(DDP)
    model, tok = load_model_and_tokenizer(cfg.model, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = finetune(model, tok, ROWS, steps=3, trainer_cfg=cfg.trainer, seed=0, progress=False)
    assert stats.steps == 3 and stats.setup["world_size"] == 2 and stats.setup["strategy"] == "ddp"
    assert stats.n_tokens > 0 and math.isfinite(stats.loss) and stats.full_state_dict is None
    after = model.state_dict()
    assert set(after) == set(before) and any(not torch.equal(before[k], after[k]) for k in before)
    assert not model.training, "left in eval mode, as a fit in this process leaves it"


class FailOnRank1(L.Callback):
    """Raises in rank 1 only, once the ranks have started training."""

    def on_train_start(self, trainer, pl_module):
        if trainer.global_rank == 1:
            raise ValueError("rank 1 fails on purpose")


@pytest.mark.slow
def test_a_failing_rank_raises_here_with_its_traceback():
    cfg = compose_config(DDP)
    model, tok = load_model_and_tokenizer(cfg.model, seed=0)
    with pytest.raises(Exception) as e:  # torch.multiprocessing's ProcessRaisedException
        finetune(model, tok, ROWS, steps=2, trainer_cfg=cfg.trainer, seed=0, progress=False,
                 callbacks=[FailOnRank1()])
    assert "rank 1 fails on purpose" in str(e.value) and "Traceback" in str(e.value), str(e.value)[-2000:]
