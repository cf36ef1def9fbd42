"""The Slurm launcher: start a Ray cluster on a Slurm allocation and run a sweep on it.

    prmf-slurm --check [SBATCH OPTIONS]    on a login node: what the job would get (no allocation)
    prmf-slurm [SBATCH OPTIONS]            submit it: sbatch [SBATCH OPTIONS] launch_ray.sh
    prmf-slurm --dry-run [SBATCH OPTIONS]  submit a job that prints what it would do and starts nothing
    prmf-slurm --script                    the path of the batch script, for `sbatch` by hand

From a checkout, `sbatch slurm/launch_ray.sh` and `bash slurm/launch_ray.sh --check` are the same.
The batch script keeps what must be shell (the #SBATCH defaults, each node's environment, srun of
the worker nodes, the signal traps that stop the driver and Ray by PID and requeue the job) and
calls this module for the rest:

    python -m cluster.slurm check --script PATH [SBATCH OPTIONS]
    python -m cluster.slurm plan               bash assignments: nodes, CPUs, head, ports, sweep command
    python -m cluster.slurm node head|worker I  one Ray node, in the foreground
    python -m cluster.slurm stop-driver PID GRACE HEAD_PID   SIGINT, then SIGTERM and SIGKILL, by PID
    python -m cluster.slurm stop-ray HEAD_PID [SRUN_PID ...]   the Ray nodes, by PID
    python -m cluster.slurm requeue            scontrol requeue, up to PRMF_MAX_REQUEUES times
    python -m cluster.slurm env-file           write ~/.prmf/ray-JOBID.env for `ray status` from a login node

Settings are environment variables (sbatch passes the submitting shell's on); docs/CLUSTERS.md
describes each: PRMF_WORKDIR, PRMF_STORAGE, PRMF_DATA, PRMF_DRY_RUN, PRMF_SKIP_CUDA_CHECK,
PRMF_SWEEP_ARGS, PRMF_SWEEP_CMD, PRMF_SETUP, PRMF_VENV, PRMF_PYTHON, PRMF_NUM_GPUS,
PRMF_GPUS_PER_NODE, PRMF_HEAD_IP, PRMF_RAY_TMP, PRMF_RAY_START_TIMEOUT, PRMF_STOP_TIMEOUT,
PRMF_MAX_REQUEUES, PRMF_REQUEUE_ON_TERM, PRMF_RAY_ENV_DIR.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from cluster.ray_node import run_node
from cluster.slurm_check import login_check
from cluster.slurm_env import LaunchError, gpus_on_node, log
from cluster.slurm_stop import stop_driver, stop_ray
from cluster.slurm_job import cuda_problem, dry_run_report, job_plan, requeue, shell_lines, write_env_file

SCRIPT = Path(__file__).resolve().with_name("launch_ray.sh")


def submit_env() -> dict:
    """The environment a job submitted by `prmf-slurm` starts with: this one, with this
    interpreter as PRMF_PYTHON (unless set) and its folder first on PATH (for `ray`)."""
    env = dict(os.environ)
    env.setdefault("PRMF_PYTHON", sys.executable)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def main(argv: list[str] | None = None) -> int:
    """`prmf-slurm`: the check, a submission or the script's path."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if argv[:1] == ["--script"]:
        print(SCRIPT)
        return 0
    env = submit_env()
    if argv[:1] == ["--check"]:
        env["PRMF_SUBMIT_AS"] = " ".join(["prmf-slurm", *argv[1:]])
        return subprocess.call(["bash", str(SCRIPT), *argv], env=env)
    dry = argv[:1] == ["--dry-run"]
    cmd = ["sbatch", *argv[dry:], str(SCRIPT), *(["--dry-run"] if dry else [])]
    try:
        return subprocess.call(cmd, env=env)
    except FileNotFoundError:
        print("prmf-slurm: no sbatch here; run it on a login node of the cluster "
              "(`prmf-slurm --check` tells what the job would get)", file=sys.stderr)
        return 1


def internal(argv: list[str], env) -> int:
    """The batch script's calls (`python -m cluster.slurm WHAT ...`)."""
    what, rest = (argv[0], argv[1:]) if argv else ("", [])
    if what == "check" and rest[:1] == ["--script"] and len(rest) > 1:
        script, options = rest[1], rest[2:]
        shown = os.path.relpath(script) if script.startswith(os.getcwd() + os.sep) else script
        submit = env.get("PRMF_SUBMIT_AS") or " ".join(["sbatch", *options, shown])
        return login_check(options, script, env, submit)
    if what == "plan":
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the script's eval
            plan = job_plan(env)
            if env.get("PRMF_DRY_RUN") == "1":
                dry_run_report(plan, env)
            elif problem := cuda_problem(env, gpus_on_node(env)):
                print(problem, flush=True)
                raise LaunchError("GPUs allocated but torch has no CUDA (see the line above)")
        print(shell_lines(plan), end="")
        return 0
    if what == "node" and len(rest) == 2 and rest[0] in ("head", "worker") and rest[1].isdigit():
        sys.stdout.reconfigure(line_buffering=True)
        return run_node(rest[0], int(rest[1]), env)
    if what == "stop-driver" and len(rest) == 3:
        stop_driver(int(rest[0]), float(rest[1]), int(rest[2]))
        return 0
    if what == "stop-ray" and rest:
        stop_ray([int(p) for p in rest], env["SLURM_JOB_ID"], env.get("PRMF_RAY_TMP") or "/tmp")
        return 0
    if what == "requeue":
        return requeue(env)
    if what == "env-file":
        path = write_env_file(env)
        print(path)
        return 0 if path else 1
    print(__doc__, file=sys.stderr)
    return 2


def cli(argv: list[str] | None = None) -> int:
    """`python -m cluster.slurm`: a launcher error is one line (`ERROR: ...`) and exit status 1."""
    try:
        return internal(sys.argv[1:] if argv is None else list(argv), os.environ)
    except LaunchError as e:
        log(f"ERROR: {e}", stream=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
