"""How a sweep's cost grows with its size: whole sweeps of N trials, and the table of a large store.

    python benchmarks/scale.py [--sizes 20,200,2000] [--store-trials 10000] [--skip-store] [--skip-sweeps]
                               [--repo DIR]

Sweeps: `sweeps/ablation.py --experiments Exp4 --seeds N` on the built-in set (`--profile tiny`,
1 epoch, 2 folds, `--pack 1`, no pruning), each in a fresh folder. Per size: the seconds from the
command to its first stored trial (set-up), the wall seconds per trial while trials run (first to
last stored, over N-1), the driver's CPU seconds per trial (the driver process alone: user + sys,
set-up included) and its peak memory (VmHWM), and the size of Tune's experiment state.

Store: a synthetic store of --store-trials trials written with the store's own writer
(prmf.store.write_trial: one real trial's 51 result rows and history under new ids), its index
kept in step as a sweep's driver keeps it (prmf.store.read_results whenever the stored trials grew
by a quarter), then `analysis/best_results.py` over it (seconds and peak memory of its process),
and once more with the index deleted (the first read of a store written by older versions).
--repo DIR runs the sweeps and best_results of another checkout (e.g. `git archive main`) for a
before/after on the same machine; the store is always written by this checkout's writer.
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
sys.path.insert(0, str(REPO))

from prmf import store  # noqa: E402


def proc_stats(pid):
    """(CPU seconds user + sys, peak RSS bytes) of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return cpu, hwm


def run_sweep(n, storage, repo):
    """One sweep of n trials, watched from outside: set-up, wall per trial, driver CPU and memory."""
    name = f"scale-{n}"
    cmd = [sys.executable, str(repo / "sweeps" / "ablation.py"), "--experiments", "Exp4", "--seeds", str(n),
           "--epochs", "1", "--folds", "2", "--profile", "tiny", "--pack", "1", "--storage", str(storage),
           "--name", name]
    log = storage / f"{name}.log"  # a file, not a pipe: the progress lines would fill a pipe and stop the driver
    t0 = time.time()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(repo)})
        cpu = hwm = 0
        while proc.poll() is None:
            try:
                cpu, hwm = proc_stats(proc.pid)
            except (OSError, StopIteration):
                pass
            time.sleep(0.5)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"sweep of {n} trials failed ({proc.returncode}):\n{log.read_text()[-2000:]}")
    root = storage / name
    stored = sorted(os.stat(store.trial_path(root, t)).st_mtime for t in store.completed_trials(root))
    state = sum(p.stat().st_size for p in (root / "tune").glob("run-*/experiment_state*.json"))
    k = max(1, len(stored) // 10)  # the first and the last tenth of the trials: flat if they cost the same
    return {"trials": n, "wall_s": wall, "setup_s": stored[0] - t0,
            "wall_per_trial_s": (stored[-1] - stored[0]) / max(1, len(stored) - 1),
            "first_tenth_s": (stored[k] - stored[0]) / k, "last_tenth_s": (stored[-1] - stored[-1 - k]) / k,
            "driver_cpu_per_trial_s": cpu / n, "driver_peak_gb": hwm / 2 ** 30, "tune_state_kb": state / 1024}


def one_trial():
    """(results, epochs) rows of one real trial: Exp4, tiny, 5 folds, 1 epoch, robustness scenarios."""
    from prmf import records, robustness
    from prmf.config import preset_config
    from prmf.data import load_data
    from prmf.engine import train_trial
    data = load_data("synthetic", profile="tiny")
    cfg = preset_config("Exp4", epochs=1)
    res = train_trial(cfg, data, 0, 5, "cpu", scenarios=robustness.scenarios())
    results, epochs, _ = records.tables(res, tid="t", sweep="scale", experiment="Exp4", cfg=cfg, seed=0, dataset=data,
                                        status="finished", wall_time_s=1.0)
    return results, epochs


def timed_child(cmd, repo):
    """(wall seconds, peak RSS bytes) of a command, by /usr/bin/time: a child forked from this big
    process would count this process's memory in its own peak (Linux keeps it across exec)."""
    with tempfile.NamedTemporaryFile("r") as out:
        subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", out.name, *cmd], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(repo)})
        wall, kb = out.read().split()[-2:]
    return float(wall), int(kb) * 1024


def store_table(n, folder, repo):
    """Write n trials with the store's writer (index kept in step as the driver does; a folder
    that holds them already is kept), then time best_results with the index current and deleted."""
    results, epochs = one_trial()
    t0, indexed, index_s = time.time(), 0, 0.0
    for i in range(n if len(store.completed_trials(folder)) != n else 0):
        tid = f"Exp4-s{i}-scale"
        store.write_trial(folder, tid, results.assign(trial_id=tid, seed=i, acc=results.acc * (1 + i / n / 10)),
                          epochs.assign(trial_id=tid, seed=i), {})
        if i + 1 - indexed >= max(100, indexed // 4) or i + 1 == n:  # as the progress line, and the driver at its end
            t1 = time.time()
            store.read_results(folder, columns=["split", "emoval"], filters=store.CLEAN_AGGREGATE)
            index_s, indexed = index_s + time.time() - t1, i + 1
    write_s = time.time() - t0 - index_s
    best = [sys.executable, str(repo / "analysis" / "best_results.py"), "--result-dir", str(folder)]
    warm = timed_child(best, repo)
    store.index_path(folder).unlink(missing_ok=True)
    cold = timed_child(best, repo)
    again = timed_child(best, repo)
    return {"trials": n, "rows": n * len(results), "write_s": write_s, "index_upkeep_s": index_s,
            "best_results_s": warm[0], "best_results_gb": warm[1] / 2 ** 30, "no_index_s": cold[0],
            "no_index_gb": cold[1] / 2 ** 30, "rebuilt_s": again[0], "rebuilt_gb": again[1] / 2 ** 30}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="20,200,2000")
    ap.add_argument("--store-trials", type=int, default=10000)
    ap.add_argument("--skip-sweeps", action="store_true")
    ap.add_argument("--skip-store", action="store_true")
    ap.add_argument("--store", type=Path, help="write the synthetic store here and keep it (default: a temporary folder)")
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout whose sweeps and best_results run")
    args = ap.parse_args()
    repo = args.repo.resolve()
    print(f"load average {os.getloadavg()[0]:.2f} at start, {time.strftime('%H:%M UTC', time.gmtime())}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_store:
            row = store_table(args.store_trials, args.store or Path(tmp) / "store", repo)
            print("store: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
        for n in ([] if args.skip_sweeps else map(int, args.sizes.split(","))):
            row = run_sweep(n, Path(tmp), repo)
            print(f"sweep (load {os.getloadavg()[0]:.2f}): " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
            shutil.rmtree(Path(tmp) / f"scale-{n}")


if __name__ == "__main__":
    main()
