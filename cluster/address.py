"""Which Ray cluster a sweep joins -- the one place that decides it.

Order: the sweep's `--address` flag, else the `RAY_ADDRESS` environment variable, else `None`,
which means "start a local Ray on this machine" (`ray.init()` with no address).

The address is whatever `ray.init(address=...)` accepts: `HOST:PORT` of a running head's GCS
(what `slurm/launch_ray.sh` and `cluster/start_local_cluster.sh` export as `RAY_ADDRESS`),
`auto` (a cluster already started on this machine with `ray start`), `local` (always start a
new local Ray, even when `RAY_ADDRESS` is set), or `ray://HOST:10001` (Ray Client).  Empty
values count as not given.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

ENV_VAR = "RAY_ADDRESS"


def resolve_address(cli_address: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """Return the Ray address to connect to, or None to start a local Ray.

    `cli_address`: the value of the sweep's `--address` flag (None or "" when not given).
    `environ`: where to read `RAY_ADDRESS` from (default `os.environ`; for tests).
    """
    if cli_address and cli_address.strip():
        return cli_address.strip()
    env = os.environ if environ is None else environ
    value = (env.get(ENV_VAR) or "").strip()
    return value or None


# HTTP/2's client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, Ray Client's
# server) answers with a SETTINGS frame of its own at once, with or without Ray's token auth.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def grpc_problem(host: str, port: int, timeout: float = 5.0, tls: bool = False) -> str:
    """Why HOST:PORT is not a gRPC server ('' if it is), within `timeout` seconds: what
    `ray.init` would find out only after minutes of retries. OSError where nothing can be reached.
    With `tls` (RAY_USE_TLS) the plain preface cannot be answered: only the connect is checked."""
    start = time.monotonic()
    deadline, closed = start + timeout, False
    with socket.create_connection((host, port), timeout=timeout) as s:
        if tls:
            return ""
        s.sendall(HTTP2_PREFACE)
        head = b""
        while len(head) < 9:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(9 - len(head))
            except socket.timeout:
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                closed = True
                break
            head += chunk
    if len(head) == 9 and head[3] == 0x04 and head[5:9] == b"\x00" * 4:  # SETTINGS on stream 0
        return ""
    if not head:  # the time it took, not the limit: a server that hangs up early is not "silent for 5 s"
        waited = time.monotonic() - start
        return (f"it accepted the connection, then closed it after {waited:.1f} s without answering" if closed else
                f"it accepted the connection but sent nothing in {waited:.1f} s")
    return f"it answered {head[:9]!r}, not an HTTP/2 SETTINGS frame"
