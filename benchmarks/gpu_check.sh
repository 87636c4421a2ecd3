#!/usr/bin/env bash
# GPU check: one short STaR iteration of a GPT-J-6B-shaped model (random weights built from the 6B
# dims, no download), bf16, through the real loop: generate for 64 questions, fine-tune 8 steps with
# LoRA, evaluate on 32 dev questions. Appends gen tokens/s, train tokens/s, step time and peak GPU
# memory to benchmarks/gpu_results.md. Budget: under 8 minutes on one H100 (random init of 6B
# params on the CPU is the first minute).
#
# NOT YET RUN ON A GPU: written in a session without one; only the CPU dry run below was checked.
#
#   bash benchmarks/gpu_check.sh                      # on a GPU machine; trains on gold rationales
#                                                     # (rationalization.gold_oracle: random weights solve nothing)
#   bash benchmarks/gpu_check.sh --model-rationales   # rationalize with the model instead (then nothing trains)
#   bash benchmarks/gpu_check.sh --dry-run    # CPU, gptj_tiny: checks the script, writes to a temp file
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
args=("$@")
if [[ " ${args[*]-} " == *" --dry-run "* ]]; then
  args+=(--out "$(mktemp -d)/gpu_results.md")
elif ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no GPU visible; use --dry-run on a CPU machine" >&2
  exit 2
fi
exec timeout 480 python3 benchmarks/gpu_check.py "${args[@]}"
