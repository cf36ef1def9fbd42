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
