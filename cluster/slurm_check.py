"""The Slurm launcher's check on a login node (`launch_ray.sh --check [sbatch options]`,
`prmf-slurm --check ...`): what the job would get, without an allocation.

It prints what sbatch would request (the script's #SBATCH defaults with the given options on
top), asks `sbatch --test-only` whether the partition can run it (one hint line when it cannot),
checks the torch build (a CUDA build when GPUs are requested), the storage and the data, prints
the sweep command, and returns 0 when a job would start. Each failed check is one line.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from cluster.slurm_env import log, parse_sbatch_options, requested_gpus_per_node, run, script_options, torch_probe
from cluster.slurm_job import sweep_command


def _int(value: str, default: int = 1) -> int:
    return int(value) if value and value.isdigit() else default


def default_partition() -> str:
    """The cluster's default partition (sinfo marks it with '*'); '' where sinfo does not answer."""
    rc, out = run(["sinfo", "-h", "-o", "%P"])
    names = [p[:-1] for p in out.split() if p.endswith("*")] if rc == 0 else []
    return names[0] if names else ""


def fit_hint(part: str, cpus: int, tasks: int, gpus: int) -> str:
    """One line on why a partition cannot run a request, from what `sinfo` says of its nodes."""
    where = ["-p", part] if part else []
    rc, out = run(["sinfo", "-h", "-N", *where, "-o", "%c"])
    cores = [int(c) for c in out.split() if c.isdigit()] if rc == 0 else []
    rc, out = run(["sinfo", "-h", "-N", *where, "-o", "%G"])
    most_gpus = max((int(n) for n in re.findall(r"gpu:(?:[^:(,]*:)?(\d+)", out)), default=0) if rc == 0 else 0
    if not cores:
        return (f"hint: Slurm's controller does not answer here or has no partition {part or '<default>'} (sinfo lists "
                "no node): run this on a login node of the cluster, with one of its partitions (-p)")
    if cpus > max(cores):
        return (f"hint: the job asks for {cpus} CPUs per node but the nodes of partition {part} have at most "
                f"{max(cores)}: add --cpus-per-task={max(cores) // tasks} (or choose a partition with -p)")
    if gpus > most_gpus:
        cpu_only = "" if most_gpus > 0 else ": a CPU partition"
        return (f"hint: the job asks for {gpus} GPU(s) per node but the nodes of partition {part} have at most "
                f"{most_gpus}: ask for at most {most_gpus} (--gpus-per-node={most_gpus}{cpu_only}) or choose a GPU "
                "partition with -p")
    return (f"hint: see what partition {part} offers (nodes, CPUs, GPUs, memory, time limit): "
            f"sinfo -p {part} -o '%P %D %c %G %m %l'; site lines: -p, -A, --qos")


def check_sbatch(options: list[str], script: str, part: str, cpus: int, tasks: int, gpus: int) -> int:
    """Can the partition run it? `sbatch --test-only` asks the controller; nothing is queued."""
    rc, out = run(["sbatch", "--test-only", *options, script])
    if rc == 127:
        log("check: no sbatch here; run this on a login node of the cluster")
        return 1
    last = out.strip().splitlines()[-1] if out.strip() else ""
    last = last[len("sbatch: "):] if last.startswith("sbatch: ") else last
    if rc == 0:
        log(f"check: sbatch --test-only: {last}")
        return 0
    log(f"check: FAILED sbatch --test-only: {last}")
    log(fit_hint(part, cpus, tasks, gpus))
    return 1


def check_torch(env, gpus: int) -> int:
    """The torch build: GPUs need a CUDA build, although the login node may have no GPU to try it on."""
    python = env.get("PRMF_PYTHON") or "python"
    probe = torch_probe(python)
    if probe is None:
        log(f"check: FAILED: {python} cannot import torch (PRMF_VENV={env.get('PRMF_VENV') or 'none'}; "
            "build it: make venv CUDA=12.4)")
        return 1
    if gpus > 0 and probe["cuda"] == "none" and env.get("PRMF_SKIP_CUDA_CHECK") != "1":
        log(f"check: FAILED: torch {probe['version']} is a CPU build but the job asks for GPUs: make venv "
            "CUDA=12.4 (the nodes' CUDA; see nvidia-smi there)")
        return 1
    log(f"check: torch {probe['version']} (CUDA build: {probe['cuda']}) in {shutil.which(python) or python}")
    return 0


def check_storage(storage: str) -> int:
    """Writable here (or the folder it would be made in: the check creates nothing), and a
    reminder that every node must see it."""
    existing = storage
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if os.path.isdir(existing) and os.access(existing, os.W_OK):
        local = "; /tmp is node-local on most clusters" if storage.startswith(("/tmp/", "/dev/shm/")) else ""
        log(f"check: storage {storage} is writable (every node must see it at this path{local})")
        return 0
    log(f"check: FAILED: storage PRMF_STORAGE={storage} cannot be created or written")
    return 1


def check_data(cmd: str) -> int:
    """The data the sweep command names: the built-in set, or a MERBench dataset root."""
    m = re.search(r"\s--data[=\s]+(\S+)", f" {cmd} ")
    data = m.group(1) if m else ""
    if not data or data == "synthetic":
        log(f"check: data {data or '?'}: the built-in generated set (a pipeline check, not science)")
        return 0
    if Path(data, "label-6way.npz").is_file() and Path(data, "features").is_dir():
        log(f"check: data {data}: label-6way.npz and features/ found")
        return 0
    log(f"check: FAILED: data {data} is not a MERBench dataset root (label-6way.npz and features/ not both there)")
    return 1


def login_check(options: list[str], script: str, env, submit: str) -> int:
    """The whole check; `submit` is the command line that would submit it. 0 when a job would start."""
    req = parse_sbatch_options(script_options(Path(script).read_text()) + options)
    gpus, nodes = requested_gpus_per_node(req), _int(req.get("nodes", ""))
    tasks, per_task = _int(req.get("ntasks-per-node", "")), _int(req.get("cpus-per-task", ""))
    part = req.get("partition") or default_partition()
    log(f"check: sbatch would request {nodes} node(s), {tasks} task(s) x {per_task} CPUs and {gpus} GPU(s) per node, "
        f"time {req.get('time') or 'partition default'}, partition {part or 'default'}, account "
        f"{req.get('account') or 'default'}, memory {req.get('mem') or 'partition default'}")
    problems = check_sbatch(options, script, part, per_task * tasks, tasks, gpus) + check_torch(env, gpus)
    workdir = env.get("PRMF_WORKDIR") or os.getcwd()
    storage = os.path.realpath(os.path.join(workdir, env.get("PRMF_STORAGE") or "runs"))
    problems += check_storage(storage)
    cmd = sweep_command({**env, "PRMF_STORAGE": storage, "PRMF_NUM_GPUS": env.get("PRMF_NUM_GPUS") or str(gpus * nodes)},
                        "HEAD:PORT", workdir)
    log(f"check: sweep command: {cmd}")
    problems += check_data(cmd)
    if problems:
        log(f"check: {problems} problem(s) above; nothing was submitted")
        return 1
    log(f"check: OK; submit it: {submit}")
    return 0
