"""What ends a sweep before its end, said in one line: a signal (SIGINT, SIGTERM), a full disk, and
trial resources that no node of the cluster has."""
import os
import shutil
import sys
import time
from pathlib import Path

from prmf import store
from prmf.interrupt import Signals
from sweeps.definition import DEFAULT_STORAGE, SweepError

SIGNALS = Signals()  # SIGINT and SIGTERM as KeyboardInterrupt in the driver; taken back from Ray after it starts
STOP_GRACE_S = 20  # seconds Tune's graceful stop may take after SIGTERM (it hangs when Ray's processes got it too)
DISK_FULL_BELOW = 1 << 20  # bytes free under which a failed write is put down to a full disk


def _root(run):
    return (Path(run.storage) if run.storage else DEFAULT_STORAGE).resolve() / run.name if run.name else None


def interrupted(run) -> str:
    """The line of an interrupted sweep: what is kept, and how to resume."""
    root = _root(run)
    if root is None or not root.is_dir():
        return f"{SIGNALS.said} before the sweep folder was made: nothing was written"
    n = len(store.completed_trials(root))
    return (f"{SIGNALS.said}: kept {n} stored trial{'s' if n != 1 else ''} and the running packs' last "
            f"checkpoints in {root}; run the same command again to resume sweep {run.name!r}")


def disk_full(run, error) -> str:
    """'' unless `error` (met while the sweep ran) is a full disk, or the storage is (nearly) full
    (Tune's own failed state writes surface as other errors): then what to do, in one line."""
    folder = Path(run.storage) if run.storage else DEFAULT_STORAGE
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if not (isinstance(error, OSError) and error.errno in store.DISK_FULL) and (free is None or free > DISK_FULL_BELOW):
        return ""
    return (f"the disk holding {folder.resolve()} is full ({'' if free is None else f'{free // 1024} KiB free; '}"
            f"{os.strerror(error.errno) if isinstance(error, OSError) and error.errno else type(error).__name__}): "
            f"free space, "
            f"then run the same command again to resume sweep {run.name!r} (stored trials and checkpoints are kept; "
            f"a file being written is whole or absent)")


def wait_for_a_node(cpus, gpus, address):
    """A trial runs on one node: on a cluster where no node has its CPUs and GPUs, Ray would wait
    for one forever. Nodes may still be joining (an autoscaler, Slurm), so say what is waited for,
    and give up after PRMF_NODE_WAIT_S seconds (default 300) with a line saying what is missing."""
    import ray
    limit, said = float(os.environ.get("PRMF_NODE_WAIT_S", 300)), False
    deadline = time.monotonic() + limit
    while True:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
            return
        need = f"a node with {cpus:g} CPUs" + (f" and {gpus:g} GPUs" if gpus else "")
        top = max(nodes, key=lambda r: (r.get("CPU", 0), r.get("GPU", 0)), default={})
        have = (f"the largest of its {len(nodes)} node{'s' if len(nodes) != 1 else ''} has {top.get('CPU', 0):g} CPUs"
                + (f" and {top.get('GPU', 0):g} GPUs" if gpus else ""))
        if time.monotonic() >= deadline:
            ray.shutdown()
            raise SweepError(f"no node of the Ray cluster at {address} can run a trial: it needs {need}, {have} "
                             f"(waited {limit:g} s for one to join; PRMF_NODE_WAIT_S sets how long); lower "
                             f"--cpus-per-trial / --gpus-per-trial, or add a larger node, then run the same command again")
        if not said:
            print(f"waiting up to {limit:g} s for {need} to join the Ray cluster at {address} ({have})", file=sys.stderr)
            said = True
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
