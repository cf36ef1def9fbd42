#!/bin/bash
# shellcheck disable=SC2317  # functions called from traps
# slurm/launch_ray.sh -- start a Ray cluster on a Slurm allocation and run a sweep on it.
#
#   sbatch slurm/launch_ray.sh                                   # 1 node, 1 GPU: a first job
#   PRMF_DATA=/shared/MERBench/dataset/mer2023 sbatch slurm/launch_ray.sh
#   sbatch --nodes=4 --gpus-per-node=8 --time=2-00:00:00 slurm/launch_ray.sh
#   PRMF_SWEEP_ARGS="--experiments Exp1,Exp4 --seeds 3" sbatch slurm/launch_ray.sh
#   sbatch --gpus-per-node=0 --cpus-per-task=8 slurm/launch_ray.sh  # a CPU-only partition
#   PRMF_DRY_RUN=1 sbatch slurm/launch_ray.sh                    # print what it would do, start nothing
#
# Every #SBATCH line below is a default: the same option on the sbatch command line wins.
# Submit from the repository root (or set PRMF_WORKDIR); the job log is slurm-<name>-<jobid>.out
# there and is appended to, not replaced, when the job is requeued.
#
# What it does: a Ray head on the first node of the allocation (this batch step), one Ray worker
# on each other node (`srun --overlap`), waits until every node has joined, runs the sweep driver
# against that cluster (RAY_ADDRESS is exported, and the default command also gets --address),
# then stops the Ray processes it started, by PID.  Near the time limit (USR1, --signal below) it
# interrupts the driver with SIGINT (Ray Tune saves its state), stops Ray and requeues the job;
# the requeued job runs the same sweep command, which resumes from the store in PRMF_STORAGE
# (finished trials are skipped).  SIGTERM (scancel, preemption, `scontrol requeue`) stops
# everything the same way; Slurm itself requeues a preempted or `scontrol requeue`d job, and a
# cancelled one stays cancelled (set PRMF_REQUEUE_ON_TERM=1 to requeue on SIGTERM too, for
# clusters whose preemption cancels instead of requeueing).
#
# Environment (read at submit time: sbatch passes the submitting shell's environment on):
#   PRMF_WORKDIR       repository root to run in                    (default: $SLURM_SUBMIT_DIR)
#   PRMF_STORAGE       sweep storage, on a filesystem all nodes share (default: $PRMF_WORKDIR/runs)
#   PRMF_DATA          the MERBench dataset root the default sweep trains on (required unless
#                      PRMF_SWEEP_ARGS or PRMF_SWEEP_CMD names --data; 'synthetic' = built-in set)
#   PRMF_DRY_RUN       1 (or the script argument --dry-run): resolve the allocation, nodes,
#                      ports, storage and sweep command, print them and exit; Ray is not started
#   PRMF_SKIP_CUDA_CHECK  1: start even when GPUs are allocated but torch sees no CUDA
#   PRMF_SWEEP_ARGS    extra arguments for the default sweep command  (default: none)
#   PRMF_SWEEP_CMD     the whole driver command, replacing the default
#                      "$PRMF_PYTHON sweeps/ablation.py --num-gpus <GPUs of the allocation>
#                       --address <head> --storage $PRMF_STORAGE $PRMF_SWEEP_ARGS";
#                      it finds the cluster through RAY_ADDRESS, and PRMF_NUM_GPUS and
#                      PRMF_STORAGE are exported to it
#   PRMF_SETUP         shell code run first on every node, e.g. "module load cuda/12.4"
#   PRMF_VENV          virtualenv to activate on every node (default: $PRMF_WORKDIR/.venv if it
#                      exists and no virtualenv is active)
#   PRMF_PYTHON        python of that environment                   (default: python)
#   PRMF_NUM_GPUS      GPUs the sweep may use  (default: GPUs per node x nodes, from Slurm's
#                      SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE / CUDA_VISIBLE_DEVICES; 0 if none)
#   PRMF_GPUS_PER_NODE GPUs each Ray node advertises (default: the same detection, per node)
#   PRMF_HEAD_IP       IPv4 address of the head (default: detected, never a loopback address
#                      on a multi-node allocation)
#   PRMF_RAY_TMP       parent of the per-job, per-node Ray temp dir  (default: /tmp; the dir is
#                      PRMF_RAY_TMP/ray-<jobid>.<node index>, removed at the end)
#   PRMF_RAY_START_TIMEOUT  seconds to wait for all nodes to join    (default: 300)
#   PRMF_STOP_TIMEOUT  seconds the driver gets to stop after SIGINT  (default: 120)
#   PRMF_MAX_REQUEUES  stop requeueing itself after this many restarts (default: 20)
#   PRMF_REQUEUE_ON_TERM  1: requeue on SIGTERM as on USR1           (default: 0)
#   RAY_AUTH_MODE      default "token", with a random token per job in RAY_AUTH_TOKEN (kept in
#                      the environment of the job's processes only); "disabled" turns it off
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

T0=$(date +%s)
[[ "${1:-}" == --dry-run ]] && PRMF_DRY_RUN=1
log() { printf '[launch_ray %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - T0 ))" "$*"; }
die() { log "ERROR: $*"; exit 1; }

[[ -n "${SLURM_JOB_ID:-}" ]] || die "not inside a Slurm job; submit it: sbatch slurm/launch_ray.sh"

# ---------------------------------------------------------------- environment, on every node
PRMF_WORKDIR=${PRMF_WORKDIR:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$PRMF_WORKDIR" || die "cannot cd to PRMF_WORKDIR=$PRMF_WORKDIR"
PRMF_WORKDIR=$(pwd -P)
if [[ -z "${PRMF_VENV+x}" ]]; then
    PRMF_VENV=""
    if [[ -z "${VIRTUAL_ENV:-}" && -f "$PRMF_WORKDIR/.venv/bin/activate" ]]; then
        PRMF_VENV=$PRMF_WORKDIR/.venv
    fi
fi
PRMF_SETUP=${PRMF_SETUP:-}
PRMF_PYTHON=${PRMF_PYTHON:-python}
PRMF_RAY_TMP=${PRMF_RAY_TMP:-/tmp}
export PRMF_WORKDIR PRMF_VENV PRMF_SETUP PRMF_PYTHON PRMF_RAY_TMP

# The environment of the driver and of every Ray node (the worker nodes get it through srun,
# which passes this environment on, and run _prmf_env again there for modules/venv).
_prmf_env() {
    if [[ -n "$PRMF_SETUP" ]]; then eval "$PRMF_SETUP" || return 1; fi
    if [[ -n "$PRMF_VENV" ]]; then
        # shellcheck disable=SC1091
        source "$PRMF_VENV/bin/activate" || return 1
    fi
    export PYTHONPATH="$PRMF_WORKDIR${PYTHONPATH:+:$PYTHONPATH}"
}
_prmf_env || die "environment set-up failed (PRMF_SETUP / PRMF_VENV)"
command -v ray >/dev/null || die "no 'ray' on PATH after set-up (PRMF_VENV=$PRMF_VENV, PATH=$PATH)"

export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
# A SIGTERMed `ray start --block` otherwise waits up to 30 s for the node to drain.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    RAY_AUTH_TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
    export RAY_AUTH_TOKEN
fi

# ---------------------------------------------------------------- helpers (also shipped to workers)
# GPUs on this node as Slurm gave them to this step; 0 when none.
_gpus_on_node() {
    local v n total ids
    if [[ -n "${PRMF_GPUS_PER_NODE:-}" ]]; then echo "$PRMF_GPUS_PER_NODE"; return; fi
    if [[ "${SLURM_GPUS_ON_NODE:-}" =~ ^[0-9]+$ ]]; then echo "$SLURM_GPUS_ON_NODE"; return; fi
    if [[ -n "${SLURM_GPUS_PER_NODE:-}" ]]; then         # "4", "a100:4", "a100:2,v100:1"
        total=0
        for v in ${SLURM_GPUS_PER_NODE//,/ }; do
            n=${v##*:}
            [[ "$n" =~ ^[0-9]+$ ]] && total=$((total + n))
        done
        echo "$total"; return
    fi
    for v in "${CUDA_VISIBLE_DEVICES:-}" "${SLURM_JOB_GPUS:-}"; do
        if [[ -n "$v" && "$v" != NoDevFiles ]]; then
            IFS=, read -ra ids <<< "$v"; echo "${#ids[@]}"; return
        fi
    done
    echo 0
}

# GPUs allocated but a torch without CUDA (a venv built on a GPU-less login node) would train
# on the CPUs for the whole job: refuse.  $1: GPUs on this node.
_check_cuda() {
    (( ${1:-0} > 0 )) && [[ "${PRMF_SKIP_CUDA_CHECK:-0}" != 1 ]] || return 0
    "$PRMF_PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null && return 0
    echo "ERROR: $(hostname): Slurm gave this node $1 GPU(s) but torch.cuda.is_available() is False in $PRMF_PYTHON ($("$PRMF_PYTHON" -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -n1)); build the venv with a CUDA torch (make venv CUDA=12.4) or set PRMF_SKIP_CUDA_CHECK=1" >&2
    return 1
}

# N distinct free TCP ports, chosen by the kernel on this node.
_free_ports() { "$PRMF_PYTHON" -m cluster.free_ports "$1"; }

# Run one Ray node in the foreground until SIGTERM/SIGINT: role head|worker, node index.
# Head: needs HEAD_IP and GCS_PORT.  Worker: needs RAY_ADDRESS.  Retries a start that fails
# at once (a port taken between choosing it and binding it).
_ray_node() {
    local role=$1 idx=$2 tmp cpus gpus agent_port client_port attempt rc pid started
    tmp="$PRMF_RAY_TMP/ray-$SLURM_JOB_ID.$idx"
    cpus=${SLURM_CPUS_ON_NODE:-$(nproc)}
    gpus=$(_gpus_on_node)
    trap '_RAY_NODE_STOP=1; [[ -n "${pid:-}" ]] && kill -TERM "$pid" 2>/dev/null' TERM INT
    _check_cuda "$gpus" || return 1
    for attempt in 1 2 3; do
        rm -rf "$tmp"; mkdir -p "$tmp" || return 1
        read -r agent_port client_port < <(_free_ports 2)
        local args=(start --block --temp-dir "$tmp" --num-cpus "$cpus" --num-gpus "$gpus"
                    --dashboard-agent-listen-port "$agent_port"
                    --min-worker-port 0 --max-worker-port 0 --disable-usage-stats)
        if [[ "$role" == head ]]; then
            args+=(--head --node-ip-address "$HEAD_IP" --port "$GCS_PORT"
                   --include-dashboard=false --dashboard-host 127.0.0.1)
            # Ray Client (ray://) only where its extra is installed; else `ray start` refuses the flag.
            if "$PRMF_PYTHON" -c 'import grpc' 2>/dev/null; then
                args+=(--ray-client-server-port "$client_port")
            fi
        else
            args+=(--address "$RAY_ADDRESS")
        fi
        echo "[ray node $idx $(hostname)] ray ${args[*]}"
        started=$(date +%s)
        ray "${args[@]}" &
        pid=$!
        wait "$pid"; rc=$?
        while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done   # woken by a signal
        pid=""
        if [[ -n "${_RAY_NODE_STOP:-}" ]] || (( $(date +%s) - started > 60 )) || (( rc == 0 )); then
            break
        fi
        echo "[ray node $idx $(hostname)] ray start exited with $rc at once; retrying ($attempt)"
        [[ "$role" == head ]] && break   # the head's GCS port is fixed by the batch script
    done
    rm -rf "$tmp"
    return "$rc"
}

# ---------------------------------------------------------------- the allocation
mapfile -t NODES < <(scontrol show hostnames "${SLURM_JOB_NODELIST}")
NNODES=${#NODES[@]}
(( NNODES > 0 )) || die "empty SLURM_JOB_NODELIST"
# CPUs of the job on each node, in node order: SLURM_JOB_CPUS_PER_NODE is like "16(x2),8".
NODE_CPUS=()
for part in ${SLURM_JOB_CPUS_PER_NODE//,/ }; do
    if [[ "$part" =~ ^([0-9]+)\(x([0-9]+)\)$ ]]; then
        for (( k = 0; k < BASH_REMATCH[2]; k++ )); do NODE_CPUS+=("${BASH_REMATCH[1]}"); done
    elif [[ "$part" =~ ^[0-9]+$ ]]; then
        NODE_CPUS+=("$part")
    fi
done
RESTARTS=${SLURM_RESTART_COUNT:-0}
log "job $SLURM_JOB_ID (restart $RESTARTS) on $NNODES node(s): ${NODES[*]}; batch host $(hostname)"

_is_v4() { [[ "$1" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ && "$1" != 127.* && "$1" != 0.* ]]; }
_route_src() { ip -4 -o route get "$1" 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n1; }

# The head's IPv4 address, as the other nodes reach it: the source address this node uses to
# reach another node of the allocation; else this host's name, `hostname -I`, the default route.
find_head_ip() {
    local peer addr src all_local=""
    if [[ -n "${PRMF_HEAD_IP:-}" ]]; then echo "$PRMF_HEAD_IP"; return 0; fi
    if (( NNODES > 1 )); then
        all_local=1
        for peer in "${NODES[@]:1:3}"; do
            addr=$(scontrol show node "$peer" -o 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
            [[ "$addr" == 127.* ]] || all_local=""
            _is_v4 "$addr" || addr=$(getent ahostsv4 "${addr:-$peer}" 2>/dev/null | awk '{print $1; exit}')
            if _is_v4 "$addr" && command -v ip >/dev/null; then
                src=$(_route_src "$addr")
                if _is_v4 "$src"; then echo "$src"; return 0; fi
            fi
        done
    fi
    for addr in $(getent ahostsv4 "$(hostname)" 2>/dev/null | awk '{print $1}') \
                $(hostname -I 2>/dev/null); do
        if _is_v4 "$addr"; then echo "$addr"; return 0; fi
    done
    if command -v ip >/dev/null; then
        src=$(_route_src 1.1.1.1)      # no packet is sent
        if _is_v4 "$src"; then echo "$src"; return 0; fi
    fi
    # one node, or nodes that all live on this host (a test set-up): loopback will do
    if (( NNODES == 1 )) || [[ -n "$all_local" ]]; then echo 127.0.0.1; return 0; fi
    return 1
}

HEAD_IP=$(find_head_ip) || die "cannot find a non-loopback IPv4 address of $(hostname); set PRMF_HEAD_IP"
read -r GCS_PORT < <(_free_ports 1)
[[ -n "$GCS_PORT" ]] || die "cannot choose a port (is $PRMF_PYTHON working?)"
export HEAD_IP GCS_PORT
export RAY_ADDRESS="$HEAD_IP:$GCS_PORT"

if [[ "${PRMF_RAY_TMP}" != /* || ${#PRMF_RAY_TMP} -gt 40 ]]; then
    log "PRMF_RAY_TMP=$PRMF_RAY_TMP is not a short absolute path (Ray's socket paths are limited to 107 bytes); using /tmp"
    PRMF_RAY_TMP=/tmp
fi

# GPUs of the whole allocation, for the sweep's --num-gpus.
if [[ -z "${PRMF_NUM_GPUS:-}" ]]; then
    if [[ -n "${SLURM_GPUS:-}" && -z "${SLURM_GPUS_ON_NODE:-}${SLURM_GPUS_PER_NODE:-}" ]]; then
        PRMF_NUM_GPUS=${SLURM_GPUS##*:}                        # --gpus=N for the whole job
    else
        PRMF_NUM_GPUS=$(( $(_gpus_on_node) * NNODES ))
    fi
fi
[[ "$PRMF_NUM_GPUS" =~ ^[0-9]+$ ]] || PRMF_NUM_GPUS=0
PRMF_STORAGE=${PRMF_STORAGE:-$PRMF_WORKDIR/runs}
mkdir -p "$PRMF_STORAGE" || die "cannot create PRMF_STORAGE=$PRMF_STORAGE"
PRMF_STORAGE=$(cd "$PRMF_STORAGE" && pwd -P)
export PRMF_NUM_GPUS PRMF_STORAGE

if [[ -n "${PRMF_SWEEP_CMD:-}" ]]; then
    SWEEP_CMD=$PRMF_SWEEP_CMD
else
    SWEEP_CMD="$(printf '%q' "$PRMF_PYTHON") sweeps/ablation.py --num-gpus $PRMF_NUM_GPUS"
    SWEEP_CMD+=" --address $(printf '%q' "$RAY_ADDRESS") --storage $(printf '%q' "$PRMF_STORAGE")"
    [[ -n "${PRMF_DATA:-}" ]] && SWEEP_CMD+=" --data $(printf '%q' "$PRMF_DATA")"
    SWEEP_CMD+="${PRMF_SWEEP_ARGS:+ $PRMF_SWEEP_ARGS}"
fi
# No data named: the sweep would train the built-in generated set for hours of GPU time.
if [[ "$SWEEP_CMD" == *sweeps/* && "$SWEEP_CMD" != *--data* ]]; then
    die "no data given: set PRMF_DATA=/path/to/MERBench/dataset/mer2023 (a MERBench dataset root), or PRMF_DATA=synthetic for the built-in generated set"
fi

if [[ "${PRMF_DRY_RUN:-0}" == 1 ]]; then
    limit=$(scontrol show job "$SLURM_JOB_ID" -o 2>/dev/null | grep -o 'TimeLimit=[^ ]*' | cut -d= -f2)
    torch_info=$("$PRMF_PYTHON" -c 'import torch; print(torch.__version__, "with CUDA" if torch.cuda.is_available() else "without CUDA")' 2>&1 | tail -n1)
    log "dry run: job $SLURM_JOB_ID (${SLURM_JOB_NAME:-}), partition ${SLURM_JOB_PARTITION:-default}, account ${SLURM_JOB_ACCOUNT:-default}, time limit ${limit:-?}"
    log "dry run: $NNODES node(s) ${NODES[*]}; CPUs per node ${NODE_CPUS[*]:-?}; GPUs per node $(_gpus_on_node); sweep --num-gpus $PRMF_NUM_GPUS"
    log "dry run: Ray head $HEAD_IP:$GCS_PORT (other ports chosen free per node at start), auth $RAY_AUTH_MODE, temp dirs $PRMF_RAY_TMP/ray-$SLURM_JOB_ID.<i>"
    log "dry run: python $PRMF_PYTHON (torch $torch_info), venv ${PRMF_VENV:-none}, setup ${PRMF_SETUP:-none}, workdir $PRMF_WORKDIR"
    log "dry run: storage $PRMF_STORAGE (every node must see it at this path)"
    log "dry run: sweep command: $SWEEP_CMD"
    log "dry run: nothing started"
    exit 0
fi
_check_cuda "$(_gpus_on_node)" || die "GPUs allocated but torch has no CUDA (see the line above)"

# ---------------------------------------------------------------- stopping, by PID only
RAY_PIDS=()        # the head's _ray_node subshell and the workers' srun, all on this host
DRIVER_PID=""
STOPPING=""

stop_driver() {   # $1: seconds the driver gets after SIGINT
    local grace=$1 t
    [[ -n "$DRIVER_PID" ]] && kill -0 "$DRIVER_PID" 2>/dev/null || return 0
    log "sending SIGINT to the sweep driver (process group $DRIVER_PID); waiting up to ${grace}s"
    kill -INT -- "-$DRIVER_PID" 2>/dev/null || kill -INT "$DRIVER_PID" 2>/dev/null
    for (( t = 0; t < grace * 2; t++ )); do
        kill -0 "$DRIVER_PID" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$DRIVER_PID" 2>/dev/null; then
        log "driver still running after ${grace}s: SIGTERM, then SIGKILL"
        kill -TERM -- "-$DRIVER_PID" 2>/dev/null
        for (( t = 0; t < 20; t++ )); do kill -0 "$DRIVER_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$DRIVER_PID" 2>/dev/null
    fi
    wait "$DRIVER_PID" 2>/dev/null
    log "driver stopped"
}

stop_ray() {
    local pid t alive
    (( ${#RAY_PIDS[@]} )) || return 0
    log "stopping Ray: SIGTERM to the head (PID ${RAY_PIDS[0]}) and the worker steps (srun PIDs ${RAY_PIDS[*]:1})"
    kill -TERM "${RAY_PIDS[0]}" 2>/dev/null
    # SIGTERM to srun itself would SIGKILL its step at once; this signals the processes of every
    # step of the job except the batch step (where the head and the driver run).
    (( ${#RAY_PIDS[@]} > 1 )) && scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null
    for (( t = 0; t < 60; t++ )); do
        alive=0
        for pid in "${RAY_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.5
    done
    for pid in "${RAY_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "PID $pid still alive after 30s: killing it"
            if [[ "$pid" == "${RAY_PIDS[0]}" ]]; then kill -KILL "$pid"; else kill -TERM "$pid"; fi
        fi
        wait "$pid" 2>/dev/null
    done
    RAY_PIDS=()
    rm -rf "$PRMF_RAY_TMP/ray-$SLURM_JOB_ID.0"
    log "Ray stopped"
}

requeue_self() {
    local max=${PRMF_MAX_REQUEUES:-20}
    if (( RESTARTS >= max )); then
        log "not requeueing: already restarted $RESTARTS times (PRMF_MAX_REQUEUES=$max)"
        return 1
    fi
    log "requeueing job $SLURM_JOB_ID: its next run starts the same sweep command, which resumes from its storage"
    scontrol requeue "$SLURM_JOB_ID" || { log "scontrol requeue failed"; return 1; }
}

on_signal() {
    local sig=$1
    if [[ -n "$STOPPING" ]]; then log "SIG$sig while stopping (after SIG$STOPPING): ignored"; return; fi
    STOPPING=$sig
    log "SIG$sig received"
    if [[ "$sig" == USR1 ]]; then
        stop_driver "${PRMF_STOP_TIMEOUT:-120}"
    else                     # SIGTERM: Slurm sends SIGKILL KillWait seconds later
        stop_driver "$(( ${PRMF_STOP_TIMEOUT:-120} < 20 ? ${PRMF_STOP_TIMEOUT:-120} : 20 ))"
    fi
    stop_ray
    if [[ "$sig" == USR1 || ( "$sig" == TERM && "${PRMF_REQUEUE_ON_TERM:-0}" == 1 ) ]]; then
        requeue_self && exit 0
        exit 1
    fi
    exit 143
}

on_exit() {
    trap - TERM USR1 INT
    [[ -n "$STOPPING" ]] || STOPPING=EXIT
    stop_driver 10
    stop_ray
    [[ -n "${RAY_ENV_FILE:-}" ]] && rm -f "$RAY_ENV_FILE"
}

trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap on_exit EXIT

# ---------------------------------------------------------------- start Ray
log "Ray head $RAY_ADDRESS (auth: $RAY_AUTH_MODE), temp dirs $PRMF_RAY_TMP/ray-$SLURM_JOB_ID.<i>"
_ray_node head 0 > >(sed -u 's/^/[ray head] /') 2>&1 &
RAY_PIDS+=("$!")

NODE_FUNCS="$(declare -f _prmf_env _gpus_on_node _check_cuda _free_ports _ray_node)"
for (( i = 1; i < NNODES; i++ )); do
    # shellcheck disable=SC2016  # "$1" belongs to the remote shell
    # One task with all the job's CPUs on that node (a step would get 1 CPU, and be bound to it)
    # and all its GPUs: with no GPU option a step gets every GPU of the job on its node, whereas
    # the GPU options sbatch exports (e.g. SLURM_GPUS_PER_NODE=0 next to --gres=gpu:4) would
    # be read by srun as the step's own request.
    env -u SLURM_GPUS_PER_NODE -u SLURM_GPUS -u SLURM_GPUS_PER_TASK -u SLURM_GPUS_PER_SOCKET \
    srun --nodes=1 --ntasks=1 --cpus-per-task="${NODE_CPUS[$i]:-${SLURM_CPUS_PER_TASK:-1}}" \
        --overlap -w "${NODES[$i]}" --kill-on-bad-exit=0 \
        bash -c "$NODE_FUNCS"'
            _prmf_env || exit 1
            _ray_node worker "$1"' _ "$i" > >(sed -u "s/^/[ray worker $i] /") 2>&1 &
    RAY_PIDS+=("$!")                 # the srun (stop_ray signals its step with scancel)
done

WAIT_ARGS=("$RAY_ADDRESS" "$NNODES" --timeout "${PRMF_RAY_START_TIMEOUT:-300}")
for pid in "${RAY_PIDS[@]}"; do WAIT_ARGS+=(--pid "$pid"); done
"$PRMF_PYTHON" -m cluster.wait_for_nodes "${WAIT_ARGS[@]}" || die "the Ray cluster did not come up"
log "Ray cluster is up at $RAY_ADDRESS"

# For watching from a login node: `source <this file> && ray status`. Only the user can read it.
RAY_ENV_FILE="${PRMF_RAY_ENV_DIR:-${HOME:-/tmp}/.prmf}/ray-$SLURM_JOB_ID.env"
if ( umask 077 && mkdir -p "${RAY_ENV_FILE%/*}" && {
        printf 'export RAY_ADDRESS=%q RAY_AUTH_MODE=%q\n' "$RAY_ADDRESS" "$RAY_AUTH_MODE"
        [[ -n "${RAY_AUTH_TOKEN:-}" ]] && printf 'export RAY_AUTH_TOKEN=%q\n' "$RAY_AUTH_TOKEN"
        true; } > "$RAY_ENV_FILE" ); then
    log "watch it: source $RAY_ENV_FILE && ray status"
else
    RAY_ENV_FILE=""
fi

# ---------------------------------------------------------------- the sweep driver
log "sweep (restart $RESTARTS): $SWEEP_CMD"
set -m                          # own process group, and SIGINT not ignored as in other background jobs
bash -c "$SWEEP_CMD" &
DRIVER_PID=$!
set +m
while :; do
    wait "$DRIVER_PID"; RC=$?
    kill -0 "$DRIVER_PID" 2>/dev/null || break      # else: woken by a signal the trap handled
done
DRIVER_PID=""
log "sweep driver exited with status $RC"
stop_ray
log "done"
exit "$RC"
