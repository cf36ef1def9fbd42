"""What Slurm says about a job, read by the Slurm launcher: the sbatch options of a request, the
CPUs and GPUs of an allocation, its node names and the Ray head's address.

Plain functions of an environment mapping and of Slurm's own commands (`scontrol`, `sinfo`),
which are called only through `run`, so tests answer them in place of a Slurm (as submitit does).
"""
from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time

T0 = time.time()


class LaunchError(Exception):
    """A problem the launcher reports in one line and exits 1 for."""


def log(message: str, stream=None) -> None:
    """One launcher line, as the job log shows them: `[launch_ray HH:MM:SS +Ns] message`.
    +N counts from PRMF_LAUNCH_T0 (the batch script's start) where the script set it."""
    t0 = float(os.environ.get("PRMF_LAUNCH_T0") or T0)
    print(f"[launch_ray {time.strftime('%H:%M:%S')} +{int(time.time() - t0)}s] {message}",
          file=stream or sys.stdout, flush=True)


def run(cmd: list[str], timeout: float = 30) -> tuple[int, str]:
    """A Slurm (or other) command's exit status and its stdout and stderr together; 127 where the
    program is missing, 124 where it ran past `timeout`."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return 127, f"{cmd[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{cmd[0]}: no answer in {timeout:g} s"
    return r.returncode, r.stdout + r.stderr


# ---------------------------------------------------------------- a request: sbatch options

SHORT = {"-N": "nodes", "-c": "cpus-per-task", "-p": "partition", "-t": "time", "-G": "gpus",
         "-A": "account", "-q": "qos", "-J": "job-name", "-n": "ntasks"}
WITH_VALUE = {"nodes", "ntasks", "ntasks-per-node", "cpus-per-task", "gpus-per-node", "gres", "gpus", "time",
              "partition", "account", "qos", "mem", "job-name", "output", "signal", "open-mode"}


def script_options(text: str) -> list[str]:
    """The options of a batch script's `#SBATCH` lines, in order (`##SBATCH` lines are off)."""
    return [line[len("#SBATCH "):].strip() for line in text.splitlines() if line.startswith("#SBATCH ")]


def parse_sbatch_options(words: list[str]) -> dict[str, str]:
    """sbatch options as sbatch reads them, later ones winning: `--name=V`, `--name V`, `-cV`,
    `-c V` -> {name: V} under the long name; a flag without a value -> {name: ""}."""
    req, i = {}, 0
    while i < len(words):
        k, v = words[i], ""
        i += 1
        if k.startswith("--") and "=" in k:
            k, v = k.split("=", 1)
        elif k[:2] in SHORT and len(k) > 2:
            k, v = k[:2], k[2:]
        elif SHORT.get(k, k[2:]) in WITH_VALUE and i < len(words):
            v, i = words[i], i + 1
        req[SHORT.get(k, k[2:] if k.startswith("--") else k)] = v
    return req


def requested_gpus_per_node(req: dict[str, str]) -> int:
    """GPUs per node a request asks for: `--gpus-per-node=[type:]N`, else `--gres=gpu[:type]:N`,
    else `--gpus=N` spread over the nodes; 0 when none (or not a number)."""
    n = req.get("gpus-per-node", "").rsplit(":", 1)[-1]
    gres = re.search(r"(?:^|,)gpu(?::[^:,]+)?:(\d+)", req.get("gres", ""))
    if n in ("", "0") and gres:
        n = gres.group(1)
    if n == "" and req.get("gpus"):
        total, nodes = req["gpus"].rsplit(":", 1)[-1], req.get("nodes", "1")
        if total.isdigit() and nodes.isdigit():
            n = str(math.ceil(int(total) / int(nodes)))
    return int(n) if n.isdigit() else 0


# ---------------------------------------------------------------- an allocation: Slurm's variables

def gpus_on_node(env) -> int:
    """GPUs on this node as Slurm gave them to this step: PRMF_GPUS_PER_NODE, else
    SLURM_GPUS_ON_NODE, else SLURM_GPUS_PER_NODE ("4", "a100:4", "a100:2,v100:1"), else the
    devices listed in CUDA_VISIBLE_DEVICES or SLURM_JOB_GPUS; 0 when none."""
    if env.get("PRMF_GPUS_PER_NODE"):
        return int(env["PRMF_GPUS_PER_NODE"]) if env["PRMF_GPUS_PER_NODE"].isdigit() else 0
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(env["SLURM_GPUS_ON_NODE"])
    if env.get("SLURM_GPUS_PER_NODE"):
        counts = [part.rsplit(":", 1)[-1] for part in env["SLURM_GPUS_PER_NODE"].split(",")]
        return sum(int(n) for n in counts if n.isdigit())
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS"):
        if env.get(name) and env[name] != "NoDevFiles":
            return len(env[name].split(","))
    return 0


def allocation_gpus(env, nodes: int) -> int:
    """GPUs of the whole allocation, the sweep's --num-gpus: PRMF_NUM_GPUS, else `--gpus=N` for
    the whole job (SLURM_GPUS alone), else GPUs per node x nodes."""
    if env.get("PRMF_NUM_GPUS"):
        n = env["PRMF_NUM_GPUS"]
    elif env.get("SLURM_GPUS") and not (env.get("SLURM_GPUS_ON_NODE") or env.get("SLURM_GPUS_PER_NODE")):
        n = env["SLURM_GPUS"].rsplit(":", 1)[-1]
    else:
        n = str(gpus_on_node(env) * nodes)
    return int(n) if n.isdigit() else 0


def node_cpus(spec: str) -> list[int]:
    """SLURM_JOB_CPUS_PER_NODE ("16(x2),8") as the job's CPUs on each node, in node order."""
    cpus = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m:
            cpus += [int(m.group(1))] * int(m.group(2) or 1)
    return cpus


def hostnames(nodelist: str) -> list[str]:
    """The node names of SLURM_JOB_NODELIST ("n[1-3],gpu7"), expanded by Slurm itself."""
    rc, out = run(["scontrol", "show", "hostnames", nodelist])
    if rc != 0:
        raise LaunchError(f"scontrol show hostnames {nodelist} failed: {out.strip()}")
    return out.split()


# ---------------------------------------------------------------- the head's address

def is_v4(addr: str | None) -> bool:
    """A usable IPv4 address: dotted quad, neither loopback (127/8) nor 0/8."""
    return bool(addr and re.fullmatch(r"\d+\.\d+\.\d+\.\d+", addr) and not addr.startswith(("127.", "0.")))


def resolve_v4(name: str) -> list[str]:
    """IPv4 addresses of a host name (what `getent ahostsv4` prints), [] where it has none."""
    try:
        return list(dict.fromkeys(a[4][0] for a in socket.getaddrinfo(name, None, socket.AF_INET)))
    except OSError:
        return []


def route_source(addr: str) -> str | None:
    """The source address this host uses to reach `addr` (`ip route get`; no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((addr, 9))
            return s.getsockname()[0]
    except OSError:
        return None


def node_address(node: str) -> str:
    """The address Slurm knows a node by (`scontrol show node`'s NodeAddr); '' where it says none."""
    rc, out = run(["scontrol", "show", "node", node, "-o"])
    m = re.search(r"NodeAddr=(\S+)", out) if rc == 0 else None
    return m.group(1) if m else ""


def find_head_ip(nodes: list[str], env) -> str | None:
    """The head's IPv4 address as the other nodes reach it: PRMF_HEAD_IP, else the source address
    this node uses to reach another node of the allocation, else this host's name, `hostname -I`
    or the default route; loopback only for one node or nodes that all live on this host (a test
    set-up). None where no address will do."""
    if env.get("PRMF_HEAD_IP"):
        return env["PRMF_HEAD_IP"]
    all_local = len(nodes) > 1
    for peer in nodes[1:4]:
        addr = node_address(peer)
        all_local = all_local and addr.startswith("127.")
        if not is_v4(addr):
            addr = next(iter(resolve_v4(addr or peer)), "")
        src = route_source(addr) if is_v4(addr) else None
        if is_v4(src):
            return src
    rc, out = run(["hostname", "-I"])
    for addr in resolve_v4(socket.gethostname()) + (out.split() if rc == 0 else []):
        if is_v4(addr):
            return addr
    src = route_source("1.1.1.1")
    if is_v4(src):
        return src
    return "127.0.0.1" if len(nodes) == 1 or all_local else None


def torch_probe(python: str) -> dict | None:
    """What `python` has of torch: {version, cuda (the build's CUDA version or 'none'), available
    (torch.cuda.is_available())}; None where it cannot import torch. One child process: `python` is
    the interpreter of the nodes' environment, not necessarily this one."""
    code = ("import torch; print(torch.__version__, torch.version.cuda or 'none', "
            "int(torch.cuda.is_available()))")
    rc, out = run([python, "-c", code], timeout=120)
    found = re.findall(r"^(\S+) (\S+) ([01])$", out, re.M) if rc == 0 else []
    if not found:
        return None
    version, cuda, available = found[-1]
    return {"version": version, "cuda": cuda, "available": available == "1"}
