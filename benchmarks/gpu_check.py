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
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run_dir = Path(tempfile.mkdtemp(prefix="star-gpu-check-"))
    start = time.perf_counter()
    loop = StarLoop(cfg, run_dir)
    t0 = time.perf_counter()
    loop.base()
    build_s = time.perf_counter() - t0
    history = loop.run()
    total = time.perf_counter() - start
    m = history[-1]
    train = json.loads((run_dir / "iter_01" / "train.done").read_text())
    step_s = train["seconds"] / train["steps"] if train["steps"] else float("nan")
    peak = torch.cuda.max_memory_allocated() / 1024**3 if cuda else float("nan")
    device = torch.cuda.get_device_name(0) if cuda else "cpu (dry run)"
    row = (f"| {time.strftime('%Y-%m-%d %H:%M')} | {device} | {'gptj_tiny' if args.dry_run else 'GPT-J-6B-shaped'} "
           f"| {'gold' if args.gold else 'model'} | {m.get('perf/gen_tokens_per_s', 0):.1f} "
           f"| {m.get('perf/train_tokens_per_s', float('nan')):.1f} | {train['steps']} | {step_s:.2f} "
           f"| {peak:.1f} | {build_s:.0f} | {total:.0f} |")
    print(row)
    out = Path(args.out)
    if not out.exists():
        out.write_text("# GPU check: one STaR iteration (64 questions, LoRA, bf16)\n\n"
                       "Written by benchmarks/gpu_check.sh.\n\n"
                       "| date | device | model | train data | gen tok/s | train tok/s | steps | step s "
                       "| peak GiB | build s | total s |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    with out.open("a") as f:
        f.write(row + "\n")
    print(f"[gpu_check] run directory {run_dir}; appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
