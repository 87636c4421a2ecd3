"""star/memory.py: parameter counts, the memory estimate against hand-computed numbers, and the
refusal (with the estimate and a fix) of a setup that cannot fit, before anything loads."""

from __future__ import annotations

import json

import pytest

from star import memory as M
from star.config import ConfigError, validate
from star.models import KNOWN_HUB_MODELS, load_model_and_tokenizer
from star.preflight import preflight
from tests.conftest import compose_config

GIB = 1024**3


def check(cfg) -> None:
    """What the CLI runs before loading anything: the pure checks, then the pre-flight (memory among them)."""
    validate(cfg)
    preflight(cfg)
GPTJ_6B_PARAMS = 6_050_882_784  # EleutherAI/gpt-j-6b, as transformers counts it


def test_known_parameter_counts():
    assert M.arch_of(compose_config(["model=gptj_6b"]).model).n_params == GPTJ_6B_PARAMS
    assert M.arch_of(compose_config(["model=smollm2_135m"]).model).n_params == 134_515_008


@pytest.mark.parametrize("model", ["tiny", "gptj_tiny"])
def test_tiny_counts_match_the_built_models(model):
    cfg = compose_config([f"model={model}", "model.hidden_size=32", "model.n_layers=3"])
    built, _ = load_model_and_tokenizer(cfg.model, seed=0)
    assert M.arch_of(cfg.model).n_params == sum(p.numel() for p in built.parameters())


def test_local_config_json_is_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(KNOWN_HUB_MODELS["EleutherAI/gpt-j-6b"]))
    cfg = compose_config(["model=hf", f"model.name_or_path={tmp_path}"])
    assert M.arch_of(cfg.model).n_params == GPTJ_6B_PARAMS
    assert M.arch_of(compose_config(["model=hf", "model.name_or_path=some-org/unknown"]).model) is None


# Hand-computed, GPT-J 6B, batch 8 x 1024 tokens, h=4096, 28 layers, vocab 50400:
#   weights/grads bf16 2 B x 6,050,882,784; Adam 2 states x 2 B
#   activations 8*1024 tokens * 34*4096 B * 28 layers; logits 2 * 8*1024 * 50400 * 4 B
#   LoRA r=8 on q_proj, v_proj: 8*(4096+4096)*2*28 = 3,670,016 fp32 params (grads 4 B, Adam 8 B)
#   FSDP 8 GPUs + checkpointing: states / 8; activations 8192 * (2*4096*28 + 34*4096)
TABLE = [
    (["trainer=gpu"], {"weights": 12_101_765_568, "grads": 12_101_765_568, "optimizer": 24_203_531_136,
                       "activations": 31_943_819_264, "logits": 3_303_014_400}),
    (["trainer=gpu", "model.lora.enabled=true"],
     {"weights": 12_101_765_568 + 3_670_016 * 4, "grads": 3_670_016 * 4, "optimizer": 3_670_016 * 8,
      "activations": 31_943_819_264, "logits": 3_303_014_400}),
    (["trainer=fsdp"], {"weights": 12_101_765_568 // 8, "grads": 12_101_765_568 // 8,
                        "optimizer": 24_203_531_136 // 8, "activations": 3_019_898_880, "logits": 3_303_014_400}),
    (["trainer=gpu", "trainer.activation_checkpointing=true", "trainer.batch_size=1"],
     {"weights": 12_101_765_568, "grads": 12_101_765_568, "optimizer": 24_203_531_136,
      "activations": 1024 * (2 * 4096 * 28 + 34 * 4096), "logits": 2 * 1024 * 50400 * 4}),
]


@pytest.mark.parametrize("overrides,expected", TABLE)
def test_estimates_match_hand_computed(overrides, expected):
    est = M.estimate(compose_config(["model=gptj_6b", *overrides]))
    assert est.parts == expected
    assert est.per_device_bytes == sum(expected.values()) and est.where == "per GPU"


def test_lora_fsdp_and_checkpointing_reduce_the_estimate():
    full = M.estimate(compose_config(["model=gptj_6b", "trainer=gpu"])).per_device_bytes
    for extra in (["model.lora.enabled=true"], ["trainer=fsdp"], ["trainer.activation_checkpointing=true"],
                  ["trainer.batch_size=1"]):
        assert M.estimate(compose_config(["model=gptj_6b", "trainer=gpu", *extra])).per_device_bytes < full, extra


def test_full_finetune_of_gptj_6b_is_refused_on_a_24_gib_cpu(monkeypatch):
    monkeypatch.setattr(M, "host_available_bytes", lambda: 24 * GIB)
    checked = []
    monkeypatch.setattr("star.preflight.check_model_available", lambda m: checked.append(m))
    with pytest.raises(ConfigError) as err:
        check(compose_config(["model=gptj_6b", "trainer=cpu"]))
    msg = str(err.value)
    assert "GiB" in msg and "24.0 GiB available" in msg and "Fix:" in msg
    assert "LoRA" in msg or "FSDP" in msg or "batch_size" in msg
    assert not checked, "refused before the model path is even resolved"


def test_fix_suggestions_name_what_fits(monkeypatch):
    monkeypatch.setattr(M, "gpu_memory_bytes", lambda: 40 * GIB)  # an A100-40GB
    with pytest.raises(ConfigError) as err:
        check(compose_config(["model=gptj_6b", "trainer=gpu"]))
    assert "model.lora.enabled=true" in str(err.value) and "trainer=fsdp" in str(err.value)
    check(compose_config(["model=gptj_6b", "trainer=gpu", "model.lora.enabled=true",
                             "trainer.activation_checkpointing=true"]))


def test_gpu_setups_are_not_checked_without_a_gpu(monkeypatch):
    monkeypatch.setattr(M, "gpu_memory_bytes", lambda: None)
    check(compose_config(["model=gptj_6b", "trainer=fsdp"]))


def test_gptj_tiny_passes_and_escape_hatch(monkeypatch):
    check(compose_config(["model=gptj_tiny", "trainer=cpu_ddp"]))
    monkeypatch.setattr(M, "host_available_bytes", lambda: 1 * GIB)
    check(compose_config(["model=gptj_6b", "trainer=cpu", "trainer.memory_check=false"]))
