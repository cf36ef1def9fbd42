"""A sweep on a Ray cluster whose nodes are separate network hosts (tests/netns.py: one Linux network
namespace per node on a bridge of its own, 198.18.0.0/24) survives the faults a lab's cluster has
every week:

(a) a worker's machine lost mid-pack (every process of its namespace SIGKILLed) after one trial of
    the pack was stored and before the next checkpoint: the pack is retried on the other worker
    from its last checkpoint, the stored trial left out, the other to the undisturbed numbers;
(b) the head-worker link cut for longer than Ray's health check, then restored: the same;
(c) a host on the same network without the cluster token cannot join or submit work;
(d) the Slurm launcher's first node (batch step, Ray head, driver) lost: Slurm requeues the job
    and its next run resumes the pack from its checkpoint.

In (a), (b) and (d) the sweep ends with every (trial, seed, fold, split, scenario) row exactly
once, each trial's results file written once, and every column but where and when it ran (and
the logits) bit-identical to an undisturbed run of the same sweep. The head runs the driver and
no trials (0 CPUs); the two workers have one CPU each and the sweep is one pack of two trials, so
a lost node leaves one place to go. One trial of the pack stops early (min_delta 10: no gain
counts, patience 6: at epoch 7), the other runs its 20 epochs. Timings are printed at the end of
the module.
"""
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clusters import REPO, assert_token_guards, slurm_cluster_in, wait_until  # noqa: E402
from netns import NetnsCluster, netns_pids, unavailable  # noqa: E402

from prmf import store  # noqa: E402

EPOCHS = 20
GRID = "base: Exp1\nset:\n  patience: 6\ngrid:\n  min_delta: [0.0, 10.0]\n"
SWEEP_ARGS = ["--data", "synthetic", "--profile", "small", "--set", "hidden_dim=16", "--set", "batch_size=64",
              "--epochs", str(EPOCHS), "--no-asha", "--checkpoint-every", "2", "--cpus-per-trial", "1", "--pack", "2"]
VOLATILE = {"sweep", "wall_time_s", "train_time_s", "node_ip", "hostname", "node_id", "commit"}  # where, when, which tree
TIMINGS = {}
LAUNCHER = REPO / "slurm" / "launch_ray.sh"
SLURMD_TIMEOUT = 5  # s without an answer from a slurmd before Slurm declares its node down (test Slurm: 60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, data_dir):
    """One namespace cluster for the module: head, w1, w2 (and an intruder host added by (c))."""
    reason = unavailable()
    if reason:
        pytest.skip(f"no network namespaces: {reason}")
    t0 = time.monotonic()
    c = NetnsCluster(tmp_path_factory.mktemp("netns"))
    c.start()
    TIMINGS["cluster up"] = time.monotonic() - t0
    yield c
    c.stop()
    assert not any(ns.startswith(c.tag) for ns in _netns_list()), "namespaces left behind"
    print("\n[multihost timings] " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items()))


def _netns_list():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


def sweep_argv(storage: Path, name):
    grid = storage / "grid.yaml"
    grid.parent.mkdir(parents=True, exist_ok=True)
    grid.write_text(GRID)
    return [sys.executable, "sweeps/grid.py", *SWEEP_ARGS, "--grid", str(grid), "--storage", str(storage), "--name", name]


def start_sweep(c, storage: Path, name):
    """The sweep's driver, on the head host (a driver needs a raylet of its own host)."""
    return c.popen("head", [*sweep_argv(storage, name), "--address", c.address], storage / f"{name}.log")


def finish(proc, storage, name, timeout=300):
    try:
        rc = proc.wait(timeout)
    except Exception:
        proc.kill()
        raise
    log = (storage / f"{name}.log").read_text()
    assert rc == 0, log[-4000:]
    return log


@pytest.fixture(scope="module")
def straight(cluster, tmp_path_factory):
    """The undisturbed run, the reference for the disturbed ones."""
    storage = tmp_path_factory.mktemp("straight")
    t0 = time.monotonic()
    finish(start_sweep(cluster, storage, "s"), storage, "s")
    TIMINGS["undisturbed sweep"] = time.monotonic() - t0
    df = results(storage / "s")
    df.attrs["root"] = storage / "s"  # for its predictions
    return df


def results(root):
    return store.read_results(root).sort_values(store.RESULT_KEY).reset_index(drop=True)


def pack_hosts(c) -> set:
    """The workers whose namespaces run a process of the pack (Tune's function trainable actor). A
    cut-off worker's copy lives on until its raylet learns it was declared dead, beside the retry."""
    hosts = set()
    for host in ("w1", "w2"):
        for pid in netns_pids(c.ns(host)):
            try:
                if b"ImplicitFunc" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    hosts.add(host)
            except OSError:
                pass
    return hosts


def pack_host(c):
    """The one worker running the pack, or None (none, or not yet only one)."""
    hosts = pack_hosts(c)
    return hosts.pop() if len(hosts) == 1 else None


def checkpoint_epoch(root):
    epochs = [json.loads(p.read_text())["epoch"] for p in root.glob("tune/run-*/*/checkpoint_*/pack.json")]
    return max(epochs, default=0)


def files(root):
    """{results file: inode}: a trial stored again gets a new inode (stores write a temp file, then rename)."""
    return {p.name: p.stat().st_ino for p in (root / "results").glob("*.parquet")}


def run_with_fault(c, storage, name, fault, heal=None, after_store=False):
    """Start the sweep, wait until its pack has a checkpoint (`after_store`: and its early trial was
    stored), do `fault(host)` to the worker running it, `heal(host)` once the GCS declared that node
    dead; returns (host, seconds from the fault until the pack trains again on the other worker,
    files seen during the run, the trials stored before the fault, the log)."""
    proc = start_sweep(c, storage, name)
    root = storage / name
    try:
        host = wait_until(lambda: checkpoint_epoch(root) >= 2 and (bool(files(root)) or not after_store) and pack_host(c),
                          240, interval=0.05, what="the pack's first checkpoint" + (" and stored trial" if after_store else ""))
        ckpt = checkpoint_epoch(root)
        stored_before = {Path(f).stem for f in files(root)}
        assert len(stored_before) == (1 if after_store else 0), "the pack ended before the fault"
        t0 = time.monotonic()
        fault(host)
        other = {"w1": "w2", "w2": "w1"}[host]
        wait_until(lambda: c.ip(host) not in c.alive(), 60, interval=0.5, what=f"the GCS to declare {host} dead")
        t_dead = time.monotonic() - t0
        if heal:
            heal(host)
        wait_until(lambda: other in pack_hosts(c), 120, interval=0.2, what=f"the pack to run on {other}")
        t_moved = time.monotonic() - t0
        seen = {}
        while proc.poll() is None:  # the first inode of every results file, to catch a second write
            for k, v in files(root).items():
                seen.setdefault(k, v)
            time.sleep(0.1)
        log = finish(proc, storage, name)
    finally:
        if proc.poll() is None:
            proc.kill()
    return dict(host=host, other=other, ckpt=ckpt, dead_s=t_dead, moved_s=t_moved, seen=seen, log=log,
                stored_before=stored_before)


def assert_same_rows(root, straight, seen, atol=0.0):
    """Every row of the undisturbed run exactly once, every column but where and when it ran
    bit-identical (== on floats, NaN where NaN; `atol`: floats to within it), the same logits, and
    each trial stored once."""
    df = results(root)
    assert len(df) == len(straight) and not df.duplicated(store.RESULT_KEY).any()
    assert df[store.RESULT_KEY].equals(straight[store.RESULT_KEY])
    for col in sorted(set(straight.columns) - VOLATILE):
        a, b = straight[col].to_numpy(), df[col].to_numpy()
        near = np.isclose(a.astype(float), b.astype(float), rtol=0, atol=atol) if atol and a.dtype.kind == "f" else a == b
        same = near | (pd.isna(a) & pd.isna(b))
        assert same.all(), (col, a[~same], b[~same])
    assert set(df.status) == {"finished"} and df.trial_id.nunique() == 2
    for tid in df.trial_id.unique():
        assert logits(root, tid).keys() == {"cv", "test1", "test2", "test3"}
        assert all(np.allclose(x, logits(straight.attrs["root"], tid)[k], rtol=0, atol=10 * atol)
                   for k, x in logits(root, tid).items())
    assert files(root) == seen and len(seen) == 2, "a trial was stored twice"
    return df


def last_epoch(straight):
    """The pack's last epoch: its longest trial's (the other may stop by patience before EPOCHS)."""
    return int(straight.epochs_run.max())


def logits(root, tid):
    return {p.name.split("_")[0]: np.load(p, allow_pickle=False)["logits"]
            for p in (root / "predictions" / tid).glob("*.npz")}


def tune_rows(root, run="run-*"):
    return [json.loads(line) for p in root.glob(f"tune/{run}/*/result.json") for line in p.read_text().splitlines()]


def assert_same_as_straight(root, straight, run):
    # a pack resumed without a trial stored before the fault trains fewer members: float32's batched
    # kernels round by the member count, so its other trial agrees to float32 rounding (README:
    # what a trial id guarantees); a pack resumed whole is bit-identical
    df = assert_same_rows(root, straight, run["seen"], atol=1e-6 if run["stored_before"] else 0.0)
    before = df.trial_id.isin(run["stored_before"])
    assert set(df[~before].node_ip) == {run["other"]}, "the retried pack stored its trials from the other worker"
    assert set(df[before].node_ip) <= {run["host_ip"]}, "a trial stored before the fault was not stored again"
    # Tune's record of the pack: epochs 1..j on the lost node, then k+1..its last on the other, where k
    # is a checkpoint taken before the fault: the pack resumed from it, not from epoch 1
    rows = tune_rows(root)
    restart = [i for i, r in enumerate(rows) if r["iterations_since_restore"] == 1]
    assert len(restart) == 2 and restart[0] == 0, [(r["epoch"], r["node_ip"]) for r in rows]
    restart = restart[1]
    epochs = [r["epoch"] for r in rows]
    resumed = epochs[restart] - 1
    # (the lost node's last results may never have reached Tune's log: its checkpoint can be newer)
    assert resumed % 2 == 0 and run["ckpt"] <= resumed, (run["ckpt"], epochs)
    assert epochs[:restart] == list(range(1, epochs[restart - 1] + 1))
    assert epochs[restart:] == list(range(resumed + 1, last_epoch(straight) + 1))
    assert {r["node_ip"] for r in rows[:restart]} == {run["host_ip"]}
    assert {r["node_ip"] for r in rows[restart:]} == {run["other"]}


@pytest.mark.timeout(600)
def test_worker_machine_lost_mid_pack_resumes_on_the_other_worker(cluster, straight, tmp_path):
    t0 = time.monotonic()
    run = run_with_fault(cluster, tmp_path, "lost", cluster.kill, after_store=True)
    TIMINGS["(a) sweep with a lost worker"] = time.monotonic() - t0
    print(f"\n[a] {run['host']} lost at checkpoint epoch {run['ckpt']}: declared dead after {run['dead_s']:.1f}s, "
          f"pack training on {run['other']} after {run['moved_s']:.1f}s")
    run.update(host_ip=cluster.ip(run["host"]), other=cluster.ip(run["other"]))
    assert_same_as_straight(tmp_path / "lost", straight, run)
    cluster.start_node(run["host"])  # the machine comes back: the next test has two workers again
    cluster.wait_nodes(3)


@pytest.mark.timeout(600)
def test_worker_cut_off_past_the_health_check_resumes_on_the_other_worker(cluster, straight, tmp_path):
    t0 = time.monotonic()
    run = run_with_fault(cluster, tmp_path, "cut", cluster.cut, heal=cluster.heal)
    TIMINGS["(b) sweep with a cut link"] = time.monotonic() - t0
    print(f"\n[b] {run['host']} cut at checkpoint epoch {run['ckpt']}: declared dead after {run['dead_s']:.1f}s, "
          f"link restored, pack training on {run['other']} after {run['moved_s']:.1f}s")
    run.update(host_ip=cluster.ip(run["host"]), other=cluster.ip(run["other"]))
    assert_same_as_straight(tmp_path / "cut", straight, run)
    # the cut node, back on the network, learns that the GCS declared it dead (or, cut off for more
    # than 10 s, gives up on the GCS) and ends its processes, the half-trained pack included
    wait_until(lambda: cluster.procs[run["host"]].poll() is not None, 60, what=f"{run['host']}'s Ray to exit")
    cluster.start_node(run["host"])
    cluster.wait_nodes(3)


@pytest.mark.timeout(300)
def test_host_without_the_token_cannot_join_or_submit(cluster):
    t0 = time.monotonic()
    cluster.add_host("x", 9)  # a third machine on the same network
    x = cluster.cmd("x", [])
    # the network lets it in: the GCS port answers; only the token keeps it out
    probe = f"import socket; socket.create_connection(({cluster.ip('head')!r}, {cluster.address.split(':')[1]}), 5)"
    assert cluster.run("x", [sys.executable, "-c", probe], timeout=30).returncode == 0
    # a driver (ray.init) without the token or with a wrong one is refused; with it, it joins
    fast = {"RAY_NUM_REDIS_GET_RETRIES": "2"}  # the refused client gives up after 2 tries, not 20
    assert_token_guards(cluster.address, cluster.token, prefix=x, **fast)
    # a node (ray start) without the token is refused, and the cluster still has its 3 nodes
    env = cluster.child_env(RAY_AUTH_MODE="disabled", **fast)
    del env["RAY_AUTH_TOKEN_PATH"]
    r = cluster.run("x", ["ray", "start", "--address", cluster.address, "--num-cpus", "1", "--block",
                          "--temp-dir", str(cluster.tmp / "x")], timeout=120, env=env)
    assert r.returncode != 0 and "AuthenticationError" in r.stderr, r.stderr[-2000:]
    assert cluster.alive() == [cluster.ip(h) for h in ("head", "w1", "w2")]
    assert not netns_pids(cluster.ns("x")), "the refused node left processes behind"
    TIMINGS["(c) intruder refused"] = time.monotonic() - t0


@pytest.mark.timeout(600)
def test_slurm_head_node_lost_the_requeued_job_resumes(cluster, straight, tmp_path):
    """slurmctld on a host of its own, the job on n1 (the launcher's batch step, Ray head and
    driver) and n2 (a Ray worker); n1 loses power mid-pack. Slurm declares n1 down and requeues the
    job (NODE_FAIL, --requeue); n1 comes back, the job runs again and resumes from the checkpoint."""
    for host, index in (("ctl", 10), ("n1", 11), ("n2", 12)):
        cluster.add_host(host, index)
    addrs = {"ctld": cluster.ip("ctl"), "n1": cluster.ip("n1"), "n2": cluster.ip("n2")}
    t0 = time.monotonic()
    with slurm_cluster_in(tmp_path / "slurm", cpus=1, fake_gpus=0, slurmd_timeout=SLURMD_TIMEOUT, addrs=addrs,
                          prefix=lambda name: cluster.enter("ctl" if name == "ctld" else name)) as slurm:
        storage, log = tmp_path / "store", tmp_path / "job.log"
        root = storage / "d"
        env = slurm.env(PRMF_STORAGE=storage, PRMF_SWEEP_CMD=shlex.join(sweep_argv(storage, "d")),
                        PRMF_PYTHON=sys.executable, PRMF_VENV="", PRMF_STOP_TIMEOUT=60)
        for k in ("RAY_AUTH_MODE", "RAY_ADDRESS"):
            env.pop(k, None)  # the launcher's defaults: a token per job, its own head
        job = slurm.sbatch(LAUNCHER, ["--job-name=d", "--nodes=2", "--cpus-per-task=1", "--gpus-per-node=0",
                                      "--time=20", f"--output={log}"], env=env)
        ckpt = wait_until(lambda: checkpoint_epoch(root) >= 2 and checkpoint_epoch(root), 240, interval=0.1,
                          what=f"the pack's first checkpoint (job log {log})")
        assert not files(root), "the pack ended before the fault"
        t_fault = time.monotonic()
        assert cluster.kill("n1") > 0
        slurm.wait_state(job, "PENDING", 120, log)  # NODE_FAIL, then requeued by Slurm
        t_requeued = time.monotonic()
        info = slurm.job(job)
        assert info["Restarts"] == "1", info
        slurm.start_slurmd("n1")  # the machine is back
        seen = {}

        def completed():
            for k, v in files(root).items():
                seen.setdefault(k, v)
            return slurm.state(job) == "COMPLETED"
        wait_until(completed, 300, interval=0.2, what=f"job {job} to complete after its requeue (log {log})")
        t_done = time.monotonic()
    TIMINGS["(d) Slurm job with a lost head node"] = time.monotonic() - t0
    print(f"\n[d] n1 lost at checkpoint epoch {ckpt}: job requeued after {t_requeued - t_fault:.1f}s, "
          f"completed {t_done - t_fault:.1f}s after the fault")
    text = log.read_text()
    assert text.count("sweep driver exited with status 0") == 1, text[-4000:]
    df = assert_same_rows(root, straight, seen)
    assert set(df.node_ip) <= {addrs["n1"], addrs["n2"]}  # Ray ran on the allocation's own network
    # the requeued job's Tune run resumed the pack from a checkpoint of the first run, not from epoch 1
    again = [r["epoch"] for r in tune_rows(root, "run-001")]
    assert again == list(range(again[0], last_epoch(straight) + 1)) and again[0] - 1 >= ckpt, again
