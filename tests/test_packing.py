"""Packing (trainer.packing): a packed batch trains exactly like the same examples unpacked.

Checked on tiny random models of both architectures the project trains (Llama: model=tiny,
GPT-J: model=gptj_tiny; their attention code differs), in fp32:
- the packed loss equals the token-weighted mean of the per-example losses, and so does every
  parameter's gradient;
- an example's logits do not change when another example is packed beside it (no
  cross-example attention);
- without use_cache=False transformers would NOT isolate them: the guard in training_step matters;
- finetune with packing on and off gives the same per-step losses.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from star.models import load_model_and_tokenizer
from star.training import finetune
from star.training.data import IGNORE_INDEX, PackCollator, PadCollator, tokenize_rows
from tests.conftest import compose_config

ROWS = [
    {"prompt": "Q: 47 + 85\nA:", "completion": " 7+5+0=12\n4+8+1=13\nThe answer is 132.\n\n"},
    {"prompt": "Q: 3 + 4\nA:", "completion": " 3+4+0=7\nThe answer is 7.\n\n"},
    {"prompt": "Q: 12 + 9\nA:", "completion": " 2+9+0=11\n1+0+1=2\nThe answer is 21.\n\n"},
    {"prompt": "Q: 5 + 5\nA:", "completion": " 5+5+0=10\nThe answer is 10.\n\n"},
]
MODELS = ["tiny", "gptj_tiny"]


def _model(name):
    cfg = compose_config([f"model={name}", "model.device=cpu"])
    model, tok = load_model_and_tokenizer(cfg.model, seed=0)
    return model.float(), tok


def _forward(model, batch):
    batch = {k: v for k, v in batch.items() if k != "n_tokens"}
    return model(**batch, use_cache=False)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", MODELS)
def test_packed_loss_and_gradients_equal_unpacked(name):
    model, tok = _model(name)
    examples = tokenize_rows(ROWS, tok, "", 1024)
    packed = PackCollator(tok.pad_token_id, 1024)(examples)
    assert packed["input_ids"].shape[0] == 1  # all four share one row
    assert int(packed["n_tokens"]) == sum(len(e.input_ids) for e in examples) == packed["input_ids"].shape[1]

    model.zero_grad()
    loss = _forward(model, packed).loss
    loss.backward()
    g_packed = _grads(model)

    # Reference: every example alone, its mean loss weighted by its number of completion tokens.
    model.zero_grad()
    weights = [sum(l != IGNORE_INDEX for l in e.labels[1:]) for e in examples]
    total = sum(weights)
    reference = 0.0
    for e, w in zip(examples, weights):
        single = _forward(model, PadCollator(tok.pad_token_id)([e])).loss * (w / total)
        single.backward()
        reference += float(single.detach())
    g_ref = _grads(model)

    assert float(loss.detach()) == pytest.approx(reference, abs=1e-5)
    assert g_packed.keys() == g_ref.keys()
    for k in g_ref:
        torch.testing.assert_close(g_packed[k], g_ref[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", MODELS)
def test_packed_example_logits_ignore_their_neighbours(name):
    model, tok = _model(name)
    a, b = tokenize_rows(ROWS[:2], tok, "", 1024)
    collate = PackCollator(tok.pad_token_id, 1024)
    with torch.no_grad():
        alone = _forward(model, collate([b])).logits[0]
        beside = collate([a, b])  # longest first: a, then b
        assert beside["position_ids"][0, len(a.input_ids)] == 0
        packed = _forward(model, beside).logits[0, len(a.input_ids):]
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-5)


def test_with_a_cache_transformers_would_mix_packed_examples():
    """Why training_step passes use_cache=False: with the config's use_cache=True transformers
    skips its packed-sequence mask and b attends to a."""
    model, tok = _model("tiny")
    a, b = tokenize_rows(ROWS[:2], tok, "", 1024)
    collate = PackCollator(tok.pad_token_id, 1024)
    beside = {k: v for k, v in collate([a, b]).items() if k != "n_tokens"}
    with torch.no_grad():
        alone = model(**{k: v for k, v in collate([b]).items() if k != "n_tokens"}, use_cache=False).logits[0]
        mixed = model(**beside).logits[0, len(a.input_ids):]  # use_cache from the config (True)
    assert not torch.allclose(mixed, alone, atol=1e-3)


def test_rows_never_exceed_max_seq_len():
    _, tok = _model("tiny")
    examples = tokenize_rows(ROWS * 3, tok, "", 1024)
    longest = max(len(e.input_ids) for e in examples)
    batch = PackCollator(tok.pad_token_id, 2 * longest)(examples)
    assert batch["input_ids"].shape[1] <= 2 * longest
    assert batch["input_ids"].shape[0] < len(examples)
    # Every real token is there exactly once; the rest is padding with no loss.
    n_real = sum(len(e.input_ids) for e in examples)
    assert int(batch["n_tokens"]) == n_real
    assert int((batch["input_ids"] != tok.pad_token_id).sum()) == n_real
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(
        sum(l != IGNORE_INDEX for l in e.labels[1:]) for e in examples)


class _StepLosses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_finetune_packed_steps_match_unpacked():
    """Same examples per step, same loss: the per-step training losses agree (fp32)."""
    losses = {}
    for packing in (False, True):
        cfg = compose_config(["model=tiny", "trainer.lr=3e-3", "trainer.batch_size=3", "trainer.warmup_steps=0",
                              "trainer.precision=32-true", f"trainer.packing={packing}"])
        model, tok = load_model_and_tokenizer(cfg.model, seed=0)
        spy = _StepLosses()
        stats = finetune(model, tok, ROWS * 2, steps=6, trainer_cfg=cfg.trainer, seed=0, progress=False,
                         callbacks=[spy])
        assert stats.setup["packing"] is packing and stats.steps == 6
        losses[packing] = spy.losses
    assert len(losses[True]) == 6
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
