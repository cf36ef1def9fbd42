"""One Ray node of a Slurm job, in the foreground until SIGTERM or SIGINT:

    python -m cluster.slurm node head 0        # in the batch step: needs HEAD_IP, GCS_PORT
    python -m cluster.slurm node worker INDEX  # under srun on another node: needs RAY_ADDRESS

`ray start --block` with this node's CPUs (SLURM_CPUS_ON_NODE) and GPUs (as Slurm gave them to
the step), a temp dir of its own (PRMF_RAY_TMP/ray-JOBID.INDEX, removed at the end) and free
ports; a start that fails at once (a port taken between choosing and binding it) is retried on a
worker. Its output goes to the job log, each line prefixed; `ray start`'s banner of next steps
becomes one line (this job stops its Ray itself, by PID).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from cluster.free_ports import free_ports
from cluster.slurm_env import gpus_on_node
from cluster.slurm_job import cuda_problem

BANNER = re.compile(r"\t(INFO|SUCC) (scripts|cli_output_helpers|usage_lib)\.py:\d+ -- ")
STARTED = "Ray runtime started (the rest of the ray start banner is not shown; this job stops its Ray itself)"


def banner_filter(line: str) -> str | None:
    """A line of `ray start`'s output as the job log shows it; None for the banner's lines."""
    if BANNER.search(line):
        return STARTED if line.rstrip().endswith(" -- Ray runtime started.") else None
    return line.rstrip("\n")


def ray_executable() -> str:
    """The `ray` of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else "ray"


def start_args(role: str, env, tmp: str, cpus: str, gpus: int, ports: list[int]) -> list[str]:
    """The `ray start --block` command line of one node."""
    args = [ray_executable(), "start", "--block", "--temp-dir", tmp, "--num-cpus", cpus, "--num-gpus", str(gpus),
            "--dashboard-agent-listen-port", str(ports[0]), "--min-worker-port", "0", "--max-worker-port", "0",
            "--disable-usage-stats"]
    if role == "head":
        args += ["--head", "--node-ip-address", env["HEAD_IP"], "--port", env["GCS_PORT"],
                 "--include-dashboard=false", "--dashboard-host", "127.0.0.1"]
        if importlib.util.find_spec("grpc"):  # Ray Client (ray://) only where its extra is installed
            args += ["--ray-client-server-port", str(ports[1])]
    else:
        args += ["--address", env["RAY_ADDRESS"]]
    return args


def relay(stream, prefix: str) -> None:
    for line in stream:
        shown = banner_filter(line)
        if shown is not None:
            print(f"{prefix} {shown}", flush=True)


def run_node(role: str, idx: int, env) -> int:
    """Run the node until it stops or this process is signalled; its exit status."""
    prefix = "[ray head]" if role == "head" else f"[ray worker {idx}]"
    tmp = Path(env.get("PRMF_RAY_TMP") or "/tmp", f"ray-{env['SLURM_JOB_ID']}.{idx}")
    gpus = gpus_on_node(env)
    problem = cuda_problem(env, gpus)
    if problem:
        print(problem, file=sys.stderr, flush=True)
        return 1
    state = {"stop": False, "proc": None}

    def stop(signum, frame):
        state["stop"] = True
        if state["proc"] is not None:
            state["proc"].terminate()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rc = 1
    for attempt in (1, 2, 3):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        args = start_args(role, env, str(tmp), env.get("SLURM_CPUS_ON_NODE") or str(os.cpu_count()), gpus,
                          free_ports(2))
        print(f"{prefix} [ray node {idx} {socket.gethostname()}] ray {' '.join(args[1:])}", flush=True)
        started = time.monotonic()
        state["proc"] = proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if state["stop"]:
            proc.terminate()
        reader = threading.Thread(target=relay, args=(proc.stdout, prefix), daemon=True)
        reader.start()
        rc = proc.wait()
        state["proc"] = None
        reader.join(timeout=2)  # Ray's own processes may hold the pipe open
        if state["stop"] or time.monotonic() - started > 60 or rc == 0 or role == "head":
            break  # the head's GCS port is fixed by the batch script: no retry
        print(f"{prefix} [ray node {idx} {socket.gethostname()}] ray start exited with {rc} at once; retrying "
              f"({attempt})", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return rc
