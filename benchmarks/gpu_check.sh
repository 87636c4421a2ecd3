#!/usr/bin/env bash
# GPU check: one short STaR iteration of a GPT-J-6B-shaped model (random weights built from the 6B
# dims, no download), bf16, through the real loop: generate for 64 questions, fine-tune 8 steps with
# LoRA, evaluate on 32 dev questions. Appends gen tokens/s, train tokens/s, step time and peak GPU
# memory to benchmarks/gpu_results.md. Budget: under 8 minutes on one H100 (random init of 6B
# params on the CPU is the first minute).
#
# Also times generation with and without prefix reuse (generator.reuse_prefix true / false: the
# loop's prompts, prefix and seeds again on the base model, warm, timing only).
#
# NOT YET RUN ON A GPU: written in a session without one; only the CPU dry run below was checked,
# in a venv shaped like the GPU image (torch, transformers 5.17, lightning; no hydra, omegaconf,
# wandb, datasets, submitit, peft, accelerate) with .gpu_deps/ as the only other source.
#
# The GPU image (Python 3.12, torch 2.11, transformers 5.17, lightning) has no hydra, omegaconf,
# wandb, datasets or submitit and cannot download, so star is not pip-installed there: this script
# puts the repo root and .gpu_deps/ on PYTHONPATH. Fill .gpu_deps/ here first (about 20 MB, well
# under the 64 MiB a device call carries; it also brings transformers 5.24, whose `cache=` argument
# star needs, and peft/accelerate for LoRA):
#   bash benchmarks/gpu_bundle.sh
# then ONE device-tool call (15 minutes of device time in all, machine start included; the check
# itself is held under 8 minutes by the `timeout 480` below), carry [".gpu_deps"], timeout_s 540:
#   set -o pipefail; cp benchmarks/gpu_results.md "$OUT/" 2>/dev/null; bash benchmarks/gpu_check.sh --out "$OUT/gpu_results.md" 2>&1 | tee "$OUT/gpu_check.log"
# and copy $OUT/gpu_results.md (the old rows plus the new one) back to benchmarks/gpu_results.md.
# wandb and datasets are never imported: logger=none and task=arithmetic import neither (both are
# imported inside functions: star/tracking.py, star/tasks/hf_data.py), nor is submitit (star/sharding.py,
# star/training/slurm.py: only for generator.shards / trainer.slurm).
#
#   bash benchmarks/gpu_check.sh                      # on a GPU machine; trains on gold rationales
#                                                     # (rationalization.gold_oracle: random weights solve nothing)
#   bash benchmarks/gpu_check.sh --model-rationales   # rationalize with the model instead (then nothing trains)
#   bash benchmarks/gpu_check.sh --dry-run    # CPU, gptj_tiny: checks the script, writes to a temp file
# generator=vllm is not checked here (the image has no vLLM, and a CUDA vLLM wheel is far over what a
# device call carries): benchmarks/gpu_check_vllm.py is that check, for a GPU machine with vLLM installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# star from the tree, and the bundled packages ahead of site-packages (no `pip install -e .` there).
if [[ -d .gpu_deps ]]; then
  export PYTHONPATH="$PWD:$PWD/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! python3 -c "import hydra, omegaconf, peft, transformers.cache_utils" 2>/dev/null; then
  echo "gpu_check: hydra/omegaconf/peft missing: run 'bash benchmarks/gpu_bundle.sh' and carry .gpu_deps" >&2
  exit 2
fi
args=("$@")
if [[ " ${args[*]-} " == *" --dry-run "* ]]; then
  args+=(--out "$(mktemp -d)/gpu_results.md")
elif ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no GPU visible; use --dry-run on a CPU machine" >&2
  exit 2
fi
python3 -c "import sys, torch, transformers, lightning, hydra, peft; print(f'gpu_check: python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__} ({transformers.__file__}), lightning {lightning.__version__}, hydra {hydra.__version__}, peft {peft.__version__}')" >&2
exec timeout 480 python3 benchmarks/gpu_check.py "${args[@]}"
