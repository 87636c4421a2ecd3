"""Behaviour unchanged? Run the same `star` commands at two commits and compare the run directories
byte for byte.

    python benchmarks/compare_commits.py BEFORE                # BEFORE vs the working tree
    python benchmarks/compare_commits.py BEFORE AFTER          # two commits
    python benchmarks/compare_commits.py BEFORE --only tiny    # one of the runs (tiny, smollm2)

The runs (RUNS below): the README's smoke run on the tiny random model (two iterations), and one
real STaR iteration of the default SmolLM2-135M run. Each commit is exported with `git archive` to a
temp directory (the working tree: a snapshot of its files) and run there as `python -m star.cli`, so that
commit's package and conf/ are the ones that run, in this Python environment.

What may differ, and only that, because it records time or identity: `.hydra/`, `wandb/`,
`run_info.json`, `wandb_run_id.txt`, the run lock, the timing fields of stage markers (`seconds`,
`*_per_s`), and the `time/*` and `perf/*` keys of `metrics.json` and columns of `metrics.csv`.
Everything else (JSONL, eval.json, every checkpoint file, the rest of each marker) must be equal.
Exit code 0 when every run directory matches, 1 otherwise (the differing files are listed).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = {
    "tiny": ["model=tiny", "debug=fast", "n_iterations=2"],
    "smollm2": ["n_iterations=1"],
}
SKIPPED_NAMES = {".hydra", "wandb", "run_info.json", "wandb_run_id.txt", ".lock"}
TIMING_PREFIXES = ("time/", "perf/")


def export(rev: str, into: Path) -> Path:
    """The tree of commit `rev` in a fresh directory; for rev == "WORKTREE", a snapshot of the working
    tree's files (tracked and untracked, not ignored), so edits made while the runs go on change nothing."""
    if rev == "WORKTREE":
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, check=True).stdout.decode().split("\0")
        for name in filter(None, listed):
            if (REPO / name).is_file():
                (into / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, into / name)
        return into
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO, capture_output=True, check=True)
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_star(tree: Path, args: list[str], run_dir: Path) -> float:
    """`star ARGS` with the package and conf/ of `tree`; returns the wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "star.cli", *args, f"hydra.run.dir={run_dir}"], cwd=tree, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"star {' '.join(args)} failed in {tree} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def without_timing(path: Path) -> object:
    """A file's comparable content: bytes, or parsed JSON / CSV with the timing fields dropped."""
    if path.suffix == ".done":
        return {k: v for k, v in json.loads(path.read_text()).items() if k != "seconds" and not k.endswith("_per_s")}
    if path.name == "metrics.json":
        return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith(TIMING_PREFIXES)}
    if path.name == "metrics.csv":
        rows = list(csv.DictReader(path.read_text().splitlines()))
        return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES)} for r in rows]
    return path.read_bytes()


def files(run_dir: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if path.is_file() and not SKIPPED_NAMES.intersection(rel.parts):
            out[str(rel)] = path
    return out


def compare(a: Path, b: Path) -> list[str]:
    """Every difference between run directories a and b, as lines; [] when they match."""
    fa, fb = files(a), files(b)
    problems = [f"only in {a.name}: {name}" for name in sorted(set(fa) - set(fb))]
    problems += [f"only in {b.name}: {name}" for name in sorted(set(fb) - set(fa))]
    problems += [f"differs: {name}" for name in sorted(set(fa) & set(fb))
                 if without_timing(fa[name]) != without_timing(fb[name])]
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="a commit (e.g. HEAD~3)")
    parser.add_argument("after", nargs="?", default="WORKTREE", help="a commit (default: the working tree)")
    parser.add_argument("--only", choices=sorted(RUNS), action="append", help="run only these (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here (default: a temp dir)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="star-compare-"))
    trees = {side: export(rev, out / f"tree-{side}") for side, rev in (("before", args.before), ("after", args.after))}
    failed = False
    for name in args.only or sorted(RUNS):
        dirs = {side: out / f"{name}-{side}" for side in trees}
        seconds = {side: run_star(trees[side], RUNS[name], dirs[side]) for side in trees}
        problems = compare(dirs["before"], dirs["after"])
        n_files = len(files(dirs["after"]))
        verdict = "identical" if not problems else f"{len(problems)} difference(s)"
        print(f"{name}: star {' '.join(RUNS[name])}: {n_files} files compared, {verdict} "
              f"(before {seconds['before']:.0f} s, after {seconds['after']:.0f} s)")
        for line in problems:
            print(f"  {line}")
        failed = failed or bool(problems)
    print(f"run directories in {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
