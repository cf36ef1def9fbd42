"""The built-in set's ablation table in fp32 and in bf16-mixed, cell by cell: `make demo`'s sweep run
twice, whole commands timed one after the other, then per preset and split the ACC (mean over the
5 folds of the clean per-fold rows) in both, their difference and the larger of the two fold
standard deviations; a Markdown table on stdout.

    python benchmarks/precision_table.py [--profile small] [--epochs 15] [--quick]

`--quick` (default on) is the demo's settings (epochs 15, batch 64, lr 1e-3); every row of the
paper's table is run (sweeps/ablation.py). A cell whose |difference| exceeds the larger fold std is
marked.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16-mixed")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="small", choices=["tiny", "small", "paper"])
    ap.add_argument("--epochs", type=int, help="epochs per fold (default: --quick's 15)")
    ap.add_argument("--quick", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    from prmf import store
    work = Path(tempfile.mkdtemp(prefix="precision-table-"))
    walls, tables = {}, {}
    print(f"load average {os.getloadavg()[0]:.2f} at start", file=sys.stderr)
    for precision in PRECISIONS:
        cmd = [sys.executable, str(REPO / "sweeps" / "ablation.py"), "--data", "synthetic", "--profile", args.profile,
               "--storage", str(work), "--name", precision, "--set", f"precision={precision}"]
        cmd += (["--quick"] if args.quick else []) + (["--epochs", str(args.epochs)] if args.epochs else [])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""})
        walls[precision] = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"error: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        df = store.read_results(work / precision)
        folds = store.clean_rows(df[df.status == "finished"], aggregate=False)
        tables[precision] = folds.groupby(["experiment", "split"]).acc.agg(["mean", "std"])
        print(f"{precision}: {walls[precision]:.1f} s, load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    a, b = (tables[p] for p in PRECISIONS)
    print("| preset | split | ACC fp32 | ACC bf16-mixed | difference | larger fold std |")
    print("|---|---|---:|---:|---:|---:|")
    beyond = 0
    for (experiment, split), row in a.iterrows():
        other = b.loc[(experiment, split)]
        diff, std = other["mean"] - row["mean"], max(row["std"], other["std"])
        beyond += abs(diff) > std
        print(f"| {experiment} | {split} | {row['mean']:.4f} | {other['mean']:.4f} | {diff:+.4f}"
              f"{' **' if abs(diff) > std else ''} | {std:.4f} |")
    print(f"\n{beyond} of {len(a)} cells differ by more than the larger fold std; whole sweeps: fp32 "
          f"{walls['fp32']:.1f} s, bf16-mixed {walls['bf16-mixed']:.1f} s ({walls['fp32'] / walls['bf16-mixed']:.2f}x)")


if __name__ == "__main__":
    main()
