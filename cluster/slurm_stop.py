"""Stopping a Slurm job's sweep driver and Ray nodes, by PID only (never `ray stop`, which would
stop other people's Ray on a shared node). The batch script's traps call these and then reap the
processes with `wait` (they are its children, not this process's)."""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from cluster.slurm_env import log, run

POLL = 0.5


def alive(pid: int) -> bool:
    """The process exists and has not exited (an exited child its parent has not reaped yet is a
    zombie: gone for our purpose)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def signal_group(pid: int, sig: int) -> None:
    """`sig` to the process group `pid` leads, else to `pid` alone."""
    for send in (os.killpg, os.kill):
        try:
            send(pid, sig)
            return
        except (ProcessLookupError, PermissionError):
            continue


def wait_gone(pids: list[int], seconds: float) -> bool:
    """Poll until none of `pids` is alive or `seconds` have passed; True when all are gone."""
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def stop_driver(pid: int, grace: float, head: int = 0) -> None:
    """SIGINT to the driver's process group (Ray Tune saves its state), up to `grace` seconds to
    stop, then SIGTERM and SIGKILL. When the Ray head is gone for 3 s the driver can save nothing
    more on a dead cluster and waiting would run into Slurm's SIGKILL: it is killed at once."""
    if not alive(pid):
        return
    log(f"sending SIGINT to the sweep driver (process group {pid}); waiting up to {grace:g}s")
    signal_group(pid, signal.SIGINT)
    deadline, head_gone = time.monotonic() + grace, 0
    while alive(pid) and time.monotonic() < deadline and head_gone < 6:
        head_gone = head_gone + 1 if head and not alive(head) else 0
        time.sleep(POLL)
    if alive(pid) and head_gone >= 6:
        log("the Ray head has stopped as well: stopping the driver now (SIGKILL)")
        signal_group(pid, signal.SIGKILL)
    elif alive(pid):
        log(f"driver still running after {grace:g}s: SIGTERM, then SIGKILL")
        signal_group(pid, signal.SIGTERM)
        wait_gone([pid], 10)
        signal_group(pid, signal.SIGKILL)
    log("driver stopped")


def stop_ray(pids: list[int], job: str, ray_tmp: str) -> None:
    """SIGTERM to the head's process (pids[0]) and, through Slurm, to the worker steps (SIGTERM to
    an srun would SIGKILL its step at once; `scancel --signal` reaches every step but the batch
    step); after 30 s, what is left is killed. Removes the head's temp dir."""
    head, workers = pids[0], pids[1:]
    log(f"stopping Ray: SIGTERM to the head (PID {head}) and the worker steps (srun PIDs "
        f"{' '.join(map(str, workers))})")
    _kill(head, signal.SIGTERM)
    if workers:
        run(["scancel", "--signal=TERM", job])
    if not wait_gone(pids, 30):
        for pid in filter(alive, pids):
            log(f"PID {pid} still alive after 30s: killing it")
            _kill(pid, signal.SIGKILL if pid == head else signal.SIGTERM)
    shutil.rmtree(Path(ray_tmp, f"ray-{job}.0"), ignore_errors=True)
    log("Ray stopped")


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
