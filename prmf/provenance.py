"""Where a result came from: the command, the code's commit, the library versions and the machine.

Recorded once per run of a sweep (STORAGE/NAME/provenance/run-NNN.json) and, as `commit`, on
every results row, so a cell of the paper table can be traced to the code that produced it.
"""
import importlib.metadata
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "ray", "pyarrow", "numpy", "pandas", "scikit-learn")
DISTRIBUTION = "prmf-sweep"
BUILD_COMMIT = Path(__file__).with_name("BUILD_COMMIT")  # written into a wheel by setup.py's build


@lru_cache(maxsize=None)
def git_commit(repo: Path = REPO) -> str:
    """HEAD's hash, with '+dirty' when tracked files differ from it. Installed from a wheel (no
    checkout around the code) it is the commit the wheel was built from; 'unknown' if none."""
    if repo == REPO and not (repo / ".git").exists():  # not git's answer for a folder the code merely sits in
        return BUILD_COMMIT.read_text().strip() if BUILD_COMMIT.exists() else "unknown"
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


@lru_cache(maxsize=None)
def version() -> str:
    """This code's own version, as installed (a wheel, `pip install .` or `-e .`); 'unknown' when run
    from a checkout that was never installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def versions() -> dict:
    out = {"python": platform.python_version(), DISTRIBUTION: version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    """The host, its CPUs and GPUs, and what `precision` meets there: the CPU's vector capability,
    which devices compute bf16 natively, and CUDA's TF32 flags outside the engine (it sets them only
    while a tf32 pack runs)."""
    import torch

    from .precision import native_bf16
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"host": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(n_gpus)],
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_native": {"cpu": native_bf16("cpu"), **{f"cuda:{i}": native_bf16(f"cuda:{i}")
                                                           for i in range(n_gpus)}},
            "cuda_tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}}


def collect(argv=None) -> dict:
    """Everything above for this process (the driver of a sweep, or `prmf.train`)."""
    argv = sys.argv if argv is None else argv
    commit = git_commit()
    return {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": shlex.join([Path(sys.executable).name, *argv]), "cwd": str(Path.cwd()),
            "version": version(), "commit": commit.removesuffix("+dirty"),
            "dirty": commit.endswith("+dirty"), "versions": versions(), "machine": machine()}


def write_run(folder: Path, record: dict, trials: dict) -> Path:
    """folder/provenance/run-NNN.json: this run's record and the resolved config of every trial."""
    from .store import atomic_write
    d = Path(folder) / "provenance"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"run-{len(list(d.glob('run-*.json'))):03d}.json"
    text = json.dumps({**record, "trials": trials}, indent=1, sort_keys=True, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path
