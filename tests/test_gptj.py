"""The GPT-J code path on CPU (model=gptj_tiny): generation, LoRA fit-and-merge, the FSDP and DDP
strategy objects, and (slow) the real CLI with 2-process CPU DDP over gloo."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from star.generation.hf import HFGenerator
from star.models import load_model_and_tokenizer
from star.training import finetune
from star.training.fit import block_classes, build_strategy
from tests.conftest import compose_config, run_star

PREFIX = "Q: 1 + 2\nA: 3\n\nQ: 4 + 4\nA: 8\n\n"
QUESTIONS = ["Q: 5 + 1\nA:", "Q: 12 + 30\nA:", "Q: 7 + 7\nA:", "Q: 123 + 456\nA:"]
ROWS = [{"prompt": f"Q: {a} + 1\nA:", "completion": f" {a + 1}\n\n"} for a in range(8)]


@pytest.fixture(scope="module")
def gptj():
    cfg = compose_config(["model=gptj_tiny"])
    model, tok = load_model_and_tokenizer(cfg.model, seed=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)  # sharpen near-uniform logits so argmax ties do not decide
    return cfg, model, tok


def test_builds_gptj_seeded(gptj):
    cfg, model, _ = gptj
    assert type(model).__name__ == "GPTJForCausalLM"
    a, _ = load_model_and_tokenizer(cfg.model, seed=3)
    b, _ = load_model_and_tokenizer(cfg.model, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    state = torch.random.get_rng_state()
    load_model_and_tokenizer(cfg.model, seed=4)
    assert torch.equal(state, torch.random.get_rng_state()), "building leaves the global RNG alone"


def test_generator_prefix_reuse_and_transformers_agree(gptj):
    _, model, tok = gptj
    kw = dict(seeds=[0] * len(QUESTIONS), max_new_tokens=10, stop=("\n\n",))
    naive = HFGenerator(model, tok, batch_size=1, reuse_prefix=False, progress=False).generate(PREFIX, QUESTIONS, **kw)
    fast = HFGenerator(model, tok, batch_size=4, reuse_prefix=True, progress=False).generate(PREFIX, QUESTIONS, **kw)
    assert fast == naive and len(set(naive)) > 1
    ids = tok(PREFIX + QUESTIONS[1], add_special_tokens=False).input_ids
    out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    ours = HFGenerator(model, tok, batch_size=2, progress=False).generate(
        PREFIX, QUESTIONS[:2], seeds=[0, 0], max_new_tokens=8, stop=())
    assert ours[1] == tok.decode(out[0, len(ids):], skip_special_tokens=True)


def test_lora_trains_merges_and_leaves_the_base_alone(gptj):
    cfg = compose_config(["model=gptj_tiny", "model.lora.enabled=true", "trainer.lr=1e-2", "trainer.warmup_steps=0",
                          "trainer.batch_size=4"])
    base, tok = load_model_and_tokenizer(cfg.model, seed=0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = copy.deepcopy(base)  # what the loop does
    stats = finetune(model, tok, ROWS, steps=3, trainer_cfg=cfg.trainer, seed=0, progress=False, lora=cfg.model.lora)
    assert stats.steps == 3 and stats.setup["lora"]["r"] == 8
    assert type(model).__name__ == "GPTJForCausalLM" and not any("lora" in n for n, _ in model.named_modules())
    after = model.state_dict()
    assert set(after) == set(before), "merged: the same parameter names as a plain checkpoint"
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed), sorted(changed)[:4]
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items()), "base untouched"


def test_activation_checkpointing_runs_and_is_switched_off_after(gptj):
    cfg = compose_config(["model=gptj_tiny", "trainer.activation_checkpointing=true", "trainer.batch_size=4"])
    model, tok = load_model_and_tokenizer(cfg.model, seed=0)
    stats = finetune(model, tok, ROWS, steps=2, trainer_cfg=cfg.trainer, seed=0, progress=False)
    assert stats.steps == 2 and not model.is_activation_checkpointing


def test_strategy_objects(gptj):
    _, model, _ = gptj
    assert {c.__name__ for c in block_classes(model)} == {"GPTJBlock"}
    fsdp = build_strategy(compose_config(["model=gptj_tiny", "trainer=fsdp"]).trainer, model)
    assert isinstance(fsdp, FSDPStrategy)
    policy = fsdp._activation_checkpointing_kwargs["auto_wrap_policy"]  # checkpointing: per GPTJBlock
    assert {c.__name__ for c in policy._module_classes} == {"GPTJBlock"}
    assert {c.__name__ for c in fsdp.kwargs["auto_wrap_policy"]._module_classes} == {"GPTJBlock"}
    ddp = build_strategy(compose_config(["trainer=cpu_ddp"]).trainer)
    assert isinstance(ddp, DDPStrategy) and ddp.process_group_backend == "gloo"
    assert build_strategy(compose_config(["trainer=cpu"]).trainer) == "auto"


@pytest.mark.slow
def test_cli_gptj_tiny_two_iterations(tmp_path):
    run = tmp_path / "run"
    proc = run_star(["model=gptj_tiny", "debug=fast", "n_iterations=2", "logger=none", f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    cfg = json.loads((run / "iter_02" / "checkpoint" / "config.json").read_text())
    assert cfg["architectures"] == ["GPTJForCausalLM"]


@pytest.mark.slow
def test_cli_cpu_ddp_two_processes(tmp_path):
    """2 gloo processes fine-tune; only the main process runs the loop, so every file and the
    checkpoint are written once, and the trained weights come back into it."""
    run = tmp_path / "run"
    proc = run_star(["model=gptj_tiny", "debug=fast", "n_iterations=1", "logger=none", "trainer=cpu_ddp",
                     f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("| iter |") == 1, "the loop ran in one process"
    done = json.loads((run / "iter_01" / "train.done").read_text())
    assert done["steps"] == 2 and done["trainer"]["world_size"] == 2 and done["trainer"]["strategy"] == "ddp"
    ckpt = run / "iter_01" / "checkpoint"
    assert [p.name for p in ckpt.glob("*.safetensors")] == ["model.safetensors"]
    assert not list(run.rglob("*.tmp")) and len((run / "iter_01" / "generations.jsonl").read_text().splitlines()) == 16
    from safetensors.torch import load_file

    trained = load_file(ckpt / "model.safetensors")
    base, _ = load_model_and_tokenizer(compose_config(["model=gptj_tiny"]).model, seed=0)
    assert any(not torch.equal(trained[k], v) for k, v in base.state_dict().items() if k in trained), \
        "the workers' trained weights reached the saved checkpoint"
