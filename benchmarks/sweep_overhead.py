"""Sweep overhead: the same trials run one by one with `python -m prmf.train` and as one Ray Tune
sweep, side by side in one run (one trial at a time in both, so only the overhead differs).

    python benchmarks/sweep_overhead.py [--experiments Exp1,Exp2,Exp3,Exp4,Exp5] [--epochs 10] [--profile small]

Overhead = wall time - the trials' own training time (from the store). The sweep's overhead is
split into a fixed part paid once per sweep (driver imports, `ray.init`, data into the object
store, Tune start and stop) and a marginal part per trial, from a second sweep of the first
trial alone: marginal = (overhead of N trials - overhead of 1) / (N - 1). The one-by-one path pays
its whole overhead (process start, imports, data load) per trial. The last line projects the
sweep's overhead share at `--project-epochs` (the paper's 150) from the measured seconds/epoch.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from prmf import store  # noqa: E402
from prmf.data import synthetic  # noqa: E402


def timed(cmd, env):
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.time() - t0


def training_seconds(root):
    return store.read_results(root).drop_duplicates("trial_id").train_time_s.sum()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", default="Exp1,Exp2,Exp3,Exp4,Exp5")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--profile", default="small", choices=["tiny", "small", "paper"])
    ap.add_argument("--project-epochs", type=int, default=150)
    args = ap.parse_args()
    exps = args.experiments.split(",")
    n = len(exps)
    assert n >= 2, "need two or more experiments to split fixed from per-trial overhead"
    common = ["--data", "synthetic", "--profile", args.profile, "--epochs", str(args.epochs)]
    env = {**os.environ, "RAY_ADDRESS": "", "OMP_NUM_THREADS": str(os.cpu_count())}
    ablation = [sys.executable, str(REPO / "sweeps" / "ablation.py"), *common, "--cpus-per-trial", str(os.cpu_count())]
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.ensure(args.profile)  # the data set exists before either path is timed
        single_wall = sum(timed([sys.executable, "-m", "prmf.train", *common, "--experiment", e,
                                 "--out", f"{tmp}/single"], env) for e in exps)
        single_train = training_seconds(f"{tmp}/single")
        sweep_wall = timed([*ablation, "--experiments", ",".join(exps), "--storage", tmp, "--name", "sweep"], env)
        sweep_train = training_seconds(f"{tmp}/sweep")
        one_wall = timed([*ablation, "--experiments", exps[0], "--storage", tmp, "--name", "one"], env)
        one_train = training_seconds(f"{tmp}/one")
    single_over = (single_wall - single_train) / n
    sweep_over, one_over = sweep_wall - sweep_train, one_wall - one_train
    marginal = (sweep_over - one_over) / (n - 1)
    fixed = one_over - marginal
    per_epoch = sweep_train / n / args.epochs
    trial_at = per_epoch * args.project_epochs
    print(f"{n} trials x {args.epochs} epochs, profile {args.profile}, {os.cpu_count()} CPUs, one trial at a time")
    print(f"one by one (python -m prmf.train): wall {single_wall:7.1f} s, training {single_train:7.1f} s, "
          f"overhead {single_over:5.2f} s/trial")
    print(f"Ray Tune sweep (sweeps/ablation.py): wall {sweep_wall:7.1f} s, training {sweep_train:7.1f} s, "
          f"overhead {sweep_over / n:5.2f} s/trial all in")
    print(f"  the first trial alone as a sweep: wall {one_wall:6.1f} s, training {one_train:6.1f} s")
    print(f"  => fixed per sweep {fixed:5.2f} s, marginal per trial {marginal:5.2f} s")
    print(f"sweep wall / one-by-one wall: {sweep_wall / single_wall:.3f}")
    print(f"at {args.project_epochs} epochs ({per_epoch:.2f} s/epoch/trial measured, a trial {trial_at:.0f} s): "
          f"marginal overhead {marginal / trial_at:.2%} of trial time; "
          f"with the fixed part spread over {n} trials {(marginal + fixed / n) / trial_at:.2%}")


if __name__ == "__main__":
    main()
