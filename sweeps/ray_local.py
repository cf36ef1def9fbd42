"""A sweep's own local Ray: loopback only, token auth, and its processes remembered.

- Every Ray server (GCS, raylet, object manager, workers' gRPC, agents) binds to the node's IP;
  Ray resolves a "127.0.0.1" node IP to the host's network address unless its Windows/macOS
  single-node mode is on (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), which keeps the node on loopback.
  The dashboard, when asked for, listens on 127.0.0.1.
- Token auth: a fresh random token (256 bits) per Ray start in STORAGE/NAME/ray_auth_token,
  mode 0600, passed to Ray as RAY_AUTH_TOKEN_PATH; a client without it is refused. While the
  sweep runs: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=STORAGE/NAME/ray_auth_token ray status.
- The PIDs (and start times) of the Ray processes the driver started go to ray_pids.json; a
  driver killed with SIGKILL leaves agents behind, and the next run of the sweep ends them.
"""
import json
import logging
import os
import secrets
import socket
import sys
from pathlib import Path

TOKEN_FILE = "ray_auth_token"
PIDS_FILE = "ray_pids.json"
LOOPBACK = "127.0.0.1"


def write_token(path: Path) -> Path:
    """A new random token in a file only this user can read (created 0600, never wider)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secrets.token_hex(32).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def _psutil():
    import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
    import psutil
    return psutil


def _identity(p) -> dict:
    return {"pid": p.pid, "create_time": round(p.create_time(), 2), "name": p.name()}


def _same(p, rec) -> bool:
    """Still the process we recorded (not a new one that reuses its PID)?"""
    return round(p.create_time(), 2) == rec["create_time"]


def end_leftovers(root: Path) -> list:
    """End the Ray processes a dead earlier driver of this sweep left behind (by PID, checked by
    start time); returns the PIDs ended and says so on stderr."""
    path = root / PIDS_FILE
    if not path.exists():
        return []
    psutil = _psutil()
    try:
        saved = json.loads(path.read_text())
        recs = saved["procs"] if saved["host"] == socket.gethostname() else []  # PIDs of this host only
    except (ValueError, KeyError, TypeError):
        recs = []
    procs = []
    for rec in recs:
        try:
            p = psutil.Process(rec["pid"])
            if _same(p, rec):
                procs.append((p, rec["name"]))
        except (psutil.Error, KeyError, TypeError):
            pass
    for p, _ in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs([p for p, _ in procs], timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    if procs:
        print(f"ended {len(procs)} Ray process(es) left by an earlier driver of sweep {root.name!r}: "
              + ", ".join(f"PID {p.pid} ({name})" for p, name in procs), file=sys.stderr)
    path.unlink(missing_ok=True)
    return [p.pid for p, _ in procs]


def record_pids(root: Path):
    """Write the PIDs of every process below this driver (Ray's GCS, raylet, agents, workers)."""
    from prmf.store import atomic_write
    psutil = _psutil()
    recs = []
    for p in psutil.Process().children(recursive=True):
        try:
            recs.append(_identity(p))
        except psutil.Error:
            pass
    saved = {"host": socket.gethostname(), "driver": os.getpid(), "procs": recs}
    atomic_write(root / PIDS_FILE, lambda tmp: Path(tmp).write_text(json.dumps(saved, indent=1)))
    return recs


def start(root: Path, num_cpus, num_gpus=0, dashboard=False):
    """ray.init a new single-node Ray for the sweep in `root`, on loopback, with a fresh token."""
    token = write_token(root / TOKEN_FILE)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    os.environ.pop("RAY_AUTH_TOKEN", None)  # would win over the file
    import ray
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config
    # Ray reads these at import; it may have been imported before (Tune is): re-read them, as
    # Ray's own authentication_token_setup does when it turns token auth on
    ray_constants.ENABLE_RAY_CLUSTER = False
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    kwargs = dict(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=LOOPBACK,
                  logging_level=logging.WARNING, log_to_driver=False)
    if num_gpus:
        kwargs["num_gpus"] = num_gpus
    ray.init(**kwargs)
    ip = ray.util.get_node_ip_address()
    if ip != LOOPBACK:
        ray.shutdown()
        raise RuntimeError(f"the local Ray came up on {ip}, not {LOOPBACK}; refusing to run it open to the network")
    record_pids(root)
