"""A Slurm on this one host, to try slurm/launch_ray.sh without a cluster (and the tests' Slurm).

    slurm/local-slurm.sh                       # one node: this host's CPUs and its NVIDIA GPUs
    slurm/local-slurm.sh --dir /tmp/s --nodes n1,n2 --cpus 2 --fake-gpus 1   # what the tests run

It writes DIR/slurm.conf and starts slurmctld and one slurmd per node name as its own children,
in the foreground, then prints `export SLURM_CONF=DIR/slurm.conf` for the shells that submit;
Ctrl-C (or SIGTERM) cancels the jobs left and stops the daemons by PID (never by name).

The configuration needs no root and no system service: AuthType=auth/none, CredType=cred/none,
ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, no accounting, no cgroups, no munge;
state, spool, logs and the config live in DIR, the ports are chosen free. Several nodes run as
several slurmd on this host (`slurmd -N NAME`), so a job can get a multi-node allocation. GPUs
are GRES: the host's /dev/nvidiaN, or with --fake-gpus GPUs whose device file is /dev/null
(Slurm allocates them and sets CUDA_VISIBLE_DEVICES as on a GPU node; nothing opens them).
cred_expire and a 2 s scheduler interval are short, so a requeued job starts again within
seconds instead of Slurm's default 2 minutes; KillWait is Slurm's 30 s unless --kill-wait says
otherwise (the tests use 5).
"""
import argparse
import getpass
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cluster.free_ports import free_ports

DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "squeue", "srun", "scancel", "sinfo")
INSTALL_HINT = "run `slurm/install-test-slurm.sh` (apt-get install slurm-wlm); make test does it"

SLURM_CONF = """\
ClusterName=prmflocal
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
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class SlurmMissing(RuntimeError):
    pass


def find(exe):
    """A Slurm program on PATH or in the sbin dirs (often not on a normal user's PATH)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
    return shutil.which(exe, path=path)


def wait_until(pred, timeout, interval=0.5, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


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


def host_gpus():
    """The NVIDIA GPU device files of this host (/dev/nvidia0, ...)."""
    return sorted(glob.glob("/dev/nvidia[0-9]*"), key=lambda p: int(p[len("/dev/nvidia"):]))


class LocalSlurm:
    """slurmctld and one slurmd per node name, all on this host, started and stopped by PID.
    `addrs` ({"ctld" or node name: IP}, default 127.0.0.1) and `prefix` (name -> the argv that runs
    a command on that host, e.g. `nsenter --net=...`) put the daemons, and the clients with
    slurmctld, on separate network hosts (the tests' network namespaces)."""

    def __init__(self, workdir, nodes=("local",), cpus=None, gpu_files=None, partition="local",
                 kill_wait=5, cred_expire=5, slurmd_timeout=60, addrs=None, prefix=None):
        self.dir = Path(workdir).resolve()
        self.nodes = list(nodes)
        self.cpus = cpus or os.cpu_count()
        self.gpu_files = host_gpus() if gpu_files is None else list(gpu_files)
        self.partition = partition
        self.kill_wait = kill_wait
        self.cred_expire = cred_expire
        self.slurmd_timeout = slurmd_timeout
        self.addrs = addrs or {}
        self.prefix = prefix or (lambda name: [])
        self.conf = self.dir / "slurm.conf"
        self.procs = {}

    def env(self, base=None):
        """`base` (default: this process's environment) for Slurm's programs on this cluster:
        SLURM_CONF, and no SLURM_* variables of a job this runs in (they would leak that job into ours)."""
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, cmd, **kw):
        kw.setdefault("env", self.env())
        return subprocess.run([*self.prefix("ctld"), *cmd], capture_output=True, text=True, timeout=60, **kw)

    def start(self):
        missing = [exe for exe in DAEMONS + CLIENTS if find(exe) is None]
        if missing:
            raise SlurmMissing(f"Slurm is not installed ({missing[0]} not found): {INSTALL_HINT}")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        for sub in ["state", "log"] + [f"spool/{n}" for n in self.nodes]:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        ports = free_ports(1 + len(self.nodes))
        host = socket.gethostname().split(".")[0]
        gres = f" Gres=gpu:{len(self.gpu_files)}" if self.gpu_files else ""
        nodes = "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr={self.addrs.get(n, '127.0.0.1')} Port={p} "
                          f"CPUs={self.cpus}{gres} State=UNKNOWN" for n, p in zip(self.nodes, ports[1:]))
        (self.dir / "gres.conf").write_text("AutoDetect=off\n" + "".join(f"Name=gpu File={f}\n" for f in self.gpu_files))
        self.conf.write_text(SLURM_CONF.format(
            host=host, ctld_addr=self.addrs.get("ctld", "127.0.0.1"), ctld_port=ports[0], user=getpass.getuser(),
            kill_wait=self.kill_wait, slurmd_timeout=self.slurmd_timeout,
            cred_expire=self.cred_expire, first_job_id=random.randint(100_000, 900_000), d=self.dir, nodes=nodes,
            partition=self.partition))
        self.procs["slurmctld"] = self._spawn([find("slurmctld"), "-D", "-i"], "slurmctld", "ctld")
        wait_until(lambda: "UP" in self.run(["scontrol", "ping"]).stdout, 30,
                   what=f"slurmctld to answer (see {self.dir}/log)")
        for n in self.nodes:
            self.start_slurmd(n)
        wait_until(self._all_idle, 60, what=f"Slurm nodes to be idle (see {self.dir}/log)")

    def start_slurmd(self, node):
        """(Re)start a node's slurmd (a node lost and back, in the tests)."""
        self.procs[f"slurmd-{node}"] = self._spawn([find("slurmd"), "-D", "-N", node], f"slurmd-{node}", node)

    def _spawn(self, cmd, name, where):
        with open(self.dir / "log" / f"{name}.out", "a") as out:
            proc = subprocess.Popen([*self.prefix(where), *cmd], env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.dir)
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


def _running_slurmctld(d: Path):
    """The PID of a slurmctld still running from folder d (a second start there would take over
    its state and logs), else None."""
    try:
        pid = int((d / "slurmctld.pid").read_text().split()[0])
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"slurmctld" in cmd else None


def main(argv=None):
    ap = argparse.ArgumentParser(prog="slurm/local-slurm.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=f"/tmp/prmf-slurm-{getpass.getuser()}",
                    help="config, state and logs (default: %(default)s)")
    ap.add_argument("--nodes", default="local", help="comma-separated node names, each one slurmd (default: local)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs per node (default: this host's, %(default)s)")
    ap.add_argument("--fake-gpus", type=int, default=None, metavar="N",
                    help="N GPUs per node backed by /dev/null (default: the host's /dev/nvidiaN, %d)" % len(host_gpus()))
    ap.add_argument("--partition", default="local")
    ap.add_argument("--kill-wait", type=int, default=30,
                    help="seconds from a job's SIGTERM to its SIGKILL, Slurm's KillWait (default: %(default)s, Slurm's own; "
                         "the launcher stops the sweep and Ray in that time)")
    args = ap.parse_args(argv)
    nodes = [n for n in args.nodes.split(",") if n]
    if not nodes or args.cpus < 1 or (args.fake_gpus or 0) < 0:
        print("error: --nodes needs a name, --cpus at least 1, --fake-gpus at least 0", file=sys.stderr)
        return 2
    running = _running_slurmctld(Path(args.dir))
    if running:
        print(f"error: a local Slurm already runs from {args.dir} (slurmctld PID {running}): use it "
              f"(export SLURM_CONF={Path(args.dir).resolve() / 'slurm.conf'}) or stop it first", file=sys.stderr)
        return 2
    slurm = LocalSlurm(args.dir, nodes, args.cpus, None if args.fake_gpus is None else ["/dev/null"] * args.fake_gpus,
                       args.partition, kill_wait=args.kill_wait)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    try:
        slurm.start()
    except (SlurmMissing, RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"local Slurm up: {len(nodes)} node(s) {','.join(nodes)} with {slurm.cpus} CPUs and "
          f"{len(slurm.gpu_files)} GPU(s) each, partition {args.partition}; logs in {slurm.dir}/log\n"
          f"In another shell, from the repository root:\n"
          f"    export SLURM_CONF={slurm.conf}\n"
          f"    PRMF_DATA=synthetic bash slurm/launch_ray.sh --check   # what the job would get, no allocation\n"
          f"    PRMF_DATA=synthetic sbatch --cpus-per-task={min(slurm.cpus, 8)}"
          f"{'' if slurm.gpu_files else ' --gpus-per-node=0'} slurm/launch_ray.sh\n"
          f"Ctrl-C here cancels its jobs and stops slurmctld and slurmd (by PID).", flush=True)
    while not stop and all(p.poll() is None for p in slurm.procs.values()):
        time.sleep(0.5)
    died = [n for n, p in slurm.procs.items() if p.poll() is not None]
    slurm.stop()
    print(f"local Slurm stopped{f' ({died[0]} died; see {slurm.dir}/log)' if died else ''}", flush=True)
    return 1 if died else 0


if __name__ == "__main__":
    sys.exit(main())
