#!/bin/bash
# cluster/start_local_cluster.sh -- a Ray head and N worker nodes on one workstation.
#
#   cluster/start_local_cluster.sh                       # head + 1 worker, CPUs split between them
#   cluster/start_local_cluster.sh --workers 3 --num-gpus 1   # 4 nodes, one GPU each (GPU i -> node i)
#   # in another shell, while it runs:
#   RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/tmp/prmf-ray-$USER/address.token \
#     python sweeps/ablation.py --address "$(cat /tmp/prmf-ray-$USER/address)" --num-gpus 4
#
# Each node is its own `ray start --block` process, a child of this script; the script waits
# until every node has joined (polling), prints and writes the head's address, and then stays
# in the foreground. Ctrl-C / SIGTERM stops the nodes it started, by PID, and removes their temp
# dirs (it never runs `ray stop`, which would stop every Ray on the machine).
#
# Why several nodes on one machine: to split a multi-GPU workstation into one Ray node per GPU
# (or per group of GPUs) with its own CPU share, and to try multi-node behaviour (placement,
# node failure, a shared --storage) before using a real cluster.
#
# Options:
#   --workers N        worker nodes besides the head                       (default 1)
#   --num-cpus C       CPUs each node advertises           (default: this machine's CPUs / nodes)
#   --num-gpus G       GPUs per node; node i gets CUDA_VISIBLE_DEVICES=[i*G, (i+1)*G) (default 0)
#   --port P           the head's GCS port                                  (default: a free one)
#   --host IP          address the nodes use                                    (default: 127.0.0.1)
#                      Ray 2.x swaps 127.0.0.1 for this host's network address and its servers listen
#                      on all interfaces (a multi-node Ray cannot be held to loopback): the token
#                      keeps others out (docs/SECURITY.md)
#   --tmp DIR          parent of the nodes' temp dirs, keep it short (default /tmp/prmf-ray-$USER)
#   --address-file F   where to write the head's address     (default: <tmp>/address); the auth
#                      token goes to F.token (mode 0600), both removed when the cluster stops
#   --timeout S        seconds to wait for all nodes                                   (default 180)
# Environment: RAY_AUTH_MODE (default "token": a fresh random token per cluster, in F.token;
# RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH given: that one; "disabled": no auth, with a warning).
set -uo pipefail

WORKERS=1 CPUS="" GPUS=0 PORT="" HOST=127.0.0.1 TMPBASE="/tmp/prmf-ray-${USER:-$(id -un)}" ADDR_FILE="" TIMEOUT=180
while (( $# )); do
    case "$1" in
        --workers) WORKERS=$2; shift 2 ;;
        --num-cpus) CPUS=$2; shift 2 ;;
        --num-gpus) GPUS=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --host) HOST=$2; shift 2 ;;
        --tmp) TMPBASE=$2; shift 2 ;;
        --address-file) ADDR_FILE=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[local-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PY=${PRMF_PYTHON:-python}
command -v ray >/dev/null || die "no 'ray' on PATH (activate the project's virtualenv)"
[[ "$WORKERS" =~ ^[0-9]+$ && "$GPUS" =~ ^[0-9]+$ ]] || die "--workers and --num-gpus take whole numbers"
NODES=$(( WORKERS + 1 ))
if [[ -z "$CPUS" ]]; then CPUS=$(( $(nproc) / NODES )); (( CPUS > 0 )) || CPUS=1; fi
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

free_ports() { "$PY" -m cluster.free_ports "$1"; }

mkdir -p "$TMPBASE" || die "cannot create $TMPBASE"
RUN_DIR=$(mktemp -d "$TMPBASE/c.XXXX")            # short: Ray's socket paths must stay < 107 bytes
(( ${#RUN_DIR} <= 40 )) || log "warning: temp dir $RUN_DIR is long; Ray may refuse its socket paths (use --tmp)"
[[ -n "$PORT" ]] || read -r PORT < <(free_ports 1)
ADDRESS="$HOST:$PORT"
ADDR_FILE=${ADDR_FILE:-$TMPBASE/address}
TOKEN_FILE="$ADDR_FILE.token"
rm -f "$ADDR_FILE"
if [[ "$RAY_AUTH_MODE" == token ]]; then
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        TOKEN=$RAY_AUTH_TOKEN
    elif [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
        TOKEN=$(<"$RAY_AUTH_TOKEN_PATH") || die "cannot read RAY_AUTH_TOKEN_PATH $RAY_AUTH_TOKEN_PATH"
    else
        TOKEN=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')   # 256 bits, as Ray's own generator
    fi
    ( umask 077 && printf '%s' "$TOKEN" > "$TOKEN_FILE.tmp" ) && mv "$TOKEN_FILE.tmp" "$TOKEN_FILE" \
        || die "cannot write $TOKEN_FILE"
    unset RAY_AUTH_TOKEN TOKEN
    export RAY_AUTH_TOKEN_PATH=$TOKEN_FILE
else
    log "warning: RAY_AUTH_MODE=$RAY_AUTH_MODE: anyone who can reach $HOST can run code on this cluster"
fi

PIDS=()
STOPPING=""
stop_all() {
    local pid t alive
    [[ -n "$STOPPING" ]] && return
    STOPPING=1
    rm -f "$ADDR_FILE" "$TOKEN_FILE"
    (( ${#PIDS[@]} )) || return 0
    log "stopping Ray nodes (PIDs ${PIDS[*]})"
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for (( t = 0; t < 60; t++ )); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.5
    done
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && { log "PID $pid still alive after 30s: SIGKILL"; kill -KILL "$pid"; }
        wait "$pid" 2>/dev/null
    done
    rm -rf "$RUN_DIR"
    log "stopped"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

# node index, then `ray start` arguments for it
start_node() {
    local idx=$1 agent node_env=(env)
    shift
    read -r agent < <(free_ports 1)
    if (( GPUS > 0 )); then
        node_env+=("CUDA_VISIBLE_DEVICES=$(seq -s, $(( idx * GPUS )) $(( (idx + 1) * GPUS - 1 )))")
    fi
    mkdir -p "$RUN_DIR/$idx"
    "${node_env[@]}" ray start --block --temp-dir "$RUN_DIR/$idx" --num-cpus "$CPUS" --num-gpus "$GPUS" \
        --node-ip-address "$HOST" --dashboard-agent-listen-port "$agent" \
        --min-worker-port 0 --max-worker-port 0 --disable-usage-stats "$@" \
        > >(sed -u "s/^/[node $idx] /") 2>&1 &
    PIDS+=("$!")
}

T0=$(date +%s)
log "head at $ADDRESS, $WORKERS worker(s), $CPUS CPUs and $GPUS GPUs per node, temp dir $RUN_DIR"
start_node 0 --head --port "$PORT" --include-dashboard=false --dashboard-host 127.0.0.1
for (( i = 1; i <= WORKERS; i++ )); do
    start_node "$i" --address "$ADDRESS"
done

WAIT_ARGS=("$ADDRESS" "$NODES" --timeout "$TIMEOUT")
for pid in "${PIDS[@]}"; do WAIT_ARGS+=(--pid "$pid"); done
"$PY" -m cluster.wait_for_nodes "${WAIT_ARGS[@]}" || die "the cluster did not come up"
echo "$ADDRESS" > "$ADDR_FILE.tmp" && mv "$ADDR_FILE.tmp" "$ADDR_FILE"
log "up in $(( $(date +%s) - T0 ))s. RAY_ADDRESS=$ADDRESS (written to $ADDR_FILE); Ctrl-C stops it"
if [[ "$RAY_AUTH_MODE" == token ]]; then
    log "  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$TOKEN_FILE python sweeps/ablation.py --address $ADDRESS ..."
else
    log "  python sweeps/ablation.py --address $ADDRESS ..."
fi

# Stay up until a signal, or until a node dies.
while :; do
    for pid in "${PIDS[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "Ray node process $pid exited; stopping the cluster"
            exit 1
        fi
    done
    sleep 2 &
    wait $!
done
