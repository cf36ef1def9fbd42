"""Test clusters: a real Slurm (slurmctld + two slurmd on this host) and a two-node Ray cluster.

Used by tests/test_slurm_launch.py and tests/test_ray_cluster.py (imported, not a conftest).
Every daemon is started here as a child process and stopped by its PID; nothing is ever
stopped by name, and `ray stop` is never run (it would kill every Ray on the host).

Slurm comes from Debian's `slurm-wlm` (slurm/install-test-slurm.sh installs it) and is started
by slurm/local-slurm.sh, the command a user runs to try the launcher on one workstation
(cluster/local_slurm.py writes the configuration: no root services, everything in a temp dir,
free ports). Two nodes (n1, n2) run as two slurmd processes on this one host (`slurmd -N`,
distinct ports), so a job can get a two-node allocation. Each node has one fake GPU (a GRES
whose device file is /dev/null), so GPU requests are exercised too.
"""
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from cluster.local_slurm import CLIENTS, DAEMONS, INSTALL_HINT, LocalSlurm, find, stop_pid, wait_until  # noqa: E402,F401


def python_env(**extra):
    """The environment for a child that runs this repository's code (and the venv's `ray`)."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def client(address, prefix=(), **env):
    """A Ray driver joining `address` with only the auth env given (none inherited), run under
    `prefix` (e.g. `ip netns exec NS`: from another host); returns the CompletedProcess."""
    e = python_env(**env)
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        if k not in env:
            e.pop(k, None)
    code = f"import ray; ray.init(address={address!r}); print('joined', len(ray.nodes()))"
    return subprocess.run([*prefix, sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def assert_token_guards(address, token_path, prefix=(), **env):
    """A client without the token, or with a wrong one, is refused by Ray's auth; one with it joins."""
    for auth in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
        refused = client(address, prefix, **auth, **env)
        assert refused.returncode != 0 and "joined" not in refused.stdout, refused.stdout
        assert "AuthenticationError" in refused.stderr or "InvalidAuthToken" in refused.stderr, refused.stderr[-2000:]
    right = client(address, prefix, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path), **env)
    assert right.returncode == 0 and "joined" in right.stdout, right.stderr[-2000:]


# ---------------------------------------------------------------- Slurm

class SlurmCluster(LocalSlurm):
    """The tests' Slurm, started by the command a user runs to try the launcher on one workstation
    (slurm/local-slurm.sh, i.e. cluster/local_slurm.py): two nodes n1, n2 on this host with 2 CPUs
    and one fake GPU each; KillWait and cred_expire 5 s. Stopped by SIGTERM to that command's PID
    (it cancels the jobs left and stops its daemons by PID). Adds the clients the tests use."""

    def __init__(self, workdir: Path, nodes=("n1", "n2"), cpus=2, kill_wait=5, fake_gpus=1, slurmd_timeout=60,
                 addrs=None, prefix=None):
        super().__init__(workdir, nodes, cpus, ["/dev/null"] * fake_gpus, kill_wait=kill_wait,
                         slurmd_timeout=slurmd_timeout, addrs=addrs, prefix=prefix)
        self.proc = None
        self.timings = {}

    def start(self):
        missing = [exe for exe in DAEMONS + CLIENTS if find(exe) is None]
        if missing:
            pytest.fail(f"Slurm is not installed ({missing[0]} not found): {INSTALL_HINT}", pytrace=False)
        t0 = time.monotonic()
        if self.addrs:  # daemons on separate network hosts (tests/netns.py): started here, each under its prefix
            super().start()
            self.timings["cluster_up_s"] = time.monotonic() - t0
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        log = self.dir / "local-slurm.out"
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                ["bash", str(REPO / "slurm" / "local-slurm.sh"), "--dir", str(self.dir), "--nodes", ",".join(self.nodes),
                 "--cpus", str(self.cpus), "--fake-gpus", str(len(self.gpu_files)), "--kill-wait", str(self.kill_wait)],
                env=python_env(PRMF_PYTHON=sys.executable), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=REPO)

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"slurm/local-slurm.sh exited ({self.proc.returncode}):\n{log.read_text()[-3000:]}")
            return "export SLURM_CONF=" in log.read_text()
        try:
            wait_until(up, 90, what=f"slurm/local-slurm.sh to report the cluster up (see {log})")
        except BaseException:
            self.stop()
            raise
        self.timings["cluster_up_s"] = time.monotonic() - t0
        return self

    def stop(self):
        if self.proc is not None:
            stop_pid(self.proc, timeout=120)
        else:
            super().stop()

    # -- clients
    def env(self, **extra):
        return super().env(python_env(**extra))

    def sbatch(self, script, options=(), env=None, cwd=REPO):
        r = subprocess.run([*self.prefix("ctld"), "sbatch", "--parsable", *options, str(script)], capture_output=True,
                           text=True, env=env or self.env(), cwd=cwd, timeout=60)
        assert r.returncode == 0, f"sbatch failed: {r.stderr}"
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id) -> dict:
        """`scontrol show job` as a dict (JobState, Reason, Restarts, ExitCode, ...)."""
        r = self.run(["scontrol", "show", "job", "-o", str(job_id)])
        if r.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", r.stdout))

    def state(self, job_id):
        return self.job(job_id).get("JobState", "")

    def wait_state(self, job_id, states, timeout, log=None):
        states = {states} if isinstance(states, str) else set(states)
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}

        def check():
            st = self.state(job_id)
            if st in states:
                return st
            if st in final:
                raise AssertionError(f"job {job_id} ended {st} while waiting for {states}: {self.job(job_id)}"
                                     + (f"\n--- job log ---\n{Path(log).read_text()[-6000:]}" if log and Path(log).exists() else ""))
            return None
        try:
            return wait_until(check, timeout, interval=0.3, what=f"job {job_id} to be {'/'.join(states)}")
        except TimeoutError as e:
            tail = Path(log).read_text()[-6000:] if log and Path(log).exists() else ""
            raise AssertionError(f"{e}; job: {self.job(job_id)}\n--- job log ---\n{tail}") from None

    def release_if_held(self, job_id):
        """A requeued job that Slurm holds (JobHeld / requeued in held state) is released."""
        info = self.job(job_id)
        if info.get("JobState") == "PENDING" and "held" in info.get("Reason", "").lower():
            self.run(["scontrol", "release", str(job_id)])


@contextmanager
def slurm_cluster_in(workdir, **kw):
    cluster = SlurmCluster(workdir, **kw)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


# ---------------------------------------------------------------- Ray

@contextmanager
def local_ray_cluster(workdir, workers=1, cpus_per_node=1, timeout=180, env=None, gpus_per_node=0):
    """A Ray head and `workers` worker nodes on this host, started by cluster/start_local_cluster.sh
    (each node its own `ray start --block` process, children of the script) in a process group of
    our own; yields the head's address. Stopped by SIGTERM to the script's PID (it stops its nodes
    by PID), then SIGKILL to that group if anything is left."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    addr_file = workdir / "address"
    log = open(workdir / "cluster.log", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(REPO / "cluster" / "start_local_cluster.sh"), "--workers", str(workers),
         "--num-cpus", str(cpus_per_node), "--num-gpus", str(gpus_per_node), "--address-file", str(addr_file)],
        env=env or python_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, cwd=REPO)
    log.close()
    try:
        def ready():
            if proc.poll() is not None:
                raise RuntimeError(f"start_local_cluster.sh exited ({proc.returncode}):\n"
                                   + (workdir / "cluster.log").read_text()[-4000:])
            return addr_file.exists() and addr_file.read_text().strip()
        try:
            address = wait_until(ready, timeout, what="the local Ray cluster")
        except TimeoutError as e:
            raise RuntimeError(f"{e}\n" + (workdir / "cluster.log").read_text()[-4000:]) from None
        local_ray_cluster.last_up_s = time.monotonic() - t0
        yield address
    finally:
        stop_pid(proc, timeout=60)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of ours the script left behind
        except ProcessLookupError:
            pass
