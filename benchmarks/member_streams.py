"""The cost of per-member random streams: a training step of one config (Exp4, 5 folds = 5 members)
and of a pack of 9 grid points (45 members) at paper dims, before and after, side by side.

    python benchmarks/member_streams.py [--before REV] [--profile paper] [--repeat 3] [--steps 3] [--threads N]

"Before" is the code at REV (default: the last commit whose packs shared torch's global generator),
checked out into a temporary git worktree; "after" is this checkout. Each (code, size) runs in its
own process (`--child`), the two codes interleaved `--repeat` times; a process builds the engine,
takes one untimed step, then times `--steps` training steps (Engine.time_steps: forward, loss,
backward, clipping, AdamW; every member's dropout masks, modality dropout and VAE noise drawn;
modality dropout at its full rate). The best of the repeats is kept per (code, size), and the
ratio after/before printed (best and median, and every run) with the load average (the machine is shared: compare within a run).
`--clock cpu --threads 1` times the process's CPU seconds instead of wall seconds: on a machine
shared with other work, what a step costs rather than how long it waited.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEFORE = "9a2b490"  # main before per-member streams
GRID = REPO / "sweeps" / "configs" / "prmf_grid.yaml"


def child(size, profile, steps, threads):
    """One engine of `size` grid points x 5 folds at `profile` dims: seconds per training step."""
    import torch
    sys.path.insert(0, str(REPO / "benchmarks"))
    from grid_throughput import grid_trials

    from prmf.data import load_data
    from prmf.engine import Engine
    torch.set_num_threads(threads)
    data = load_data("synthetic", profile=profile)
    trials = grid_trials(GRID, epochs=150)[:size]
    engine = Engine(trials, data, 5, device="cpu")
    engine.time_steps(1, warmup=1)  # first touch, allocations
    cpu0 = time.process_time()
    wall = engine.time_steps(steps, warmup=0)
    print(wall, (time.process_time() - cpu0) / steps)


def run(tree, size, args):
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(size), "--profile", args.profile,
           "--steps", str(args.steps), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: {tree} size {size}: {proc.stderr.strip().splitlines()[-1:]}")
    wall, cpu = map(float, proc.stdout.strip().splitlines()[-1].split())
    return cpu if args.clock == "cpu" else wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default=BEFORE, help=f"the code to compare with (a git revision; default {BEFORE})")
    ap.add_argument("--profile", default="paper", help="built-in set's dims (default paper: 1024, 5120, 768)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--sizes", default="1,9", help="grid points per engine (x 5 folds = members)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall seconds per step, or the process's CPU seconds (with --threads 1, what a step costs on a loaded machine)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.profile, args.steps, args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(before), args.before], check=True)
        try:
            times = {}
            load0 = os.getloadavg()[0]
            for _ in range(args.repeat):
                for size in sizes:
                    for name, tree in (("before", before), ("after", REPO)):
                        times.setdefault((name, size), []).append(run(tree, size, args))
            load1 = os.getloadavg()[0]
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], check=False)
    print(f"per-member streams: {args.clock} seconds per training step, {args.profile} dims, {args.threads} threads, best of "
          f"{args.repeat} (load {load0:.2f} -> {load1:.2f}, {time.strftime('%Y-%m-%d %H:%M')})")
    for size in sizes:
        b, a = (sorted(times[name, size]) for name in ("before", "after"))
        print(f"  {size} config(s) x 5 folds = {5 * size} members: before {b[0] * 1e3:.1f} ms, after {a[0] * 1e3:.1f} ms, "
              f"after/before {a[0] / b[0]:.3f} (best); medians {b[len(b) // 2] * 1e3:.1f} and {a[len(a) // 2] * 1e3:.1f} ms, "
              f"{a[len(a) // 2] / b[len(b) // 2]:.3f}")
        print(f"    every run, ms: before {[round(t * 1e3, 1) for t in times['before', size]]}, "
              f"after {[round(t * 1e3, 1) for t in times['after', size]]}")


if __name__ == "__main__":
    sys.exit(main())
