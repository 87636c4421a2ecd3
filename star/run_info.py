"""run_info.json: what produced a run (seed, library versions, the project's git commit)."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from star import artifacts as A

PACKAGES = ("torch", "transformers", "lightning", "hydra-core", "omegaconf", "datasets", "wandb", "tokenizers")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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
