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
