"""benchmarks/gpu_check_vllm.py's comparison of two run directories (its GPU run waits for a GPU
machine with vLLM; its CPU dry run, `python benchmarks/gpu_check_vllm.py --dry-run`, was checked by hand)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from star import artifacts as A
from tests.conftest import REPO


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("gpu_check_vllm", REPO / "benchmarks" / "gpu_check_vllm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def fake_run(root: Path, completions: list[str], dev: float, test: float, train_s: float) -> Path:
    """Iterations 0 and 1 as the loop leaves them: metrics, stage markers with seconds, generations."""
    for it in (0, 1):
        A.iter_dir(root, it).mkdir(parents=True)
        A.write_json(A.metrics_of(root, it), {"eval/accuracy": dev * it, "test/accuracy": test * it})
        A.mark_done(root, it, "eval", {"seconds": 10.0})
        if it:
            A.write_jsonl(A.stage_file(root, it, "generations.jsonl"),
                          [{"id": i, "completion": c} for i, c in enumerate(completions)])
            A.mark_done(root, it, "train", {"seconds": train_s, "steps": 4})
    return root


def test_the_comparison_counts_identical_completions_and_reads_each_run(check, tmp_path):
    a = fake_run(tmp_path / "hf", ["1+1=2", "2+2=4", "3+3=6"], 0.5, 0.25, 30.0)
    b = fake_run(tmp_path / "vllm", ["1+1=2", "2+2=5", "3+3=6"], 0.5, 0.25, 40.0)
    assert check.same_completions(a, b) == (2, 3)
    assert check.same_completions(a, a) == (3, 3)
    assert check.accuracies(a) == "0.0/0.0 -> 50.0/25.0"
    assert check.stage_seconds(b) == {"eval": 20.0, "generate": 0.0, "rationalize": 0.0, "train": 40.0}


def test_runs_of_different_lengths_are_an_error_not_a_partial_count(check, tmp_path):
    a = fake_run(tmp_path / "hf", ["a", "b"], 0.5, 0.5, 1.0)
    b = fake_run(tmp_path / "vllm", ["a"], 0.5, 0.5, 1.0)
    with pytest.raises(ValueError):
        check.same_completions(a, b)
