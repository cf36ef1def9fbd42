"""Whole sweeps side by side: the same grid run with `--pack 1`, `--pack auto` (measuring, then with
its timings cached), fixed pack sizes, in fp32 and bf16-mixed; wall seconds of the whole command
(Ray's start, the packs, scoring, storing, the summary), ratios to `--pack 1` in the same
precision, the load average, and what `--pack auto` printed.

    python benchmarks/sweep_packing.py [--grid FILE] [--epochs 3] [--profile paper] [--packs 1,auto,auto,5]
                                       [--precisions fp32,bf16-mixed] [--cpus-per-trial 1] [--num-gpus 0] [--repeat 1]

The default grid is the issue's 9 points (kl_weight x recon_weight on Exp4); `--no-asha`, so every
point runs its epochs. Modes run one after another, interleaved over `--repeat` rounds; every run
is a fresh sweep (its own --name) in a temporary storage. The first `auto` of a round measures (its
timings cache is emptied before it: PRMF_DATA_DIR points to a private folder holding a link to the
generated data); a second `auto` in `--packs` reuses what the first cached.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID9 = "base: Exp4\ngrid:\n  kl_weight: [0.005, 0.01, 0.02]\n  recon_weight: [0.05, 0.1, 0.2]\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", help="grid YAML (default: the 9-point kl_weight x recon_weight grid on Exp4)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--profile", default="paper", choices=["tiny", "small", "paper"])
    ap.add_argument("--packs", default="1,auto", help="comma-separated --pack values, in the order run")
    ap.add_argument("--precisions", default="fp32")
    ap.add_argument("--cpus-per-trial", default="1")
    ap.add_argument("--num-gpus", default="0")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    from prmf.data import synthetic
    data = synthetic.ensure(args.profile)
    work = Path(tempfile.mkdtemp(prefix="sweep-packing-"))
    private = work / "data"
    private.mkdir()
    (private / data.name).symlink_to(data)  # the generated set, without the user's pack-timings cache
    grid = Path(args.grid) if args.grid else work / "grid9.yaml"
    if not args.grid:
        grid.write_text(GRID9)
    env = {**os.environ, "PRMF_DATA_DIR": str(private), "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
    packs, precisions = args.packs.split(","), args.precisions.split(",")
    print(f"grid {grid.name}, {args.epochs} epochs, {args.profile}, --cpus-per-trial {args.cpus_per_trial}, "
          f"--num-gpus {args.num_gpus}; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    walls = {}
    for r in range(args.repeat):
        for precision in precisions:
            (private / "pack-timings.json").unlink(missing_ok=True)
            seen_auto = False
            for pack in packs:
                mode = pack if pack != "auto" else ("auto (cached)" if seen_auto else "auto (measuring)")
                seen_auto |= pack == "auto"
                name = f"r{r}-{precision}-{pack}-{len(walls)}"
                cmd = [sys.executable, str(REPO / "sweeps" / "grid.py"), "--grid", str(grid), "--profile", args.profile,
                       "--epochs", str(args.epochs), "--no-asha", "--pack", pack, "--cpus-per-trial",
                       args.cpus_per_trial, "--num-gpus", args.num_gpus, "--storage", str(work / "runs"), "--name", name]
                if precision != "fp32":
                    cmd += ["--set", f"precision={precision}"]
                load0 = os.getloadavg()[0]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if proc.returncode:
                    sys.exit(f"error: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
                said = [line for line in proc.stderr.splitlines() if line.startswith(("--pack auto:", "packs:"))]
                walls.setdefault((precision, mode), []).append(wall)
                print(f"  round {r + 1} {precision:10s} --pack {mode:16s} {wall:7.1f} s  load {load0:.2f} -> "
                      f"{os.getloadavg()[0]:.2f}", flush=True)
                for line in said:
                    print(f"      {line}", flush=True)
    print(f"best of {args.repeat}; load average {os.getloadavg()[0]:.2f} at the end:")
    for (precision, mode), times in walls.items():
        base = min(walls[(precision, "1")]) if (precision, "1") in walls else None
        ratio = f"  {base / min(times):.2f}x --pack 1" if base else ""
        print(f"  {precision:10s} --pack {mode:16s} {min(times):7.1f} s{ratio}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
