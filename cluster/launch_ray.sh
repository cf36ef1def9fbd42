#!/bin/bash
# shellcheck disable=SC2317  # functions called from traps
# launch_ray.sh -- start a Ray cluster on a Slurm allocation and run a sweep on it.
#
#   PRMF_DATA=/shared/MERBench/dataset/mer2023 sbatch slurm/launch_ray.sh   # 1 node, 1 GPU, 4 h
#   sbatch --nodes=4 --gpus-per-node=8 --time=2-00:00:00 slurm/launch_ray.sh
#   PRMF_DRY_RUN=1 sbatch slurm/launch_ray.sh                    # print what it would do, start nothing
#   PRMF_DATA=synthetic bash slurm/launch_ray.sh --check -p gpu  # on the login node: no allocation
#   prmf-slurm --check -p gpu; prmf-slurm -p gpu                 # the same from an installed package
#
# A Ray head on the first node (this batch step), a Ray worker on each other node (srun), the
# sweep driver against that cluster; near the time limit (USR1) or on SIGTERM it interrupts the
# driver (SIGINT: Ray Tune saves its state), stops Ray by PID and, on USR1, requeues the job, whose
# next run resumes the sweep from PRMF_STORAGE. The decisions are Python (cluster/slurm.py and the
# modules it names); this file keeps what must be shell: the #SBATCH defaults (the same option on
# the sbatch command line wins), each node's environment, srun and the signal traps. Settings
# (PRMF_* variables, read at submit time): docs/CLUSTERS.md. Submit from the folder to run in.
#
# Site lines: most clusters want some of these; remove one '#' and fill in (or pass -p/-A/--qos).
##SBATCH --partition=YOUR_GPU_PARTITION
##SBATCH --account=YOUR_ACCOUNT
##SBATCH --qos=YOUR_QOS
##SBATCH --mem=64G
#
# Defaults a first job can get: one node, one GPU, a few CPUs, four hours.
#SBATCH --job-name=prmf-sweep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --gpus-per-node=1
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -uo pipefail
PRMF_LAUNCH_T0=$(date +%s)
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")
MODE=job
case "${1:-}" in
    --dry-run) PRMF_DRY_RUN=1; shift ;;
    --check) MODE=check; shift ;;     # the login-node check, even inside an allocation
esac
log() { printf '[launch_ray %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - PRMF_LAUNCH_T0 ))" "$*"; }
die() { log "ERROR: $*"; exit 1; }
[[ -n "${SLURM_JOB_ID:-}" || "${PRMF_DRY_RUN:-0}" == 1 || "$MODE" == check ]] || die "not inside a Slurm job; submit it: sbatch slurm/launch_ray.sh (check it here first, no allocation: bash slurm/launch_ray.sh --check [sbatch options])"
[[ -n "${SLURM_JOB_ID:-}" ]] || MODE=check   # PRMF_DRY_RUN=1 outside a job is the check

# ---------------------------------------------------------------- the environment, on every node
PRMF_WORKDIR=${PRMF_WORKDIR:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$PRMF_WORKDIR" || die "cannot cd to PRMF_WORKDIR=$PRMF_WORKDIR"
PRMF_WORKDIR=$(pwd -P)
if [[ -z "${PRMF_VENV+x}" ]]; then   # the folder's .venv, unless a virtualenv is active
    PRMF_VENV=""
    [[ -z "${VIRTUAL_ENV:-}" && -f "$PRMF_WORKDIR/.venv/bin/activate" ]] && PRMF_VENV=$PRMF_WORKDIR/.venv
fi
export PRMF_WORKDIR PRMF_VENV PRMF_SETUP=${PRMF_SETUP:-} PRMF_PYTHON=${PRMF_PYTHON:-python} PRMF_LAUNCH_T0 PRMF_DRY_RUN
_prmf_env() {   # also run by each worker node's srun
    if [[ -n "$PRMF_SETUP" ]]; then eval "$PRMF_SETUP" || return 1; fi
    # shellcheck disable=SC1091
    if [[ -n "$PRMF_VENV" ]]; then source "$PRMF_VENV/bin/activate" || return 1; fi
    export PYTHONPATH="$PRMF_WORKDIR${PYTHONPATH:+:$PYTHONPATH}"
}
_prmf_env || die "environment set-up failed (PRMF_SETUP / PRMF_VENV)"
command -v ray >/dev/null || die "no 'ray' on PATH after set-up (PRMF_VENV=$PRMF_VENV, PATH=$PATH)"
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}  # a stopped node does not wait 30 s
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    RAY_AUTH_TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n'); export RAY_AUTH_TOKEN   # one per job
fi
py() { "$PRMF_PYTHON" -m cluster.slurm "$@"; }
[[ "$MODE" == check ]] && { py check --script "$SELF" "$@"; exit; }
# The allocation, the head's address and port, the storage, the sweep command (or the reason not to start).
PLAN=$(py plan) || exit 1
eval "$PLAN"
[[ "${PRMF_DRY_RUN:-0}" == 1 ]] && exit 0

# ---------------------------------------------------------------- stopping, by PID only
RAY_PIDS=() DRIVER_PID="" STOPPING="" RAY_ENV_FILE=""
stop_all() {   # $1: seconds the driver gets after SIGINT; the processes are reaped here, by `wait`
    if [[ -n "$DRIVER_PID" ]]; then
        py stop-driver "$DRIVER_PID" "$1" "${RAY_PIDS[0]:-0}"; wait "$DRIVER_PID" 2>/dev/null; DRIVER_PID=""
    fi
    if (( ${#RAY_PIDS[@]} )); then py stop-ray "${RAY_PIDS[@]}"; wait "${RAY_PIDS[@]}" 2>/dev/null; RAY_PIDS=(); fi
}
on_signal() {   # $1: USR1 (the time-limit warning) or TERM/INT (scancel, preemption, scontrol requeue)
    if [[ -n "$STOPPING" ]]; then log "SIG$1 while stopping (after SIG$STOPPING): ignored"; return; fi
    STOPPING=$1
    local requeue=""   # Slurm itself requeues a preempted or `scontrol requeue`d job
    [[ "$1" == USR1 || ( "$1" == TERM && "${PRMF_REQUEUE_ON_TERM:-0}" == 1 ) ]] && requeue=1
    if [[ -n "$requeue" ]]; then   # first, one line on what happens next: Slurm may SIGKILL soon
        log "SIG$1 received: the sweep is interrupted and the job requeues itself; it resumes from $PRMF_STORAGE (finished trials are kept)"
    else
        log "SIG$1 received: the sweep is interrupted, finished trials are kept in $PRMF_STORAGE; a requeued or preempted job resumes it when it starts again, after scancel submit the same sbatch line again"
    fi
    local grace=${PRMF_STOP_TIMEOUT:-120}   # SIGTERM: Slurm sends SIGKILL KillWait seconds later
    [[ "$1" != USR1 ]] && (( grace > 20 )) && grace=20
    stop_all "$grace"
    [[ -z "$requeue" ]] && exit 143
    py requeue && exit 0
    exit 1
}
on_exit() {
    trap - TERM USR1 INT
    [[ -n "$STOPPING" ]] || STOPPING=EXIT
    stop_all 10
    [[ -n "$RAY_ENV_FILE" ]] && rm -f "$RAY_ENV_FILE"
}
for sig in USR1 TERM INT; do trap "on_signal $sig" "$sig"; done
trap on_exit EXIT

# ---------------------------------------------------------------- start Ray
log "Ray head $RAY_ADDRESS (auth: $RAY_AUTH_MODE), temp dirs $PRMF_RAY_TMP/ray-$SLURM_JOB_ID.<i>"
"$PRMF_PYTHON" -m cluster.slurm node head 0 &   # not through py(): its PID is the node's
RAY_PIDS+=("$!")
for (( i = 1; i < ${#NODES[@]}; i++ )); do
    # One task with all the job's CPUs on that node (a step would get 1, bound to it) and all its
    # GPUs (sbatch's GPU options, e.g. SLURM_GPUS_PER_NODE=0 beside --gres, would be read as the step's).
    env -u SLURM_GPUS_PER_NODE -u SLURM_GPUS -u SLURM_GPUS_PER_TASK -u SLURM_GPUS_PER_SOCKET \
    srun --nodes=1 --ntasks=1 --cpus-per-task="${NODE_CPUS[$i]:-${SLURM_CPUS_PER_TASK:-1}}" \
        --overlap -w "${NODES[$i]}" --kill-on-bad-exit=0 \
        bash -c "$(declare -f _prmf_env)"'
            _prmf_env && exec "$PRMF_PYTHON" -m cluster.slurm node worker "$1"' _ "$i" &
    RAY_PIDS+=("$!")   # the srun (stop_ray signals its step with scancel)
done
# shellcheck disable=SC2046  # one word per PID
"$PRMF_PYTHON" -m cluster.wait_for_nodes "$RAY_ADDRESS" "${#NODES[@]}" --timeout "${PRMF_RAY_START_TIMEOUT:-300}" \
    $(printf -- '--pid %s ' "${RAY_PIDS[@]}") || die "the Ray cluster did not come up"
log "Ray cluster is up at $RAY_ADDRESS"
RAY_ENV_FILE=$(py env-file) && log "watch it: source $RAY_ENV_FILE && ray status"

# ---------------------------------------------------------------- the sweep driver
log "sweep (restart ${SLURM_RESTART_COUNT:-0}): $SWEEP_CMD"
set -m   # its own process group, and SIGINT not ignored as in other background jobs
# Ray's C++ failure handler would answer Slurm's SIGTERM with a stack dump and an abort.
RAY_DISABLE_FAILURE_SIGNAL_HANDLER=${RAY_DISABLE_FAILURE_SIGNAL_HANDLER:-1} bash -c "$SWEEP_CMD" &
DRIVER_PID=$!
set +m
while :; do
    wait "$DRIVER_PID"; RC=$?
    kill -0 "$DRIVER_PID" 2>/dev/null || break   # else: woken by a signal the trap handled
done
DRIVER_PID=""
log "sweep driver exited with status $RC"
stop_all 0
log "done"
exit "$RC"
