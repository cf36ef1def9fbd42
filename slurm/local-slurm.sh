#!/bin/bash
# slurm/local-slurm.sh -- a Slurm on this workstation, to try slurm/launch_ray.sh before a cluster.
#
#   bash slurm/local-slurm.sh          # one node: this host's CPUs and NVIDIA GPUs; Ctrl-C stops it
#   export SLURM_CONF=/tmp/prmf-slurm-$USER/slurm.conf   # in another shell (it prints the line)
#   PRMF_DATA=synthetic sbatch --gpus-per-node=0 --cpus-per-task=2 slurm/launch_ray.sh
#
# Installs Slurm first when it is missing (slurm/install-test-slurm.sh: apt, root or sudo), then
# runs `python -m cluster.local_slurm` (options: --help), the code the tests start their Slurm
# with: no root, no system service, everything in --dir, daemons stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH=$PATH:/usr/sbin:/sbin
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
    bash slurm/install-test-slurm.sh
fi
PY=${PRMF_PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
exec "$PY" -m cluster.local_slurm "$@"
