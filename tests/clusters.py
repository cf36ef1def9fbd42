"""Test clusters: a real Slurm (slurmctld + two slurmd on this host) and a two-node Ray cluster.

Used by tests/test_slurm_launch.py and tests/test_ray_cluster.py (imported, not a conftest).
Every daemon is started here as a child process and stopped by its PID; nothing is ever
stopped by name, and `ray stop` is never run (it would kill every Ray on the host).

Slurm comes from Debian's `slurm-wlm` (slurm/install-test-slurm.sh installs it). The
configuration needs no root services: AuthType=auth/none, CredType=cred/none,
ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, no accounting, no cgroups, no systemd;
state, spool, logs and the config file live in a temp dir, the ports are chosen free, and
`SLURM_CONF` points the clients at the file. Two nodes (n1, n2) run as two slurmd processes
on this one host (`slurmd -N`, distinct ports), so a job can get a two-node allocation. Each node
has one fake GPU (a GRES whose device file is /dev/null), so GPU requests are exercised too.
"""
import getpass
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from cluster.free_ports import free_ports  # noqa: E402

INSTALL_HINT = "run `sudo slurm/install-test-slurm.sh` (apt-get install slurm-wlm); make test does it"


def stop_pid(proc: subprocess.Popen, timeout=20.0, sig=signal.SIGTERM, group=False):
    """Stop a process we started: `sig`, then SIGKILL after `timeout`. `group`: its process group
    too (it was started with start_new_session=True, so the group is ours alone)."""
    if proc.poll() is not None:
        return proc.returncode
    send = (lambda s: os.killpg(proc.pid, s)) if group else proc.send_signal
    try:
        send(sig)
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        return proc.wait(10)
    except ProcessLookupError:
        return proc.wait(10)


def wait_until(pred, timeout, interval=0.5, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


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

SLURM_CONF = """\
ClusterName=prmftest
GresTypes=gpu
SlurmctldHost={host}({ctld_addr})
SlurmctldPort={ctld_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
# look at pending jobs every 2 s (defaults 30/60 s): a requeued job starts as soon as it may
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# A requeued job may start again once its old credential expired (default 120 s)
AuthInfo=cred_expire={cred_expire}
KillWait={kill_wait}
MinJobAge=600
FirstJobId={first_job_id}
SlurmdTimeout={slurmd_timeout}
InactiveLimit=0
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
{nodes}
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class SlurmCluster:
    """slurmctld and one slurmd per node name, all on this host, started and stopped by PID.
    `addrs` ({"ctld" or node name: IP}, default 127.0.0.1) and `prefix` (name -> argv that runs a
    command on that host, e.g. `ip netns exec NS`) put the daemons, and the clients with slurmctld,
    on separate network hosts (tests/netns.py)."""

    def __init__(self, workdir: Path, nodes=("n1", "n2"), cpus=2, kill_wait=5, cred_expire=5, fake_gpus=1,
                 slurmd_timeout=60, addrs=None, prefix=None):
        self.dir = Path(workdir)
        self.slurmd_timeout = slurmd_timeout
        self.addrs = addrs or {}
        self.prefix = prefix or (lambda name: [])
        self.nodes = list(nodes)
        self.cpus = cpus
        self.kill_wait = kill_wait
        self.cred_expire = cred_expire
        self.fake_gpus = fake_gpus
        self.conf = self.dir / "slurm.conf"
        self.procs = {}
        self.timings = {}

    # -- daemons
    @staticmethod
    def find(exe):
        """A Slurm program on PATH or in the sbin dirs (often not on a normal user's PATH)."""
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
        return shutil.which(exe, path=path)

    def start(self):
        for exe in ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "srun", "scancel", "sinfo"):
            if self.find(exe) is None:
                pytest.fail(f"Slurm is not installed ({exe} not found): {INSTALL_HINT}", pytrace=False)
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.timings["cluster_up_s"] = time.monotonic() - t0
        return self

    def _start(self):
        for sub in ["state", "log"] + [f"spool/{n}" for n in self.nodes]:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        ports = free_ports(1 + len(self.nodes))
        host = socket.gethostname().split(".")[0]
        nodes = "\n".join(
            f"NodeName={n} NodeHostname={host} NodeAddr={self.addrs.get(n, '127.0.0.1')} Port={p} CPUs={self.cpus} "
            "State=UNKNOWN"
            + (f" Gres=gpu:{self.fake_gpus}" if self.fake_gpus else "")
            for n, p in zip(self.nodes, ports[1:]))
        # GPUs that are /dev/null: Slurm allocates them and sets SLURM_GPUS_ON_NODE and
        # CUDA_VISIBLE_DEVICES as on a GPU node (no cgroups here, so nothing opens them)
        (self.dir / "gres.conf").write_text(
            "AutoDetect=off\n" + "".join("Name=gpu File=/dev/null\n" for _ in range(self.fake_gpus)))
        self.conf.write_text(SLURM_CONF.format(
            host=host, ctld_addr=self.addrs.get("ctld", "127.0.0.1"), ctld_port=ports[0], user=getpass.getuser(),
            kill_wait=self.kill_wait, cred_expire=self.cred_expire, slurmd_timeout=self.slurmd_timeout,
            first_job_id=random.randint(100_000, 900_000), d=self.dir, nodes=nodes))
        self.procs["slurmctld"] = self._spawn([self.find("slurmctld"), "-D", "-i"], "slurmctld", "ctld")
        wait_until(lambda: self._ok(["scontrol", "ping"]) and "UP" in self.run(["scontrol", "ping"]).stdout,
                   30, what="slurmctld to answer (see log/slurmctld.out)")
        for n in self.nodes:
            self.start_slurmd(n)
        wait_until(self._all_idle, 60, what=f"Slurm nodes to be idle (see {self.dir}/log)")

    def start_slurmd(self, node):
        self.procs[f"slurmd-{node}"] = self._spawn([self.find("slurmd"), "-D", "-N", node], f"slurmd-{node}", node)

    def _spawn(self, cmd, name, where):
        out = open(self.dir / "log" / f"{name}.out", "a")
        proc = subprocess.Popen([*self.prefix(where), *cmd], env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=self.dir)
        out.close()
        time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at once ({proc.returncode}): "
                               + (self.dir / "log" / f"{name}.out").read_text()[-2000:])
        return proc

    def _all_idle(self):
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} died ({p.returncode}); see {self.dir}/log")
        r = self.run(["sinfo", "-h", "-N", "-o", "%N %T"])
        states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
        return r.returncode == 0 and all(states.get(n) == "idle" for n in self.nodes)

    def stop(self):
        """Cancel what is left, wait for it to end (its processes belong to slurmstepd), then
        stop the daemons by PID."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "--user", getpass.getuser()])
            try:
                wait_until(lambda: not self.run(["squeue", "-h"]).stdout.strip(), 60, what="jobs to end")
            except TimeoutError:
                pass
        for name in [n for n in self.procs if n != "slurmctld"] + ["slurmctld"]:
            if name in self.procs:
                stop_pid(self.procs[name], timeout=15)

    # -- clients
    def env(self, **extra):
        env = python_env(**extra)
        env["SLURM_CONF"] = str(self.conf)
        for k in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF"]:
            del env[k]  # a test run inside a Slurm job must not leak that job into ours
        return env

    def run(self, cmd, **kw):
        kw.setdefault("env", self.env())
        return subprocess.run([*self.prefix("ctld"), *cmd], capture_output=True, text=True, timeout=60, **kw)

    def _ok(self, cmd):
        return self.run(cmd).returncode == 0

    def sbatch(self, script, options=(), env=None, cwd=REPO):
        r = subprocess.run([*self.prefix("ctld"), "sbatch", "--parsable", *options, str(script)], capture_output=True,
                           text=True,
                           env=env or self.env(), cwd=cwd, timeout=60)
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
