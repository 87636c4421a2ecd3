"""vLLM on a GPU: the default run (SmolLM2-135M, 1-3 digit addition, two iterations) once with
generator=hf and once with generator=vllm, trainer=gpu, the same seed; compares what the two engines
wrote and appends a row of stage times and agreement to a markdown file.

NOT YET RUN ON A GPU. The device machine this project is lent has no vLLM, and a device call carries
64 MiB, far less than a CUDA vLLM wheel, so this waits for a GPU machine where vLLM can be installed:

    STAR_VLLM_PACKAGE=vllm bash scripts/setup.sh --vllm   # the CUDA build, into ~/.cache/star/vllm-venv
    python benchmarks/gpu_check_vllm.py                     # about 5 minutes on one GPU
    python benchmarks/gpu_check_vllm.py --dry-run           # CPU, 16 questions, 1 iteration: checks the script

On a GPU the two engines need not agree byte for byte (their bf16/fp32 kernels differ, so greedy
near-ties can fall the other way; on this project's CPU they are identical: benchmarks/vllm.md), so
the row gives each engine's dev and test accuracy per iteration and the share of identical
completions in each generation file, beside the stage seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from star import artifacts as A
from star.run_info import git_commit

REPO = Path(__file__).resolve().parent.parent
GPU = ["trainer=gpu", "model.device=auto"]
# The CPU check: a small run that still goes through both engines, a fit and an evaluation.
DRY = ["trainer=cpu", "n_iterations=1", "task.train_size=16", "task.dev_size=8", "task.test_size=8",
       "schedule.base_steps=4"]
STAGES = ("eval", "generate", "rationalize", "train")


def run_star(run_dir: Path, overrides: list[str]) -> float:
    cmd = [str(Path(sys.executable).parent / "star"), *overrides, "generator.progress=false", "logger=none",
           f"hydra.run.dir={run_dir}"]
    print("[gpu_check_vllm] " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    return time.perf_counter() - t0


def iterations(run_dir: Path) -> range:
    """The iterations the run finished (each has its metrics.json)."""
    n = 0
    while A.metrics_of(run_dir, n).exists():
        n += 1
    return range(n)


def accuracies(run_dir: Path) -> str:
    """dev/test accuracy per iteration, e.g. "3.9/3.9 -> 44.1/51.0"."""
    out = []
    for it in iterations(run_dir):
        m = A.read_json(A.metrics_of(run_dir, it))
        out.append(f"{100 * m['eval/accuracy']:.1f}/{100 * m['test/accuracy']:.1f}")
    return " -> ".join(out)


def stage_seconds(run_dir: Path) -> dict[str, float]:
    return {stage: sum(A.read_done(run_dir, it, stage).get("seconds", 0.0)
                       for it in iterations(run_dir) if A.is_done(run_dir, it, stage))
            for stage in STAGES}


def same_completions(a: Path, b: Path) -> tuple[int, int]:
    """(identical, compared) completions over every generations/rationalizations file both runs wrote."""
    same = total = 0
    for it in iterations(a):
        for name in ("generations.jsonl", "rationalizations.jsonl"):
            fa, fb = A.stage_file(a, it, name), A.stage_file(b, it, name)
            if not (fa.exists() and fb.exists()):
                continue
            for ra, rb in zip(A.read_jsonl(fa), A.read_jsonl(fb), strict=True):
                total += 1
                same += ra == rb
    return same, total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, a small run: checks the script, measures nothing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "gpu_results_vllm.md")
    ap.add_argument("--workdir", type=Path, default=None, help="where the two runs go (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.dry_run and args.out == ap.get_default("out"):
        args.out = Path(tempfile.mkdtemp()) / "gpu_results_vllm.md"
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no GPU visible; use --dry-run on a CPU machine")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="star-gpu-vllm-"))
    base = (DRY if args.dry_run else GPU) + [f"seed={args.seed}"]
    walls = {engine: run_star(workdir / engine, base + [f"generator={engine}"]) for engine in ("hf", "vllm")}
    hf, vllm = workdir / "hf", workdir / "vllm"
    same, total = same_completions(hf, vllm)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.dry_run else "cpu (dry run)"
    commit = (git_commit() or "unknown")[:7]
    rows = []
    for engine, run_dir in (("hf", hf), ("vllm", vllm)):
        s = stage_seconds(run_dir)
        rows.append(f"| {time.strftime('%Y-%m-%d %H:%M')} | {commit} | {device} | {args.seed} | {engine} "
                    f"| {accuracies(run_dir)} | " + " | ".join(f"{s[k]:.0f}" for k in STAGES)
                    + f" | {walls[engine]:.0f} | {same}/{total} |")
    print("\n".join(rows))
    if not args.out.exists():
        args.out.write_text(
            "# vLLM on a GPU: the default run with generator=hf and generator=vllm\n\n"
            "Written by `python benchmarks/gpu_check_vllm.py` (see its docstring). Accuracy: dev/test per "
            "iteration (0, 1, 2). Stage columns: seconds summed over iterations (eval includes each vLLM "
            "engine start). Same: completions identical between the two engines, over every generation "
            "and rationalization file.\n\n"
            "| date | commit | device | seed | generator | accuracy dev/test | eval s | generate s | rationalize s "
            "| train s | wall s | same |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    with args.out.open("a") as f:
        f.write("\n".join(rows) + "\n")
    print(f"[gpu_check_vllm] runs in {workdir}; appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
