"""A Ray cluster whose nodes are separate network hosts: each node in a Linux network namespace.

Used by tests/test_multihost.py (imported, not a conftest). Layout, all made here and removed in
`stop()`, even after a failure:

- a switch namespace `<tag>-sw` holding a bridge `br0` and no address: a plain Ethernet switch;
- one namespace per node (`<tag>-head`, `<tag>-w1`, ...) with `lo` and `eth0`, a veth whose peer
  (named after the node) is plugged into the bridge; address 198.18.0.N/24 (198.18.0.0/15 is
  reserved for test networks, RFC 2544). No default route and no link to the host's network: a
  node can reach the other nodes and nothing else, and nothing outside reaches them.

The namespaces share the host's filesystem and PIDs (as nodes share an NFS store), not its
network. Every node is `ray start --block --node-ip-address 198.18.0.N` in its namespace, with a
token (RAY_AUTH_MODE=token). A node "loses its machine" when every process of its namespace gets
SIGKILL (`ip netns pids`); a cable is pulled by setting its bridge port down. Nothing is ever
stopped by name and `ray stop` is never run.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clusters import REPO, python_env, stop_pid

from sweeps.ray_local import write_token  # noqa: E402  (clusters put the repository on sys.path)

SUBNET = "198.18.0"
GCS_PORT = 6379  # each namespace has a port space of its own: fixed ports cannot collide
# Ray's failure detection, shortened so a test waits seconds, not a minute: the GCS checks each
# raylet every second and declares it dead after 3 failed checks of 1 s (defaults 3 s, 10 s, 5);
# a raylet that cannot reach the GCS for 10 s exits (default 60 s)
FAST_FAILURE = {"RAY_health_check_initial_delay_ms": 1000, "RAY_health_check_period_ms": 1000,
                "RAY_health_check_timeout_ms": 1000, "RAY_health_check_failure_threshold": 3,
                "RAY_gcs_rpc_server_reconnect_timeout_s": 10}


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can), for pytest.skip."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CI runs as root)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"prmf{os.getpid()}-probe"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def netns_pids(ns) -> list:
    r = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []


def kill_netns(ns, rounds=20) -> int:
    """SIGKILL every process in namespace `ns` (as a machine that loses power), repeated while
    new ones appear (a dying parent may have forked), at most `rounds` times; returns how many."""
    killed = set()
    for _ in range(rounds):
        pids = [p for p in netns_pids(ns) if p not in killed]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed.add(pid)
        time.sleep(0.1)
    return len(killed)


def remove_stale():
    """Namespaces and Ray temp dirs this helper left behind in a test process that was killed (its
    PID is gone)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        m = re.match(r"(prmf(\d+)-\w+)", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            kill_netns(m.group(1))
            _ip("netns", "del", m.group(1), check=False)
    for d in Path("/tmp").glob("prmf*-ns*"):
        m = re.fullmatch(r"prmf(\d+)-ns\w+", d.name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            shutil.rmtree(d, ignore_errors=True)


class NetnsCluster:
    """Hosts, one network namespace each, on one switch; with `start(ray=True)` a Ray head (no CPUs:
    it runs the driver only) on host `head` and a Ray worker on every other host."""

    def __init__(self, workdir, hosts=("head", "w1", "w2"), worker_cpus=1):
        self.dir = Path(workdir)
        self.tag = f"prmf{os.getpid()}"
        self.hosts = {h: i for i, h in enumerate(hosts, 1)}
        self.worker_cpus = worker_cpus
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.tag}-ns", dir="/tmp"))  # short: Ray's socket paths < 107 bytes
        self.token = self.dir / "ray_auth_token"
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token),
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.procs = {}
        self.made = []  # namespaces created, for stop()

    # -- names and addresses
    def ns(self, host):
        return f"{self.tag}-{host}"

    def ip(self, host):
        return f"{SUBNET}.{self.hosts[host]}"

    @property
    def address(self):
        return f"{self.ip('head')}:{GCS_PORT}"

    # -- the network
    def _add_ns(self, name):
        _ip("netns", "add", name)
        self.made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, host, index):
        """A namespace for `host` at 198.18.0.`index`, cabled to the switch."""
        self.hosts[host] = index
        ns, sw = self.ns(host), self.ns("sw")
        self._add_ns(ns)
        _ip("-n", sw, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", sw, "link", "set", host, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{self.ip(host)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")

    def cut(self, host):
        """Pull `host`'s cable: its switch port goes down, its packets go nowhere."""
        _ip("-n", self.ns("sw"), "link", "set", host, "down")

    def heal(self, host):
        _ip("-n", self.ns("sw"), "link", "set", host, "up")

    # -- processes
    def cmd(self, host, argv):
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def enter(self, host):
        """The argv prefix that runs a command in `host`'s network only: unlike `ip netns exec` it
        keeps the host's mounts (a fresh /sys has no /sys/fs/cgroup, which slurmd needs)."""
        return ["nsenter", f"--net=/run/netns/{self.ns(host)}"]

    def child_env(self, **extra):
        return python_env(**{**self.env, **extra})

    def popen(self, host, argv, log, **extra_env):
        out = open(log, "a")
        try:
            return subprocess.Popen(self.cmd(host, argv), env=self.child_env(**extra_env), cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            out.close()

    def run(self, host, argv, timeout=300, env=None):
        return subprocess.run(self.cmd(host, argv), env=env or self.child_env(), cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)

    def start_node(self, host):
        """`ray start --block` in `host`'s namespace; the head gets no CPUs (trials run on workers)."""
        temp = self.tmp / host
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
        argv = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--temp-dir", str(temp),
                "--node-ip-address", self.ip(host), "--min-worker-port", "0", "--max-worker-port", "0",
                "--disable-usage-stats"]
        if host == "head":
            argv += ["--head", "--port", str(GCS_PORT), "--num-cpus", "0", "--include-dashboard=false"]
        else:
            argv += ["--address", self.address, "--num-cpus", str(self.worker_cpus)]
        self.procs[host] = self.popen(host, argv, self.dir / f"{host}.log", **FAST_FAILURE)

    def alive(self, timeout=60) -> list:
        """The IPs of the nodes the GCS holds alive, asked by a driver in the head's namespace."""
        code = (f"import json, ray; ray.init(address={self.address!r}, log_to_driver=False); "
                "print('alive:', json.dumps(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])))")
        r = self.run("head", [sys.executable, "-c", code], timeout=timeout)
        line = [x for x in r.stdout.splitlines() if x.startswith("alive: ")]
        assert r.returncode == 0 and line, r.stdout[-1000:] + r.stderr[-3000:]
        return json.loads(line[-1][7:])

    def wait_nodes(self, n, timeout=90):
        """Poll (cluster/wait_for_nodes.py) until `n` nodes are alive; fail at once if a node exits."""
        pids = [a for p in self.procs.values() if p.poll() is None for a in ("--pid", str(p.pid))]
        r = self.run("head", [sys.executable, "-m", "cluster.wait_for_nodes", self.address, str(n),
                              "--timeout", str(timeout), *pids], timeout=timeout + 30)
        if r.returncode != 0:
            logs = "".join(f"--- {h} ---\n{(self.dir / f'{h}.log').read_text()[-1500:]}" for h in self.procs)
            raise RuntimeError(f"{r.stdout}{r.stderr[-2000:]}\n{logs}")

    def kill(self, host) -> int:
        """Every process of `host` gets SIGKILL: its machine is gone."""
        n = kill_netns(self.ns(host))
        if host in self.procs:
            self.procs[host].wait(10)
        return n

    # -- life
    def start(self, ray=True):
        remove_stale()
        self.dir.mkdir(parents=True, exist_ok=True)
        write_token(self.token)
        try:
            self._add_ns(self.ns("sw"))
            _ip("-n", self.ns("sw"), "link", "add", "br0", "type", "bridge")
            _ip("-n", self.ns("sw"), "link", "set", "br0", "up")
            for host, index in list(self.hosts.items()):
                self.add_host(host, index)
            if ray:
                for host in self.hosts:
                    self.start_node(host)  # workers retry until the head's GCS answers
                self.wait_nodes(len(self.hosts))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """SIGKILL every process in our namespaces, then delete them (with the veths and the bridge)."""
        for ns in reversed(self.made):
            kill_netns(ns)
        for p in self.procs.values():
            stop_pid(p, timeout=5)
        for ns in reversed(self.made):
            _ip("netns", "del", ns, check=False)
        self.made = []
        shutil.rmtree(self.tmp, ignore_errors=True)
