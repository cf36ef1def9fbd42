"""Sweep overhead: the same trials run one by one with `python -m prmf.train` and as one Ray Tune
sweep, side by side in one run (one trial at a time in both, so only the overhead differs).

    python benchmarks/sweep_overhead.py [--experiments Exp1,Exp2,Exp3,Exp4,Exp5] [--epochs 10] [--profile small]

Prints each path's wall time, the trials' own training time (from the store), and the Tune
overhead per trial: (sweep wall - sum of training time) / trials, against the same for the
one-by-one path (process start, imports, data load).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prmf import store  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", default="Exp1,Exp2,Exp3,Exp4,Exp5")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--profile", default="small", choices=["tiny", "small", "paper"])
    args = ap.parse_args()
    exps = args.experiments.split(",")
    common = ["--data", "synthetic", "--profile", args.profile, "--epochs", str(args.epochs)]
    env = {**os.environ, "RAY_ADDRESS": "", "OMP_NUM_THREADS": str(os.cpu_count())}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "prmf.data.synthetic", "--out", f"{tmp}/warm", "--profile", "tiny"],
                       check=True, capture_output=True)  # warm the page cache and imports once
        t0 = time.time()
        for e in exps:
            subprocess.run([sys.executable, "-m", "prmf.train", *common, "--experiment", e, "--out", f"{tmp}/single"],
                           check=True, env=env, capture_output=True)
        single_wall = time.time() - t0
        single_train = store.read_results(f"{tmp}/single").drop_duplicates("trial_id").train_time_s.sum()

        t0 = time.time()
        subprocess.run([sys.executable, str(REPO / "sweeps" / "ablation.py"), *common, "--experiments", args.experiments,
                        "--cpus-per-trial", str(os.cpu_count()), "--storage", tmp, "--name", "sweep"],
                       check=True, env=env, capture_output=True)
        sweep_wall = time.time() - t0
        sweep_train = store.read_results(f"{tmp}/sweep").drop_duplicates("trial_id").train_time_s.sum()
    n = len(exps)
    print(f"{n} trials x {args.epochs} epochs, profile {args.profile}, {os.cpu_count()} CPUs, one trial at a time")
    print(f"one by one (python -m prmf.train): wall {single_wall:7.1f} s, training {single_train:7.1f} s, "
          f"overhead {(single_wall - single_train) / n:5.2f} s/trial")
    print(f"Ray Tune sweep (sweeps/ablation.py): wall {sweep_wall:7.1f} s, training {sweep_train:7.1f} s, "
          f"overhead {(sweep_wall - sweep_train) / n:5.2f} s/trial")
    print(f"sweep wall / one-by-one wall: {sweep_wall / single_wall:.3f}; "
          f"sweep overhead share of trial time: {(sweep_wall - sweep_train) / sweep_train:.1%}")


if __name__ == "__main__":
    main()
