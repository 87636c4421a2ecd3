"""Estimate the memory a fine-tuning setup needs, and refuse one that cannot fit, before loading.

    from star.memory import estimate, check_fits
    est = estimate(cfg)            # Estimate(per_device_bytes=..., parts={...}) or None (unknown model)
    check_fits(cfg)                # raises ConfigError("... needs 97.3 GiB, 22.1 GiB available ...; fix: ...")

validate() calls check_fits() after the cheap checks and before the model path is resolved. It
only counts; it imports no torch unless the accelerator is a GPU (then torch.cuda reports the
smallest visible device). With no GPU visible, a GPU setup is not checked: configs for clusters
still validate on a laptop.

Parameters come from the model config: tiny / gptj_tiny from their dims, a local directory's
config.json, or a table of known hub ids (KNOWN_MODELS). What is counted, per device:

  weights      all parameters at model.dtype (a 16-bit precision "*-true" stores 2 bytes)
  grads        trainable parameters at the weight dtype
  optimizer    Adam/AdamW: 2 states per trainable parameter at the weight dtype (torch keeps them in
               the parameter's dtype); mixed precision ("*-mixed") with fp32 weights is the classic
               16 B per trainable parameter: fp32 master weights, fp32 grads, fp32 Adam m and v
  activations  batch x seq x 34 hidden bytes per layer at 16 bit (Korthikanti et al. 2022, without
               the 5 heads seq term: SDPA stores no attention scores), doubled at fp32; seq is
               trainer.max_seq_len (the worst case); with activation checkpointing only each layer's input
               (2 hidden bytes per token) plus one layer's full activations; plus fp32 logits x 2
  FSDP         FULL_SHARD / HYBRID_SHARD divide weights, grads and optimizer by the world size;
               SHARD_GRAD_OP divides grads and optimizer only
  LoRA         the base frozen (weights only), adapters r x (in + out) per adapted Linear trained
  host copies  on CPU the loop also holds the base model beside the copy it trains; with ddp/fsdp
               on CPU every worker process holds its own copy of the training state
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# The character tokenizer of tiny / gptj_tiny: <pad> <s> </s> <unk> + string.printable.
CHAR_VOCAB = 4 + 100
TINY_POSITIONS = 4096

# Architecture dims of known hub ids (from their config.json), so a hub id is checked offline.
KNOWN_MODELS: dict[str, dict] = {
    "EleutherAI/gpt-j-6b": {"model_type": "gptj", "vocab_size": 50400, "n_embd": 4096, "n_layer": 28,
                            "n_head": 16, "n_inner": None, "n_positions": 2048},
    "HuggingFaceTB/SmolLM2-135M-Instruct": {
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
        "tie_word_embeddings": True},
}
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class Arch:
    """What the estimate needs from a model: its dims and the shapes of its Linear layers."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    n_params: int
    linears: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (in, out), one layer


def gptj_arch(c: dict) -> Arch:
    h, L, V = c["n_embd"], c["n_layer"], c["vocab_size"]
    inner = c.get("n_inner") or 4 * h
    per_layer = 4 * h * h + (h * inner + inner) + (inner * h + h) + 2 * h  # attn (no bias), MLP (bias), ln_1
    n = V * h + L * per_layer + 2 * h + (V * h + V)  # wte, blocks, ln_f, lm_head (with bias)
    lin = {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "out_proj": (h, h),
           "fc_in": (h, inner), "fc_out": (inner, h)}
    return Arch(V, h, L, c["n_head"], n, lin)


def llama_arch(c: dict) -> Arch:
    h, L, V = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv = (c.get("num_key_value_heads") or heads) * (c.get("head_dim") or h // heads)
    inner = c["intermediate_size"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inner + 2 * h  # q, o, k, v, gate/up/down, 2 norms
    n = V * h + L * per_layer + h + (0 if c.get("tie_word_embeddings") else V * h)
    lin = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
           "gate_proj": (h, inner), "up_proj": (h, inner), "down_proj": (inner, h)}
    return Arch(V, h, L, heads, n, lin)


ARCHS = {"gptj": gptj_arch, "llama": llama_arch, "mistral": llama_arch, "qwen2": llama_arch}


def tiny_config(model_cfg: Any, model_type: str) -> dict:
    """The config.json-style dims of tiny (Llama) / gptj_tiny, as star/models.py builds them."""
    h = model_cfg.hidden_size
    if model_type == "gptj":
        return {"model_type": "gptj", "vocab_size": CHAR_VOCAB, "n_embd": h, "n_layer": model_cfg.n_layers,
                "n_head": model_cfg.n_heads, "n_inner": 4 * h}
    return {"model_type": "llama", "vocab_size": CHAR_VOCAB, "hidden_size": h, "num_hidden_layers": model_cfg.n_layers,
            "num_attention_heads": model_cfg.n_heads, "num_key_value_heads": model_cfg.n_heads,
            "intermediate_size": 2 * h, "tie_word_embeddings": False}


def _name_or_path(model_cfg: Any) -> str | None:
    try:
        return model_cfg.name_or_path or None
    except Exception:  # a `???` (missing) value: nothing to read
        return None


def model_config_dict(model_cfg: Any) -> dict | None:
    """Dims of the configured model without loading it, or None when they cannot be known offline."""
    if model_cfg.name == "tiny":
        return tiny_config(model_cfg, "llama")
    if model_cfg.name == "gptj_tiny":
        return tiny_config(model_cfg, "gptj")
    if model_cfg.name == "smollm2_135m":
        return KNOWN_MODELS[SMOLLM2_ID]
    name = _name_or_path(model_cfg)
    if not name:
        return None
    local = Path(os.path.expanduser(name)) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    return KNOWN_MODELS.get(name)


def arch_of(model_cfg: Any) -> Arch | None:
    c = model_config_dict(model_cfg)
    if c is None or c.get("model_type") not in ARCHS:
        return None
    return ARCHS[c["model_type"]](c)


def lora_params(arch: Arch, lora_cfg: Any) -> int:
    """Trainable adapter parameters: r x (in + out) for every adapted Linear of every layer."""
    total = 0
    for name in lora_cfg.target_modules:
        d_in, d_out = arch.linears.get(name, (arch.hidden, arch.hidden))
        total += lora_cfg.r * (d_in + d_out)
    return total * arch.layers


@dataclass
class Estimate:
    per_device_bytes: int
    parts: dict[str, int]
    where: str            # "per GPU" or "host RAM"

    @property
    def gib(self) -> float:
        return self.per_device_bytes / GIB


def estimate(cfg: Any, *, arch: Arch | None = None, overrides: dict | None = None) -> Estimate | None:
    """Bytes one device needs to fine-tune cfg's model with cfg's trainer (None: model unknown).

    `overrides` replaces trainer / LoRA settings for what-if estimates: keys lora, strategy,
    devices, batch_size, activation_checkpointing."""
    arch = arch or arch_of(cfg.model)
    if arch is None:
        return None
    t, o = cfg.trainer, overrides or {}
    use_lora = o.get("lora", cfg.model.lora.enabled)
    strategy = o.get("strategy", t.strategy)
    batch = o.get("batch_size", t.batch_size)
    ckpt = o.get("activation_checkpointing", t.activation_checkpointing)
    devices = o.get("devices", t.devices)
    world = (devices if isinstance(devices, int) and devices > 0 else 1) * t.num_nodes if strategy != "auto" else 1

    w = 2 if t.precision in ("bf16-true", "16-true") else DTYPE_BYTES.get(cfg.model.dtype, 4)
    mixed = str(t.precision).endswith("-mixed")
    P = arch.n_params
    T = lora_params(arch, cfg.model.lora) if use_lora else P
    if use_lora:
        # Adapters are created in fp32 by peft whatever the base dtype: 4 + 4 + 8 bytes each.
        train_state = {"weights": P * w + T * 4, "grads": T * 4, "optimizer": T * 8}
    else:
        # fp32 weights under "*-mixed" are the master copy: 4 + 4 + 8 = 16 B per parameter.
        train_state = {"weights": P * w, "grads": T * w, "optimizer": 2 * T * w}
    if strategy == "fsdp" and world > 1:
        shard = t.sharding_strategy
        keys = {"FULL_SHARD": ("weights", "grads", "optimizer"), "HYBRID_SHARD": ("weights", "grads", "optimizer"),
                "SHARD_GRAD_OP": ("grads", "optimizer")}.get(shard, ())
        for k in keys:
            train_state[k] = train_state[k] // world

    seq = t.max_seq_len
    act_scale = 1 if (mixed or w == 2) else 2  # the formula is for 16-bit activations
    # transformers attends with SDPA (fused, memory-efficient): no stored seq x seq scores, so the
    # 5 x heads x seq term of the formula is left out.
    per_layer_token = 34 * arch.hidden
    if ckpt:
        activations = batch * seq * (2 * arch.hidden * arch.layers + per_layer_token * act_scale)
    else:
        activations = batch * seq * per_layer_token * arch.layers * act_scale
    logits = 2 * batch * seq * arch.vocab * 4
    parts = {**train_state, "activations": activations, "logits": logits}
    accelerator = _accelerator(t)
    if accelerator == "cpu":
        # Host RAM holds everything: every worker's training state, plus the loop's base model.
        per_proc = sum(parts.values())
        total = per_proc * world + P * w
        return Estimate(total, {**{k: v * world for k, v in parts.items()}, "base model (kept by the loop)": P * w},
                        "host RAM")
    return Estimate(sum(parts.values()), parts, "per GPU")


def _accelerator(trainer_cfg: Any) -> str:
    acc = str(trainer_cfg.accelerator)
    if acc in ("gpu", "cuda"):
        return "gpu"
    if acc == "auto":
        return "gpu" if gpu_memory_bytes() else "cpu"
    return "cpu"


def host_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is no /proc)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def gpu_memory_bytes() -> int | None:
    """Total memory of the smallest visible GPU, or None when no GPU is visible."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if not torch.cuda.is_available():
        return None
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))


def available_bytes(cfg: Any) -> int | None:
    return gpu_memory_bytes() if _accelerator(cfg.trainer) == "gpu" else host_available_bytes()


def suggestions(cfg: Any, arch: Arch, available: int) -> list[str]:
    """Fixes that the estimate says would fit, cheapest change first."""
    t = cfg.trainer
    out = []

    def fits(**o) -> float | None:
        e = estimate(cfg, arch=arch, overrides=o)
        return e.gib if e is not None and e.per_device_bytes <= available else None

    if not t.activation_checkpointing and (g := fits(activation_checkpointing=True)):
        out.append(f"trainer.activation_checkpointing=true (~{g:.1f} GiB)")
    if t.batch_size > 1:
        for b in (t.batch_size // 2, t.batch_size // 4, 1):
            if b >= 1 and (g := fits(batch_size=b, activation_checkpointing=True)):
                out.append(f"trainer.batch_size={b} with trainer.activation_checkpointing=true (~{g:.1f} GiB)")
                break
    if not cfg.model.lora.enabled and (g := fits(lora=True, activation_checkpointing=True)):
        out.append(f"LoRA: model.lora.enabled=true trainer.activation_checkpointing=true (~{g:.1f} GiB)")
    if t.strategy != "fsdp":
        for n in (2, 4, 8):
            if g := fits(strategy="fsdp", devices=n, lora=False, activation_checkpointing=True):
                out.append(f"FSDP: trainer=fsdp trainer.devices={n} (~{g:.1f} GiB per GPU)")
                break
    if not out:
        out.append("a smaller model, LoRA (model.lora.enabled=true), FSDP over more GPUs (trainer=fsdp), "
                   "trainer.batch_size=1 and trainer.activation_checkpointing=true")
    return out


def check_fits(cfg: Any) -> Estimate | None:
    """Raise ConfigError when the estimate exceeds the memory available; return the estimate.

    Skipped (returns the estimate or None) when the model's size or the device's memory is unknown,
    or when the run never fine-tunes (method.train=false, n_iterations=0)."""
    from star.config import ConfigError

    arch = arch_of(cfg.model)
    if arch is None or not cfg.method.train or cfg.n_iterations == 0:
        return None
    est = estimate(cfg, arch=arch)
    available = available_bytes(cfg)
    if available is None or est.per_device_bytes <= available:
        return est
    biggest = ", ".join(f"{k} {v / GIB:.1f}" for k, v in sorted(est.parts.items(), key=lambda kv: -kv[1])[:4])
    lora = " with LoRA" if cfg.model.lora.enabled else ""
    raise ConfigError(
        f"fine-tuning {arch.n_params / 1e9:.2f}B parameters{lora} ({cfg.model.dtype}, trainer.precision="
        f"{cfg.trainer.precision}, trainer.strategy={cfg.trainer.strategy}, trainer.batch_size={cfg.trainer.batch_size}, "
        f"trainer.max_seq_len={cfg.trainer.max_seq_len}) needs ~{est.gib:.1f} GiB {est.where}, "
        f"{available / GIB:.1f} GiB available (largest parts in GiB: {biggest}). Fix: "
        + "; or ".join(suggestions(cfg, arch, available))
        + " (or trainer.memory_check=false to skip this check)"
    )
