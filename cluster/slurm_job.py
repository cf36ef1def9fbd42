"""The Slurm launcher's decisions inside a job: the sweep command, the allocation's plan (nodes,
CPUs, GPUs, the Ray head's address and port, the storage), the dry run's report, the CUDA check,
requeueing the job and the file a login node sources to watch the cluster.

The batch script (launch_ray.sh) runs `python -m cluster.slurm plan` and evaluates the shell
assignments it prints; everything that is a decision is here, tested without a Slurm.
"""
from __future__ import annotations

import os
import re
import shlex
import socket
from pathlib import Path

from cluster.free_ports import free_ports
from cluster.slurm_env import (LaunchError, allocation_gpus, find_head_ip, gpus_on_node, hostnames, log,
                               node_cpus, run, torch_probe)

NO_DATA = ("no data given: set PRMF_DATA=/path/to/MERBench/dataset/mer2023 (a MERBench dataset root), "
           "or PRMF_DATA=synthetic for the built-in generated set")
RUNS_A_SWEEP = re.compile(r"sweeps/|-m sweeps\.|prmf-(ablation|grid)\b")


def flag_value(words: list[str], flag: str) -> str | None:
    """The value of `--flag V` or `--flag=V` in `words` (the last one given); None if not named."""
    value = None
    for i, w in enumerate(words):
        if w == flag:
            value = words[i + 1] if i + 1 < len(words) else ""
        elif w.startswith(flag + "="):
            value = w[len(flag) + 1:]
    return value


def sweep_command(env, address: str, workdir: str) -> str:
    """The driver's command line: PRMF_SWEEP_CMD, or the ablation suite with the launcher's
    --num-gpus (PRMF_NUM_GPUS), --address, --storage (PRMF_STORAGE) and --data (PRMF_DATA), each
    left out where PRMF_SWEEP_ARGS names it itself (a flag given twice reads as a mistake in the
    log). A checkout runs sweeps/ablation.py, an installed package `-m sweeps.ablation`. A sweep
    without data is refused: it would train the built-in generated set for hours of GPU time."""
    if env.get("PRMF_SWEEP_CMD"):
        cmd = env["PRMF_SWEEP_CMD"]
    else:
        args = env.get("PRMF_SWEEP_ARGS", "")
        try:
            words = shlex.split(args)
        except ValueError:
            words = args.split()
        data, named = env.get("PRMF_DATA", ""), {f: flag_value(words, f) for f in ("--data", "--storage", "--num-gpus")}
        if data and named["--data"] not in (None, data):
            raise LaunchError(f"PRMF_DATA={data} and PRMF_SWEEP_ARGS' --data {named['--data']} disagree: "
                              "give the data once")
        script = "sweeps/ablation.py" if Path(workdir, "sweeps", "ablation.py").is_file() else "-m sweeps.ablation"
        parts = [shlex.quote(env.get("PRMF_PYTHON") or "python"), script]
        if named["--num-gpus"] is None:
            parts += ["--num-gpus", env.get("PRMF_NUM_GPUS") or "0"]
        parts += ["--address", shlex.quote(address)]
        if named["--storage"] is None:
            parts += ["--storage", shlex.quote(env["PRMF_STORAGE"])]
        if data and named["--data"] is None:
            parts += ["--data", shlex.quote(data)]
        cmd = " ".join(parts) + (f" {args}" if args else "")
    if RUNS_A_SWEEP.search(cmd) and "--data" not in cmd:
        raise LaunchError(NO_DATA)
    return cmd


def ray_tmp(env) -> str:
    """Parent of the per-job Ray temp dirs: PRMF_RAY_TMP when it is a short absolute path (Ray's
    socket paths are limited to 107 bytes), else /tmp."""
    tmp = env.get("PRMF_RAY_TMP") or "/tmp"
    if not tmp.startswith("/") or len(tmp) > 40:
        log(f"PRMF_RAY_TMP={tmp} is not a short absolute path (Ray's socket paths are limited to 107 bytes); using /tmp")
        return "/tmp"
    return tmp


def storage_dir(env) -> str:
    """PRMF_STORAGE (default WORKDIR/runs), created, as an absolute path without symlinks."""
    storage = Path(env.get("PRMF_STORAGE") or Path(env.get("PRMF_WORKDIR") or os.getcwd(), "runs"))
    try:
        storage.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LaunchError(f"cannot create PRMF_STORAGE={storage}: {e.strerror}") from None
    return str(storage.resolve())


def job_plan(env) -> dict:
    """Everything the batch script needs before Ray starts, from Slurm's variables: `exports` (the
    variables the driver and the Ray nodes get), `nodes`, `cpus` (per node), `sweep` (the command)."""
    job, restarts = env["SLURM_JOB_ID"], env.get("SLURM_RESTART_COUNT") or "0"
    nodes = hostnames(env.get("SLURM_JOB_NODELIST", ""))
    if not nodes:
        raise LaunchError("empty SLURM_JOB_NODELIST")
    log(f"job {job} (restart {restarts}) on {len(nodes)} node(s): {' '.join(nodes)}; batch host {socket.gethostname()}")
    head = find_head_ip(nodes, env)
    if not head:
        raise LaunchError(f"cannot find a non-loopback IPv4 address of {socket.gethostname()}; set PRMF_HEAD_IP")
    port = free_ports(1)[0]
    exports = {"HEAD_IP": head, "GCS_PORT": str(port), "RAY_ADDRESS": f"{head}:{port}", "PRMF_RAY_TMP": ray_tmp(env),
               "PRMF_NUM_GPUS": str(allocation_gpus(env, len(nodes))), "PRMF_STORAGE": storage_dir(env)}
    sweep = sweep_command({**env, **exports}, exports["RAY_ADDRESS"], env.get("PRMF_WORKDIR") or os.getcwd())
    return {"exports": exports, "nodes": nodes, "cpus": node_cpus(env.get("SLURM_JOB_CPUS_PER_NODE", "")),
            "sweep": sweep}


def shell_lines(plan: dict) -> str:
    """The plan as bash assignments for the batch script's `eval`."""
    q = shlex.quote
    return (f"export {' '.join(f'{k}={q(v)}' for k, v in plan['exports'].items())}\n"
            f"SWEEP_CMD={q(plan['sweep'])}\n"
            f"NODES=({' '.join(map(q, plan['nodes']))})\n"
            f"NODE_CPUS=({' '.join(map(str, plan['cpus']))})\n")


def dry_run_report(plan: dict, env) -> None:
    """What the job would do, in the job log; starts nothing."""
    job, x = env["SLURM_JOB_ID"], plan["exports"]
    rc, out = run(["scontrol", "show", "job", job, "-o"])
    limit = re.search(r"TimeLimit=(\S+)", out)
    python = env.get("PRMF_PYTHON") or "python"
    probe = torch_probe(python)
    torch = f"{probe['version']} {'with' if probe['available'] else 'without'} CUDA" if probe else "not importable"
    log(f"dry run: job {job} ({env.get('SLURM_JOB_NAME', '')}), partition {env.get('SLURM_JOB_PARTITION') or 'default'}, "
        f"account {env.get('SLURM_JOB_ACCOUNT') or 'default'}, time limit {limit.group(1) if limit else '?'}")
    log(f"dry run: {len(plan['nodes'])} node(s) {' '.join(plan['nodes'])}; CPUs per node "
        f"{' '.join(map(str, plan['cpus'])) or '?'}; GPUs per node {gpus_on_node(env)}; sweep --num-gpus {x['PRMF_NUM_GPUS']}")
    log(f"dry run: Ray head {x['RAY_ADDRESS']} (other ports chosen free per node at start), auth "
        f"{env.get('RAY_AUTH_MODE', 'token')}, temp dirs {x['PRMF_RAY_TMP']}/ray-{job}.<i>")
    log(f"dry run: python {python} (torch {torch}), venv {env.get('PRMF_VENV') or 'none'}, "
        f"setup {env.get('PRMF_SETUP') or 'none'}, workdir {env.get('PRMF_WORKDIR') or os.getcwd()}")
    log(f"dry run: storage {x['PRMF_STORAGE']} (every node must see it at this path)")
    log(f"dry run: sweep command: {plan['sweep']}")
    log("dry run: nothing started")


def cuda_problem(env, gpus: int) -> str:
    """GPUs allocated but a torch without CUDA (a venv built on a GPU-less login node) would train
    on the CPUs for the whole job: the reason to refuse, '' where all is well."""
    if gpus <= 0 or env.get("PRMF_SKIP_CUDA_CHECK") == "1":
        return ""
    python = env.get("PRMF_PYTHON") or "python"
    probe = torch_probe(python)
    if probe and probe["available"]:
        return ""
    torch = f"torch {probe['version']}" if probe else "torch not importable"
    return (f"ERROR: {socket.gethostname()}: Slurm gave this node {gpus} GPU(s) but torch.cuda.is_available() is "
            f"False in {python} ({torch}); build the venv with a CUDA torch (make venv CUDA=12.4) or set "
            "PRMF_SKIP_CUDA_CHECK=1")


def requeue(env) -> int:
    """Requeue this job (`scontrol requeue`, as submitit does) unless it has restarted
    PRMF_MAX_REQUEUES times already; 0 when requeued."""
    job, restarts = env["SLURM_JOB_ID"], int(env.get("SLURM_RESTART_COUNT") or 0)
    most = int(env.get("PRMF_MAX_REQUEUES") or 20)
    if restarts >= most:
        log(f"not requeueing: already restarted {restarts} times (PRMF_MAX_REQUEUES={most})")
        return 1
    log(f"requeueing job {job}: its next run starts the same sweep command, which resumes from its storage")
    rc, out = run(["scontrol", "requeue", job], timeout=60)
    if rc != 0:
        log(f"scontrol requeue failed: {out.strip()}")
        return 1
    return 0


def write_env_file(env) -> str:
    """For watching from a login node, `source FILE && ray status`: the cluster's address and
    token in a file only the user can read. Its path, '' where it cannot be written."""
    folder = Path(env.get("PRMF_RAY_ENV_DIR") or Path(env.get("HOME") or "/tmp", ".prmf"))
    path = folder / f"ray-{env['SLURM_JOB_ID']}.env"
    q = shlex.quote
    text = f"export RAY_ADDRESS={q(env['RAY_ADDRESS'])} RAY_AUTH_MODE={q(env.get('RAY_AUTH_MODE', 'token'))}\n"
    if env.get("RAY_AUTH_TOKEN"):
        text += f"export RAY_AUTH_TOKEN={q(env['RAY_AUTH_TOKEN'])}\n"
    old = os.umask(0o077)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError:
        return ""
    finally:
        os.umask(old)
    return str(path)
