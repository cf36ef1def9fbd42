"""Print N distinct free TCP ports, chosen by the kernel on this host (for Ray's ports).

    python -m cluster.free_ports N

All N sockets are bound at once, so the ports differ; they are free when printed, and a caller
that loses one to another process before binding it retries (slurm/launch_ray.sh does).
Used by slurm/launch_ray.sh and cluster/start_local_cluster.sh.
"""
import socket
import sys


def free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


if __name__ == "__main__":
    print(" ".join(map(str, free_ports(int(sys.argv[1])))))
