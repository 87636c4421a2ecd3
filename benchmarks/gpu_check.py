"""One short STaR iteration of a GPT-J-6B-shaped model through the real loop; appends timings and
peak GPU memory to a markdown file. Driven by benchmarks/gpu_check.sh (see there)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# GPT-J 6B: n_embd 4096, 28 layers, 16 heads (rotary 64 of 256, MLP 16384). model=gptj_tiny
# builds exactly that block stack with random weights (no download); only the vocabulary is the
# in-process character tokenizer's 104 symbols instead of 50400.
SIX_B = ["model=gptj_tiny", "model.hidden_size=4096", "model.n_layers=28", "model.n_heads=16",
         "model.dtype=bfloat16", "trainer=gpu", "model.lora.enabled=true", "trainer.batch_size=8"]
DRY = ["model=gptj_tiny", "trainer=cpu", "model.lora.enabled=true", "trainer.batch_size=4"]


def prefix_reuse_passes(loop, cfg, cuda: bool) -> tuple[float, float]:
    """Generation tokens/s with and without prefix reuse: iteration 1's generate pass (same
    few-shot prefix, prompts and seeds) run twice more on the base model, which fine-tuning left
    untouched (the train stage deep-copies it), reuse_prefix=True then False. Timing only."""
    import torch

    from star.generation.hf import HFGenerator
    from star.model_cache import model_ref
    from star.stages.context import derive_seed

    model, tokenizer = loop.ctx.models.base()
    ref = model_ref(loop.run_dir, 0)
    questions = loop.ctx.train_questions(1)
    prompts = [loop.task.format_question(ex) for ex in questions]
    seeds = [derive_seed(cfg.seed, 1, "generate", ex.id) for ex in questions]
    rates = []
    for reuse in (True, False):
        gen = HFGenerator(model, tokenizer, batch_size=cfg.generator.batch_size, reuse_prefix=reuse, progress=False)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        gen.generate(loop.ctx.prompt_for(ref), prompts, seeds=seeds, max_new_tokens=cfg.task.max_new_tokens,
                     stop=loop.task.stop, temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                     desc=f"reuse_prefix={reuse}")
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        rates.append(gen.n_new_tokens / seconds if seconds > 0 else 0.0)
        print(f"[gpu_check] reuse_prefix={reuse}: {gen.n_new_tokens} new tokens in {seconds:.2f}s")
    return rates[0], rates[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true", help="gptj_tiny on CPU: checks the script, measures nothing")
    # Random weights solve nothing, so by default the failures are "rationalized" with the gold
    # rationales (rationalization.gold_oracle, debug only) and fine-tuning has data to time.
    ap.add_argument("--model-rationales", dest="gold", action="store_false",
                    help="rationalize with the model instead of gold rationales (random weights: nothing to train)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "gpu_results.md"))
    args = ap.parse_args()

    import torch
    from hydra import compose, initialize_config_dir

    from star.cli import CONF_DIR
    from star.config import register_configs, validate
    from star.loop import StarLoop
    from star.preflight import preflight

    overrides = (DRY if args.dry_run else SIX_B) + [
        "task=arithmetic", "task.train_size=64", "task.dev_size=32", "task.max_new_tokens=64",
        "generator.batch_size=32", "generator.progress=false", "n_iterations=1", "schedule.base_steps=8",
        "trainer.warmup_steps=0", "trainer.max_seq_len=512", "logger=none", "method.keep_prompt_in_training=false",
        f"rationalization.gold_oracle={'true' if args.gold else 'false'}",
    ]
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)
    preflight(cfg)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run_dir = Path(tempfile.mkdtemp(prefix="star-gpu-check-"))
    start = time.perf_counter()
    loop = StarLoop(cfg, run_dir)
    t0 = time.perf_counter()
    loop.ctx.models.base()
    build_s = time.perf_counter() - t0
    history = loop.run()
    total = time.perf_counter() - start
    m = history[-1]
    train = json.loads((run_dir / "iter_01" / "train.done").read_text())
    step_s = train["seconds"] / train["steps"] if train["steps"] else float("nan")
    peak = torch.cuda.max_memory_allocated() / 1024**3 if cuda else float("nan")
    reuse_tps, plain_tps = prefix_reuse_passes(loop, cfg, cuda)
    device = torch.cuda.get_device_name(0) if cuda else "cpu (dry run)"
    row = (f"| {time.strftime('%Y-%m-%d %H:%M')} | {device} | {'gptj_tiny' if args.dry_run else 'GPT-J-6B-shaped'} "
           f"| {'gold' if args.gold else 'model'} | {m.get('perf/gen_tokens_per_s', 0):.1f} "
           f"| {reuse_tps:.1f} | {plain_tps:.1f} "
           f"| {m.get('perf/train_tokens_per_s', float('nan')):.1f} | {train['steps']} | {step_s:.2f} "
           f"| {peak:.1f} | {build_s:.0f} | {total:.0f} |")
    print(row)
    out = Path(args.out)
    if not out.exists():
        out.write_text("# GPU check: one STaR iteration (64 questions, LoRA, bf16)\n\n"
                       "Written by benchmarks/gpu_check.sh.\n\n"
                       "gen tok/s: the loop's generate stage (prefix reuse on, first pass on the GPU); "
                       "reuse / no reuse: the same prompts, prefix and seeds again on the untouched base "
                       "model after the loop, warm, generator.reuse_prefix true / false (timing only). "
                       "Peak GiB is the loop's, before those two passes.\n\n"
                       "| date | device | model | train data | gen tok/s | reuse tok/s | no-reuse tok/s "
                       "| train tok/s | steps | step s | peak GiB | build s | total s |\n"
                       "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    with out.open("a") as f:
        f.write(row + "\n")
    print(f"[gpu_check] run directory {run_dir}; appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
