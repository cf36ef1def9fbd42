"""Nobody else gets in: a sweep's local Ray listens on loopback only, it and cluster/start_local_cluster.sh
refuse a client without the token; a killed driver's leftover Ray processes are ended by the
next run; one driver per sweep."""
import json
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clusters import REPO, assert_token_guards, local_ray_cluster, python_env  # noqa: E402

import ray  # noqa: E402,F401  (Ray's bundled psutil)
import psutil  # noqa: E402

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}

DRIVER = """
import sys
from pathlib import Path
from sweeps import ray_local
import ray
root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
ray_local.start(root, 1)
ray.get(ray.remote(lambda: 1).remote())  # a worker process, with its own gRPC port
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


def listening(pid):
    """(process name, ip, port) of every listening TCP socket of `pid` and its descendants."""
    out = []
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            out += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="tcp")
                    if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    return out


def non_loopback_ips():
    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family in (socket.AF_INET, socket.AF_INET6) and a.address.split("%")[0] not in LOOPBACK
            and not a.address.startswith("fe80")]


@pytest.mark.timeout(300)
def test_local_sweep_ray_is_loopback_only_token_guarded_and_its_leftovers_are_ended(tmp_path):
    root = tmp_path / "sweep"
    env = python_env(RAY_AUTH_MODE="disabled")  # the sweep's Ray uses a token whatever the caller's env says
    env.pop("RAY_ADDRESS", None)
    drv = subprocess.Popen([sys.executable, "-c", DRIVER, str(root)], cwd=REPO, env=env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = drv.stdout.readline().strip()
        assert address, drv.stderr.read()[-3000:]
        socks = listening(drv.pid)
        names = {n for n, _, _ in socks}
        assert {"gcs_server", "raylet"} <= names, socks
        assert all(ip in LOOPBACK for _, ip, _ in socks), [s for s in socks if s[1] not in LOOPBACK]
        for ip in non_loopback_ips():  # and nothing answers on the host's network addresses
            for _, _, port in socks:
                with pytest.raises(OSError):
                    socket.create_connection((ip, port), timeout=2).close()
        token = root / "ray_auth_token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
        # a client reaches a loopback Ray in Ray's single-machine mode (else it swaps 127.0.0.1 for the host's IP)
        assert_token_guards(address, token, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")

        recorded = json.loads((root / "ray_pids.json").read_text())["procs"]
        assert {"gcs_server", "raylet"} <= {r["name"] for r in recorded}
        drv.kill()  # SIGKILL: no ray.shutdown()
        drv.wait(30)
        time.sleep(2)
        survivors = sorted(r["pid"] for r in recorded if psutil.pid_exists(r["pid"]))
        print(f"\n[leftovers] {len(survivors)} of {len(recorded)} Ray processes alive after the driver's SIGKILL")
        from sweeps import ray_local
        ended = ray_local.end_leftovers(root)  # what the next run of the sweep does first
        assert sorted(ended) == survivors
        assert not [r for r in recorded if psutil.pid_exists(r["pid"])
                    and round(psutil.Process(r["pid"]).create_time(), 2) == r["create_time"]]
        assert not (root / "ray_pids.json").exists()
    finally:
        if drv.poll() is None:
            drv.kill()
        for r in json.loads((root / "ray_pids.json").read_text())["procs"] if (root / "ray_pids.json").exists() else []:
            try:
                p = psutil.Process(r["pid"])
                if round(p.create_time(), 2) == r["create_time"]:
                    p.kill()
            except psutil.Error:
                pass


@pytest.mark.timeout(300)
def test_start_local_cluster_makes_a_fresh_token_and_refuses_clients_without_it(tmp_path):
    env = python_env()
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(k, None)  # the script's defaults
    with local_ray_cluster(tmp_path / "ray", workers=1, cpus_per_node=1, env=env) as address:
        token = tmp_path / "ray" / "address.token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        # a multi-node Ray 2.x cannot be held to loopback (see the script's --host): the token guards it
        assert_token_guards(address, token)
    assert not token.exists()


def test_slurm_launcher_defaults_to_a_random_token():
    text = (REPO / "slurm" / "launch_ray.sh").read_text()
    assert "export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}" in text and "/dev/urandom" in text
