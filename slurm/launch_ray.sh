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
#   PRMF_DATA=synthetic bash slurm/launch_ray.sh --check -p gpu  # on the login node: no allocation
#
# --check (or PRMF_DRY_RUN=1 outside a job), followed by the sbatch options you would submit with:
# prints what sbatch would request (these #SBATCH defaults overridden by the options), asks
# `sbatch --test-only` whether the partition can run it (one hint line when it cannot), checks
# the data, the storage and the torch build (a CUDA build when GPUs are requested), prints the
# sweep command, and exits 0 when a job would start.
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
#                      ports, storage and sweep command, print them and exit; Ray is not started;
#                      outside a job it is --check
#   PRMF_SKIP_CUDA_CHECK  1: start even when GPUs are allocated but torch sees no CUDA
#   PRMF_SWEEP_ARGS    extra arguments for the default sweep command  (default: none); the
#                      --data/--storage/--num-gpus they name replace the launcher's own
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
#   RAY_DISABLE_FAILURE_SIGNAL_HANDLER  default 1 for the driver: no C++ stack dump on SIGTERM
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
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")
LOGIN_CHECK=""
case "${1:-}" in
    --dry-run) PRMF_DRY_RUN=1; shift ;;
    --check) PRMF_DRY_RUN=1; LOGIN_CHECK=1; shift ;;   # the login-node check, even inside an allocation
esac
log() { printf '[launch_ray %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - T0 ))" "$*"; }
die() { log "ERROR: $*"; exit 1; }

if [[ -z "${SLURM_JOB_ID:-}" && "${PRMF_DRY_RUN:-0}" != 1 ]]; then
    die "not inside a Slurm job; submit it: sbatch slurm/launch_ray.sh (check it here first, no allocation: bash slurm/launch_ray.sh --check [sbatch options])"
fi

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

# The sweep command in SWEEP_CMD, for the Ray address $1: PRMF_SWEEP_CMD, or the ablation suite
# with the launcher's --num-gpus, --storage and --data (PRMF_DATA) unless PRMF_SWEEP_ARGS names
# them itself (a flag given twice reads as a mistake in the log). Refuses a sweep without data.
_args_name() { [[ " ${PRMF_SWEEP_ARGS:-} " =~ [[:space:]]$1[=[:space:]] ]]; }
build_sweep_cmd() {
    if [[ -n "${PRMF_SWEEP_CMD:-}" ]]; then
        SWEEP_CMD=$PRMF_SWEEP_CMD
    else
        if [[ -n "${PRMF_DATA:-}" && " ${PRMF_SWEEP_ARGS:-} " =~ [[:space:]]--data[=[:space:]]+([^[:space:]]+) \
              && "${BASH_REMATCH[1]}" != "$PRMF_DATA" ]]; then
            die "PRMF_DATA=$PRMF_DATA and PRMF_SWEEP_ARGS' --data ${BASH_REMATCH[1]} disagree: give the data once"
        fi
        SWEEP_CMD="$(printf '%q' "$PRMF_PYTHON") sweeps/ablation.py"
        _args_name --num-gpus || SWEEP_CMD+=" --num-gpus $PRMF_NUM_GPUS"
        SWEEP_CMD+=" --address $(printf '%q' "$1")"
        _args_name --storage || SWEEP_CMD+=" --storage $(printf '%q' "$PRMF_STORAGE")"
        [[ -n "${PRMF_DATA:-}" ]] && ! _args_name --data && SWEEP_CMD+=" --data $(printf '%q' "$PRMF_DATA")"
        SWEEP_CMD+="${PRMF_SWEEP_ARGS:+ $PRMF_SWEEP_ARGS}"
    fi
    # No data named: the sweep would train the built-in generated set for hours of GPU time.
    if [[ "$SWEEP_CMD" == *sweeps/* && "$SWEEP_CMD" != *--data* ]]; then
        die "no data given: set PRMF_DATA=/path/to/MERBench/dataset/mer2023 (a MERBench dataset root), or PRMF_DATA=synthetic for the built-in generated set"
    fi
}

# ---------------------------------------------------------------- the check on a login node
# `--check [sbatch options]` outside a job: what the job would get, without an allocation.
# Each failed check prints one line; exits 1 if any failed.
login_check() {
    local -A req=()
    local -a words
    local line k v i=0 problems=0 out rc part max most_gpus ngpu cpus data torch_v torch_cuda
    # The request as sbatch reads it: this script's #SBATCH lines, then the options given.
    while read -r line; do words+=("${line#\#SBATCH }"); done < <(grep '^#SBATCH ' "$SELF")
    words+=("$@")
    while (( i < ${#words[@]} )); do
        k=${words[i]}; i=$((i + 1)); v=""
        case "$k" in
            --*=*) v=${k#*=}; k=${k%%=*} ;;
            -[NncptGAqJ]?*) v=${k:2}; k=${k:0:2} ;;
            --nodes|--ntasks-per-node|--cpus-per-task|--gpus-per-node|--gres|--gpus|--time|--partition|--account|--qos|--mem|--job-name|-[NncptGAqJ])
                v=${words[i]:-}; i=$((i + 1)) ;;
        esac
        case "$k" in
            -N) k=--nodes ;; -c) k=--cpus-per-task ;; -p) k=--partition ;; -t) k=--time ;; -G) k=--gpus ;;
            -A) k=--account ;; -q) k=--qos ;; -J) k=--job-name ;; -n) k=--ntasks ;;
        esac
        req[${k#--}]=$v
    done
    # GPUs per node: --gpus-per-node=[type:]N, else --gres=gpu[:type]:N, else --gpus=N over the nodes
    ngpu=${req[gpus-per-node]:-}; ngpu=${ngpu##*:}
    if [[ -z "$ngpu" || "$ngpu" == 0 ]] && [[ "${req[gres]:-}" =~ (^|,)gpu(:[^:,]+)?:([0-9]+) ]]; then ngpu=${BASH_REMATCH[3]}; fi
    if [[ -z "$ngpu" && -n "${req[gpus]:-}" ]]; then ngpu=$(( (${req[gpus]##*:} + ${req[nodes]:-1} - 1) / ${req[nodes]:-1} )); fi
    [[ "$ngpu" =~ ^[0-9]+$ ]] || ngpu=0
    cpus=$(( ${req[cpus-per-task]:-1} * ${req[ntasks-per-node]:-1} ))
    part=${req[partition]:-$(timeout 30 sinfo -h -o '%P' 2>/dev/null | sed -n 's/\*$//p' | head -n1)}
    log "check: sbatch would request ${req[nodes]:-1} node(s), ${req[ntasks-per-node]:-1} task(s) x ${req[cpus-per-task]:-1} CPUs and $ngpu GPU(s) per node, time ${req[time]:-partition default}, partition ${part:-default}, account ${req[account]:-default}, memory ${req[mem]:-partition default}"

    # Can the partition run it? sbatch --test-only asks the controller; nothing is queued.
    if ! command -v sbatch >/dev/null; then
        log "check: no sbatch here; run this on a login node of the cluster"; problems=$((problems + 1))
    else
        out=$(timeout 30 sbatch --test-only "$@" "$SELF" 2>&1); rc=$?
        out=$(printf '%s' "$out" | tail -n1); out=${out#sbatch: }
        if (( rc == 0 )); then
            log "check: sbatch --test-only: $out"
        else
            problems=$((problems + 1))
            log "check: FAILED sbatch --test-only: $out"
            max=$(timeout 30 sinfo -h -N ${part:+-p "$part"} -o '%c' 2>/dev/null | sort -n | tail -n1)
            most_gpus=$(timeout 30 sinfo -h -N ${part:+-p "$part"} -o '%G' 2>/dev/null | grep -o 'gpu:\([^:(,]*:\)\?[0-9]\+' | sed 's/.*://' | sort -n | tail -n1)
            if [[ ! "$max" =~ ^[0-9]+$ ]]; then
                log "hint: Slurm's controller does not answer here or has no partition ${part:-<default>} (sinfo lists no node): run this on a login node of the cluster, with one of its partitions (-p)"
            elif (( cpus > max )); then
                log "hint: the job asks for $cpus CPUs per node but the nodes of partition $part have at most $max: add --cpus-per-task=$(( max / ${req[ntasks-per-node]:-1} )) (or choose a partition with -p)"
            elif (( ngpu > ${most_gpus:-0} )); then
                log "hint: the job asks for $ngpu GPU(s) per node but the nodes of partition $part have at most ${most_gpus:-0}: ask for at most ${most_gpus:-0} (--gpus-per-node=${most_gpus:-0}$( (( ${most_gpus:-0} > 0 )) || echo ": a CPU partition")) or choose a GPU partition with -p"
            else
                log "hint: see what partition $part offers (nodes, CPUs, GPUs, memory, time limit): sinfo -p $part -o '%P %D %c %G %m %l'; site lines: -p, -A, --qos"
            fi
        fi
    fi

    # The torch build: GPUs need a CUDA build, even though this node may have no GPU to test it on.
    read -r torch_v torch_cuda < <("$PRMF_PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda or "none")' 2>/dev/null)
    if [[ -z "${torch_v:-}" ]]; then
        log "check: FAILED: $PRMF_PYTHON cannot import torch (PRMF_VENV=${PRMF_VENV:-none}; build it: make venv CUDA=12.4)"; problems=$((problems + 1))
    elif (( ngpu > 0 )) && [[ "$torch_cuda" == none && "${PRMF_SKIP_CUDA_CHECK:-0}" != 1 ]]; then
        log "check: FAILED: torch $torch_v is a CPU build but the job asks for GPUs: make venv CUDA=12.4 (the nodes' CUDA; see nvidia-smi there)"; problems=$((problems + 1))
    else
        log "check: torch $torch_v (CUDA build: $torch_cuda) in $(command -v "$PRMF_PYTHON")"
    fi

    # The storage: writable here (or the folder it would be made in; the check creates nothing),
    # on a filesystem every node sees.
    PRMF_STORAGE=$(realpath -m "${PRMF_STORAGE:-$PRMF_WORKDIR/runs}")
    v=$PRMF_STORAGE
    while [[ ! -e "$v" ]]; do v=$(dirname "$v"); done
    if [[ -d "$v" && -w "$v" ]]; then
        log "check: storage $PRMF_STORAGE is writable (every node must see it at this path$([[ "$PRMF_STORAGE" == /tmp/* || "$PRMF_STORAGE" == /dev/shm/* ]] && echo '; /tmp is node-local on most clusters'))"
    else
        log "check: FAILED: storage PRMF_STORAGE=$PRMF_STORAGE cannot be created or written"; problems=$((problems + 1))
    fi

    # The sweep command and its data.
    PRMF_NUM_GPUS=${PRMF_NUM_GPUS:-$(( ngpu * ${req[nodes]:-1} ))}
    build_sweep_cmd "HEAD:PORT"
    log "check: sweep command: $SWEEP_CMD"
    data=""
    [[ " $SWEEP_CMD " =~ [[:space:]]--data[=[:space:]]+([^[:space:]]+) ]] && data=${BASH_REMATCH[1]}
    if [[ -z "$data" || "$data" == synthetic ]]; then
        log "check: data ${data:-?}: the built-in generated set (a pipeline check, not science)"
    elif [[ -f "$data/label-6way.npz" && -d "$data/features" ]]; then
        log "check: data $data: label-6way.npz and features/ found"
    else
        log "check: FAILED: data $data is not a MERBench dataset root (label-6way.npz and features/ not both there)"; problems=$((problems + 1))
    fi

    if (( problems )); then
        log "check: $problems problem(s) above; nothing was submitted"
        return 1
    fi
    log "check: OK; submit it: sbatch${*:+ $*} slurm/launch_ray.sh"
}

if [[ -n "$LOGIN_CHECK" || -z "${SLURM_JOB_ID:-}" ]]; then
    login_check "$@"
    exit
fi

# A Ray node's output, each line prefixed with $1; `ray start`'s banner (about 20 lines: next
# steps, "ray stop", ...) becomes one line. Its warnings and errors pass as they are.
_ray_log() {
    sed -u -e '/\t\(INFO\|SUCC\) \(scripts\|cli_output_helpers\|usage_lib\)\.py:[0-9]* -- /{' \
        -e '/ -- Ray runtime started\.$/!d' \
        -e 's/.*/Ray runtime started (the rest of the ray start banner is not shown; this job stops its Ray itself)/' -e '}' \
        -e "s/^/$1 /"
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

build_sweep_cmd "$RAY_ADDRESS"

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
    local grace=$1 t head_gone=0
    [[ -n "$DRIVER_PID" ]] && kill -0 "$DRIVER_PID" 2>/dev/null || return 0
    log "sending SIGINT to the sweep driver (process group $DRIVER_PID); waiting up to ${grace}s"
    kill -INT -- "-$DRIVER_PID" 2>/dev/null || kill -INT "$DRIVER_PID" 2>/dev/null
    for (( t = 0; t < grace * 2; t++ )); do
        kill -0 "$DRIVER_PID" 2>/dev/null || break
        # The Ray head stopped too (Slurm signals every process of a cancelled or requeued job):
        # the driver cannot save anything on a dead cluster, and waiting for it would run into
        # Slurm's SIGKILL. The results already stored are all a resume needs.
        if (( ${#RAY_PIDS[@]} )) && ! kill -0 "${RAY_PIDS[0]}" 2>/dev/null && (( ++head_gone >= 6 )); then
            break
        fi
        sleep 0.5
    done
    if (( head_gone >= 6 )) && kill -0 "$DRIVER_PID" 2>/dev/null; then
        log "the Ray head has stopped as well: stopping the driver now (SIGKILL)"
        kill -KILL -- "-$DRIVER_PID" 2>/dev/null
    elif kill -0 "$DRIVER_PID" 2>/dev/null; then
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
    # One line that says what happens next, first: Slurm may SIGKILL everything KillWait seconds on.
    if [[ "$sig" == USR1 || ( "$sig" == TERM && "${PRMF_REQUEUE_ON_TERM:-0}" == 1 ) ]]; then
        log "SIG$sig received: the sweep is interrupted and the job requeues itself; it resumes from $PRMF_STORAGE (finished trials are kept)"
    else
        log "SIG$sig received: the sweep is interrupted, finished trials are kept in $PRMF_STORAGE; a requeued or preempted job resumes it when it starts again, after scancel submit the same sbatch line again"
    fi
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
_ray_node head 0 > >(_ray_log "[ray head]") 2>&1 &
RAY_PIDS+=("$!")

NODE_FUNCS="$(declare -f _prmf_env _gpus_on_node _check_cuda _free_ports _ray_node _ray_log)"
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
            _ray_node worker "$1"' _ "$i" > >(_ray_log "[ray worker $i]") 2>&1 &
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
# Ray's C++ failure handler in the driver would answer Slurm's SIGTERM (scancel, requeue) with a
# stack dump and an abort; the driver is stopped by SIGINT, as planned, without it.
RAY_DISABLE_FAILURE_SIGNAL_HANDLER=${RAY_DISABLE_FAILURE_SIGNAL_HANDLER:-1} bash -c "$SWEEP_CMD" &
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
