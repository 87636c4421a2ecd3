#!/usr/bin/env bash
# A private one-machine SLURM cluster for tests and CI (tests/slurm_cluster.py does the work; root, Debian).
#   bash scripts/slurm_cluster.sh up [--root DIR]     # installs the apt packages if missing; prints `export SLURM_CONF=...`
#   bash scripts/slurm_cluster.sh status --root DIR   # sinfo + squeue
#   bash scripts/slurm_cluster.sh down --root DIR [--rm]
# Then, for example: eval "$(bash scripts/slurm_cluster.sh up --root /tmp/star-slurm)"
#                    star -m hydra/launcher=slurm hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=1 model=tiny debug=fast seed=0,1
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m tests.slurm_cluster "$@"
