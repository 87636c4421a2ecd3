#!/usr/bin/env bash
# Fill .gpu_deps/ (git-ignored) with the pure-Python packages the GPU check needs that the lent GPU
# image lacks (it has Python 3.12, torch 2.11, transformers 5.17 and lightning, nothing else pinned,
# and cannot download). benchmarks/gpu_check.sh puts .gpu_deps on PYTHONPATH ahead of site-packages.
#
#   bash benchmarks/gpu_bundle.sh        # on this machine (local package indexes), before the device call
#
# What and why:
#   hydra-core, omegaconf, antlr4-python3-runtime 4.9.3   gpu_check composes the config with Hydra
#       (antlr4 4.9.x is what omegaconf 2.3 pins; it is published only as an sdist, so its wheel is
#       built locally: pure Python, py3-none-any)
#   peft, accelerate, psutil    LoRA (model.lora.enabled=true): star/training/fit.py imports peft,
#       peft imports accelerate, accelerate imports psutil (psutil: the cp36-abi3 manylinux x86_64
#       wheel, the only non-pure one; abi3 loads on 3.12)
#   transformers 5.24.0 + huggingface_hub   star needs 5.24's `cache=` forward argument (pyproject.toml);
#       the image's 5.17 still calls it past_key_values, so generation would break there. Only the
#       model folders star's GPU path imports are kept (KEEP_MODELS below): 60 MB -> about 16 MB.
#       huggingface_hub comes along because transformers 5.24 checks for hub >= 1.31 at import and
#       5.17 only asked for >= 1.5.
# Not bundled (lazy imports, never reached with logger=none and task=arithmetic): wandb
# (star/tracking.py), datasets (star/tasks/hf_data.py), submitit (star/sharding.py,
# star/training/slurm.py), matplotlib (star/report.py), reasoning_gym.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.gpu_deps
PURE=("hydra-core==1.3.8" "omegaconf==2.3.1" "peft==0.21.2" "accelerate==1.15.0"
      "transformers==5.24.0" "huggingface_hub==1.33.0")
SDIST_PURE=("antlr4-python3-runtime==4.9.3")
ABI3=("psutil==7.2.2")
# gptj (the GPU check's model), llama (the other in-process model), auto, and what their modules and
# transformers' own top-level modules import at module level (a static scan of 5.24.0's sources).
KEEP_MODELS=(auto gptj llama bamba clip encoder_decoder falcon_mamba gemma gemma2 gemma3 glm glm4 glm4v
             gpt2 jamba llama4 mamba mamba2 mistral mixtral nanochat paligemma phi phi3 qwen2 qwen2_5_vl
             qwen2_moe qwen2_vl qwen3 qwen3_5 qwen3_moe qwen3_next qwen3_vl t5
             bloom)  # bloom: peft/utils/constants.py imports BloomPreTrainedModel

wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
pipq() { "$PY" -m pip --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
pipq download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d "$wheels" "${PURE[@]}"
pipq wheel --quiet --no-deps -w "$wheels" "${SDIST_PURE[@]}"
pipq download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$wheels" "${ABI3[@]}"

n_expected=$(( ${#PURE[@]} + ${#SDIST_PURE[@]} + ${#ABI3[@]} ))
n=$(ls "$wheels"/*.whl | wc -l)
[[ $n -eq $n_expected ]] || { echo "gpu_bundle: got $n wheels, expected $n_expected:" >&2; ls "$wheels" >&2; exit 1; }
for w in "$wheels"/*.whl; do
  case "$(basename "$w")" in
    psutil-*-cp36-abi3-*manylinux*x86_64*.whl) ;;  # the one binary: stable ABI, any CPython >= 3.6
    *-py3-none-any.whl) ;;
    *) echo "gpu_bundle: not pure Python: $(basename "$w")" >&2; exit 1 ;;
  esac
done

rm -rf "$DEST" && mkdir -p "$DEST"
for w in "$wheels"/*.whl; do
  "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$DEST"
done
# transformers: keep only the model folders the GPU path imports.
for d in "$DEST"/transformers/models/*/; do
  name=$(basename "$d")
  [[ " ${KEEP_MODELS[*]} " == *" $name "* ]] || rm -rf "$d"
done
find "$DEST" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$DEST" -name "*.pyc" -delete
ls "$wheels" | sed 's/^/  /'
echo "gpu_bundle: $DEST is $(du -sh "$DEST" | cut -f1) ($(du -sb "$DEST" | cut -f1) bytes)"
