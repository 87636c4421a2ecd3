"""Shared fixtures: composing the real config tree, and running the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from star.cli import CONF_DIR
from star.config import register_configs

REPO = Path(__file__).resolve().parent.parent
# The hub is unreachable here: fail fast instead of retrying (subprocesses inherit it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def compose_config(overrides: list[str] | None = None):
    """The composed config exactly as `star OVERRIDES` would see it (Hydra's own key excluded)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides or [])


@pytest.fixture
def make_cfg():
    return compose_config


def run_star(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess (what a user types)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(["star", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def _slurm_required() -> bool:
    """CI=true or REQUIRE_SLURM=1: a cluster that cannot start fails the SLURM tests instead of skipping them."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes") or os.environ.get("REQUIRE_SLURM") == "1"


@pytest.fixture(scope="session")
def slurm_cluster():
    """A private SLURM cluster for this pytest session (tests/slurm_cluster.py): SLURM_CONF is exported
    while it runs, so `star -m hydra/launcher=slurm ...` subprocesses submit to it. Installs the
    Debian packages first when they are missing (root + apt). SLURM_CLUSTER_KEEP=1 keeps its root dir."""
    import shutil
    import tempfile

    from tests.slurm_cluster import SlurmCluster, SlurmUnavailable, ensure_packages

    # Under /tmp, not pytest's tmp dir: the munge user must be able to reach its socket (pytest's are 0700).
    root = Path(tempfile.mkdtemp(prefix="star-slurm-"))
    try:
        ensure_packages(log=lambda m: print(m, file=sys.stderr))
        cluster = SlurmCluster(root).start()
    except SlurmUnavailable as e:
        shutil.rmtree(root, ignore_errors=True)
        message = f"the local SLURM cluster could not start: {e}"
        if _slurm_required():
            pytest.fail(message + "\n(CI / REQUIRE_SLURM=1: failing instead of skipping)", pytrace=False)
        pytest.skip(message)
    saved = {k: os.environ.get(k) for k in cluster.env}
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        cluster.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if os.environ.get("SLURM_CLUSTER_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)
