"""Wait until a Ray cluster has N live nodes -- by polling, never by sleeping a fixed time.

    python -m cluster.wait_for_nodes HOST:PORT N [--timeout 300] [--pid PID ...]

First waits for the head's GCS port to accept connections, then joins as a driver and polls
`ray.nodes()` until N nodes are alive. `--pid`: processes (on this host) that start the nodes;
if one of them exits while waiting, fail at once instead of waiting for the timeout.
Prints one line (nodes, CPUs, GPUs) and exits 0, or prints the reason and exits 1.
Used by slurm/launch_ray.sh and cluster/start_local_cluster.sh.
"""
import argparse
import os
import socket
import sys
import time


class NotReady(Exception):
    pass


def _check(pids, deadline, timeout, what):
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise NotReady(f"a Ray node process (PID {pid}) exited while the cluster was starting; see its log") from None
        except PermissionError:
            pass
    if time.monotonic() > deadline:
        raise NotReady(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_for_nodes(address: str, nodes: int, timeout: float = 300.0, pids=()) -> dict:
    """Block until `nodes` Ray nodes are alive at `address`; return the cluster's resources."""
    deadline = time.monotonic() + timeout
    host, port = address.rsplit(":", 1)
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            break
        except OSError:
            _check(pids, deadline, timeout, f"the Ray head at {address}")
            time.sleep(0.5)

    import logging
    import ray

    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        while True:
            alive = [n for n in ray.nodes() if n["Alive"]]
            if len(alive) >= nodes:
                break
            _check(pids, deadline, timeout, f"{nodes} Ray nodes at {address} ({len(alive)} joined)")
            time.sleep(1)
        res = ray.cluster_resources()
        return {"nodes": len(alive), "addresses": sorted(n["NodeManagerAddress"] for n in alive),
                "CPU": res.get("CPU", 0), "GPU": res.get("GPU", 0)}
    finally:
        ray.shutdown()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("address")
    ap.add_argument("nodes", type=int)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--pid", type=int, action="append", default=[])
    a = ap.parse_args(argv)
    try:
        info = wait_for_nodes(a.address, a.nodes, a.timeout, a.pid)
    except (NotReady, ConnectionError, RuntimeError) as e:
        print(f"wait_for_nodes: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    print(f"cluster up: {info['nodes']} node(s) ({', '.join(info['addresses'])}), "
          f"{info['CPU']:g} CPUs, {info['GPU']:g} GPUs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
