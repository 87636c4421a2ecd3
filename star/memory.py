"""Estimate the memory a fine-tuning setup needs, and refuse one that cannot fit, before loading.

    from star.memory import estimate, check_fits
    est = estimate(cfg)            # Estimate(per_device_bytes=..., parts={...}) or None (unknown model)
    check_fits(cfg)                # raises ConfigError("... needs 97.3 GiB, 22.1 GiB available ...; fix: ...")

The pre-flight step (star/preflight.py) calls check_fits() before the model path is resolved. It
only counts; it imports no torch unless the accelerator is a GPU (then torch.cuda reports the
smallest visible device). With no GPU visible, a GPU setup is not checked: configs for clusters
still validate on a laptop.

Parameters come from the model's dims (star.models.architecture: tiny / gptj_tiny from their
config, a local directory's config.json, or the table of known hub ids). What is counted, per device:

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

from dataclasses import dataclass, field
from typing import Any

from star.config import ConfigError
from star.models import architecture

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Arch:
    """What the estimate needs from a model: its dims and the shapes of its Linear layers."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    n_params: int
    linears: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (in, out), one layer


def gptj_arch(config: dict) -> Arch:
    hidden, n_layers, vocab = config["n_embd"], config["n_layer"], config["vocab_size"]
    inner = config.get("n_inner") or 4 * hidden
    # attention (no bias), MLP (with bias), ln_1
    per_layer = 4 * hidden * hidden + (hidden * inner + inner) + (inner * hidden + hidden) + 2 * hidden
    n_params = vocab * hidden + n_layers * per_layer + 2 * hidden + (vocab * hidden + vocab)  # wte, blocks, ln_f, lm_head
    linears = {"q_proj": (hidden, hidden), "k_proj": (hidden, hidden), "v_proj": (hidden, hidden),
               "out_proj": (hidden, hidden), "fc_in": (hidden, inner), "fc_out": (inner, hidden)}
    return Arch(vocab, hidden, n_layers, config["n_head"], n_params, linears)


def llama_arch(config: dict) -> Arch:
    hidden, n_layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv = (config.get("num_key_value_heads") or heads) * (config.get("head_dim") or hidden // heads)
    inner = config["intermediate_size"]
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inner + 2 * hidden  # q, o, k, v, MLP, 2 norms
    n_params = vocab * hidden + n_layers * per_layer + hidden + (0 if config.get("tie_word_embeddings") else vocab * hidden)
    linears = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
               "gate_proj": (hidden, inner), "up_proj": (hidden, inner), "down_proj": (inner, hidden)}
    return Arch(vocab, hidden, n_layers, heads, n_params, linears)


ARCHS = {"gptj": gptj_arch, "llama": llama_arch, "mistral": llama_arch, "qwen2": llama_arch}


def arch_of(model_cfg: Any) -> Arch | None:
    """The configured model's Arch (star.models.architecture: its dims without loading it), or None."""
    config = architecture(model_cfg)
    if config is None or config.get("model_type") not in ARCHS:
        return None
    try:
        return ARCHS[config["model_type"]](config)
    except (KeyError, TypeError):  # a config.json without the dims (transformers fills in its defaults)
        return None


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
    trainer, what_if = cfg.trainer, overrides or {}
    use_lora = what_if.get("lora", cfg.model.lora.enabled)
    strategy = what_if.get("strategy", trainer.strategy)
    batch = what_if.get("batch_size", trainer.batch_size)
    recompute = what_if.get("activation_checkpointing", trainer.activation_checkpointing)
    devices = what_if.get("devices", trainer.devices)
    world = (devices if isinstance(devices, int) and devices > 0 else 1) * trainer.num_nodes if strategy != "auto" else 1

    weight_bytes = 2 if trainer.precision in ("bf16-true", "16-true") else DTYPE_BYTES.get(cfg.model.dtype, 4)
    mixed = str(trainer.precision).endswith("-mixed")
    n_params = arch.n_params
    n_trained = lora_params(arch, cfg.model.lora) if use_lora else n_params
    if use_lora:
        # Adapters are created in fp32 by peft whatever the base dtype: 4 + 4 + 8 bytes each.
        train_state = {"weights": n_params * weight_bytes + n_trained * 4, "grads": n_trained * 4,
                       "optimizer": n_trained * 8}
    else:
        # fp32 weights under "*-mixed" are the master copy: 4 + 4 + 8 = 16 B per parameter.
        train_state = {"weights": n_params * weight_bytes, "grads": n_trained * weight_bytes,
                       "optimizer": 2 * n_trained * weight_bytes}
    if strategy == "fsdp" and world > 1:
        sharded = {"FULL_SHARD": ("weights", "grads", "optimizer"), "HYBRID_SHARD": ("weights", "grads", "optimizer"),
                   "SHARD_GRAD_OP": ("grads", "optimizer")}.get(trainer.sharding_strategy, ())
        for part in sharded:
            train_state[part] = train_state[part] // world

    seq = trainer.max_seq_len
    act_scale = 1 if (mixed or weight_bytes == 2) else 2  # the formula is for 16-bit activations
    # transformers attends with SDPA (fused, memory-efficient): no stored seq x seq scores, so the
    # 5 x heads x seq term of the formula is left out.
    per_layer_token = 34 * arch.hidden
    if recompute:
        activations = batch * seq * (2 * arch.hidden * arch.layers + per_layer_token * act_scale)
    else:
        activations = batch * seq * per_layer_token * arch.layers * act_scale
    logits = 2 * batch * seq * arch.vocab * 4
    parts = {**train_state, "activations": activations, "logits": logits}
    if _accelerator(trainer) == "cpu":
        # Host RAM holds everything: every worker's training state, plus the loop's base model.
        base = n_params * weight_bytes
        total = sum(parts.values()) * world + base
        return Estimate(total, {**{k: v * world for k, v in parts.items()}, "base model (kept by the loop)": base},
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
    trainer = cfg.trainer
    out = []

    def fits(**what_if) -> float | None:
        est = estimate(cfg, arch=arch, overrides=what_if)
        return est.gib if est is not None and est.per_device_bytes <= available else None

    if not trainer.activation_checkpointing and (gib := fits(activation_checkpointing=True)):
        out.append(f"trainer.activation_checkpointing=true (~{gib:.1f} GiB)")
    if trainer.batch_size > 1:
        for batch in (trainer.batch_size // 2, trainer.batch_size // 4, 1):
            if batch >= 1 and (gib := fits(batch_size=batch, activation_checkpointing=True)):
                out.append(f"trainer.batch_size={batch} with trainer.activation_checkpointing=true (~{gib:.1f} GiB)")
                break
    if not cfg.model.lora.enabled and (gib := fits(lora=True, activation_checkpointing=True)):
        out.append(f"LoRA: model.lora.enabled=true trainer.activation_checkpointing=true (~{gib:.1f} GiB)")
    if trainer.strategy != "fsdp":
        for n in (2, 4, 8):
            if gib := fits(strategy="fsdp", devices=n, lora=False, activation_checkpointing=True):
                out.append(f"FSDP: trainer=fsdp trainer.devices={n} (~{gib:.1f} GiB per GPU)")
                break
    if not out:
        out.append("a smaller model, LoRA (model.lora.enabled=true), FSDP over more GPUs (trainer=fsdp), "
                   "trainer.batch_size=1 and trainer.activation_checkpointing=true")
    return out


def check_fits(cfg: Any) -> Estimate | None:
    """Raise ConfigError when the estimate exceeds the memory available; return the estimate.

    Skipped (returns the estimate or None) when the model's size or the device's memory is unknown,
    or when the run never fine-tunes (method.train=false, n_iterations=0)."""
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
