#!/usr/bin/env bash
# One GPU, under 5 minutes: throughput of a single trial against packs at paper dims, then
# correctness (CUDA vs CPU metrics, a GPU checkpoint resumed on a CPU-only driver, four trials
# sharing the GPU at 0.25 each). Each step prints its result; the script exits non-zero if any
# check fails.
#
#   benchmarks/gpu_check.sh                 # on a machine with one GPU
#   benchmarks/gpu_check.sh --cpu-dry-run   # the same steps on the CPU at tiny sizes (or PRMF_GPU_CHECK_CPU=1)
#
# Then the same single trial and a pack in bf16-mixed and tf32 (on the CPU dry run: bf16-mixed), and
# whole sweeps of 9 grid points with --pack 1 against --pack auto, in fp32 and bf16-mixed
# (benchmarks/sweep_packing.py: wall seconds, what auto measured and chose).
#
# Throughput (benchmarks/grid_throughput.py): the paper's 27-point grid x 5 seeds = 135 trials at
# paper dims; a single trial (5 members: its folds), a pack of 27 trials (the grid, 135 members) and
# a pack of all 135 trials (675 members, ~31 GB of weights, gradients, AdamW moments and best copies); samples/s, GPU peak memory, % of the GPU's measured fp32
# GEMM peak and of its roofline. --cpu-dry-run runs every step with the tiny profile, packs of 1
# and 3 trials, one thread, and the CPU standing in for the GPU (about 2-3 min on 2 shared cores). PYTHON (default .venv/bin/python) runs everything;
# DATA_DIR (default a fresh temporary folder) holds the generated data set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" RAY_USAGE_STATS_ENABLED=0
DRY=${PRMF_GPU_CHECK_CPU:-0}
for arg in "$@"; do
    case $arg in
        --cpu-dry-run) DRY=1 ;;
        *) echo "error: unknown argument '$arg' (known: --cpu-dry-run)" >&2; exit 2 ;;
    esac
done
if [ "$DRY" = 1 ]; then
    DEVICE=cpu; PROFILE=tiny; CHECK_PROFILE=tiny; SEEDS=1; MODES=1,3; EPOCHS=2; SHARE_PROFILE=tiny
    PRECISIONS=bf16-mixed; PREC_MODES=1,3; NUM_GPUS=0
    export OMP_NUM_THREADS=1  # a shared CPU: two-thread ops crawl when the cores are oversubscribed
else
    DEVICE=cuda; PROFILE=paper; CHECK_PROFILE=small; SEEDS=5; MODES=1,27,135; EPOCHS=2; SHARE_PROFILE=paper
    PRECISIONS="bf16-mixed tf32"; PREC_MODES=1,27; NUM_GPUS=1
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "error: torch sees no CUDA device (on a CPU: benchmarks/gpu_check.sh --cpu-dry-run)" >&2; exit 2; }
fi
export PRMF_DATA_DIR=${DATA_DIR:-$(mktemp -d)}
start=$(date +%s)
fail=0
step() {  # step NAME COMMAND...: run, time, remember failure
    local t0=$(date +%s)
    echo "== $1"; shift
    "$@" || fail=1
    echo "   ($(( $(date +%s) - t0 )) s)"
}
step "data ($PROFILE, $CHECK_PROFILE)" "$PY" -c "
from prmf.data import synthetic
for p in {'$PROFILE', '$CHECK_PROFILE', '$SHARE_PROFILE'}: synthetic.ensure(p)"
step "throughput: single trial vs packs ($MODES trials of grid x $SEEDS seeds, $PROFILE)" \
    "$PY" benchmarks/grid_throughput.py --device "$DEVICE" --profile "$PROFILE" --seeds "$SEEDS" --modes "$MODES" \
    --epochs "$EPOCHS" --json "$PRMF_DATA_DIR/gpu_throughput.json"
for precision in $PRECISIONS; do
    step "throughput in $precision: single trial vs a pack ($PREC_MODES trials, $PROFILE)" \
        "$PY" benchmarks/grid_throughput.py --device "$DEVICE" --profile "$PROFILE" --seeds "$SEEDS" --modes "$PREC_MODES" \
        --epochs "$EPOCHS" --precision "$precision" --json "$PRMF_DATA_DIR/gpu_throughput_$precision.json"
done
step "packing: whole 9-point sweeps, --pack 1 vs auto, fp32 and bf16-mixed ($SHARE_PROFILE)" \
    "$PY" benchmarks/sweep_packing.py --profile "$SHARE_PROFILE" --epochs 2 --packs 1,auto --precisions fp32,bf16-mixed \
    --num-gpus "$NUM_GPUS"
step "correctness: $DEVICE vs cpu" "$PY" benchmarks/gpu_check.py compare --device "$DEVICE" --profile "$CHECK_PROFILE" --epochs 3
step "correctness: checkpoint on $DEVICE, resumed on a CPU-only driver" \
    "$PY" benchmarks/gpu_check.py checkpoint --device "$DEVICE" --profile "$CHECK_PROFILE" --epochs 3
step "sharing: 4 trials at 0.25 each ($SHARE_PROFILE)" \
    "$PY" benchmarks/gpu_check.py share --device "$DEVICE" --profile "$SHARE_PROFILE" --epochs 2 --trials 4 --fraction 0.25
echo "== total $(( $(date +%s) - start )) s; $([ $fail = 0 ] && echo 'all checks passed' || echo 'SOME CHECKS FAILED')"
exit $fail
