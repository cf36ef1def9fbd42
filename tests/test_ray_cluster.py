"""A two-node Ray cluster on this host (cluster/start_local_cluster.sh: head and worker as separate
`ray start --block` processes) runs the tiny ablation sweep through --address: trials land on
both nodes and the results are complete. Plus the address resolution and the `ray up` configs.
"""
import copy
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clusters import REPO, local_ray_cluster, python_env  # noqa: E402

from cluster.address import resolve_address  # noqa: E402

SWEEP_ARGS = ["--data", "synthetic", "--profile", "small", "--experiments", "Exp1,Exp4",
              "--epochs", "2", "--folds", "5", "--seeds", "1"]


def test_resolve_address_order():
    env = {"RAY_ADDRESS": "10.0.0.1:6379"}
    assert resolve_address("10.0.0.2:7000", env) == "10.0.0.2:7000"   # the flag wins
    assert resolve_address(None, env) == "10.0.0.1:6379"              # then RAY_ADDRESS
    assert resolve_address(None, {}) is None                           # then a local Ray
    assert resolve_address("", {"RAY_ADDRESS": " "}) is None           # empty = not given
    assert resolve_address(" auto ", {}) == "auto"


@pytest.mark.parametrize("name", ["ray-cluster.yaml", "ray-cluster-aws.yaml"])
def test_cluster_launcher_configs_validate(name):
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = yaml.safe_load((REPO / "cluster" / name).read_text())
    prepared = prepare_config(copy.deepcopy(config))  # fills Ray's defaults; contacts no cloud
    validate_config(prepared)
    commands = " ".join(prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in commands


@pytest.mark.timeout(600)
def test_two_node_ray_cluster_runs_sweep_on_both_nodes(tmp_path, data_dir):
    env = python_env(RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    t0 = time.monotonic()
    # each node advertises one (fake) GPU: a sweep asking for GPUs is refused in one line by the
    # torch on the workers, which has no CUDA here, before any trial starts
    with local_ray_cluster(tmp_path / "ray", workers=1, cpus_per_node=1, env=env, gpus_per_node=1) as address:
        t_up = time.monotonic()
        storage = tmp_path / "store"
        import torch
        if not torch.cuda.is_available():
            r = subprocess.run([sys.executable, "sweeps/ablation.py", *SWEEP_ARGS, "--address", address, "--num-gpus", "2",
                                "--storage", str(storage), "--name", "gpus"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
            assert r.returncode == 2 and len(errors) == 1 and "has no CUDA" in errors[0], r.stderr[-3000:]
            assert "Traceback" not in r.stderr and not (storage / "gpus" / "results").exists()
            t_up = time.monotonic()
        r = subprocess.run([sys.executable, "sweeps/ablation.py", *SWEEP_ARGS, "--address", address,
                            "--storage", str(storage), "--name", "two-node"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        t_done = time.monotonic()
        assert r.returncode == 0, r.stderr[-4000:]
    print(f"\n[cluster timings] local 2-node Ray cluster up {t_up - t0:.1f}s, sweep {t_done - t_up:.1f}s")

    from prmf.store import read_results
    df = read_results(storage / "two-node")
    assert set(df.experiment) == {"Exp1", "Exp4"}
    assert set(df.status) == {"finished"}
    assert set(df.fold.dropna()) == {0, 1, 2, 3, 4} and df.fold.isna().equals(df.is_aggregate)
    assert set(df.split) == {"cv", "test1", "test2", "test3"}
    assert not df.duplicated(["trial_id", "seed", "fold", "split", "scenario"]).any()
    # one CPU per node and one CPU per trial: the two trials ran at once, one on each node
    assert (df.groupby("trial_id").node_id.nunique() == 1).all()
    assert df.node_id.nunique() == 2, df.groupby("trial_id").node_id.first()
    # the script stopped its nodes by PID and removed their temp dir
    log = (tmp_path / "ray" / "cluster.log").read_text()
    run_dir = re.search(r"temp dir (\S+)", log).group(1)
    assert "stopped" in log and not Path(run_dir).exists()
