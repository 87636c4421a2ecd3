"""run_info.json: what produced a run (seed, library versions, the project's git commit)."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from star import artifacts as A

PACKAGES = ("torch", "transformers", "lightning", "hydra-core", "omegaconf", "datasets", "wandb", "tokenizers")


def _git(args: list[str], where: Path | None) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=where or Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit(where: Path | None = None) -> str | None:
    """The full commit of the checkout at `where` (default: this package's), None outside git."""
    return _git(["rev-parse", "HEAD"], where) or None


def commit_label(where: Path | None = None) -> str:
    """The short commit for a benchmark's header, plus " (with uncommitted changes)" when tracked files
    differ from it, so a figure measured on an edited tree says so."""
    dirty = _git(["status", "--porcelain", "--untracked-files=no"], where)
    return (git_commit(where) or "unknown")[:7] + (" (with uncommitted changes)" if dirty else "")


def write_run_info(run_dir: Path, cfg) -> None:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    A.write_json(Path(run_dir) / "run_info.json", {
        "seed": cfg.seed, "git_commit": git_commit(), "python": sys.version.split()[0],
        "platform": platform.platform(), "versions": versions,
    })
