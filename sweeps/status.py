"""`prmf-status STORE[/NAME]`: where a sweep stands, from its folder's files alone (no Ray), so it
answers from a login node while the sweep runs on other nodes, and after its driver died.

    prmf-status runs/                      every sweep in the store, one line each
    prmf-status runs/grid-synthetic-small  one sweep: its trials by state, best so far, last progress, ETA

What it reads: `results/` (the stored trials: done, pruned, diverged, and their cv emoval),
`progress.json` (the driver's last progress: time, how far each pack is, the ETA; written with the
progress line), `packs.json` and `search/` (the trials of the packs, the points proposed), and the
driver's lock: a driver holds `driver.lock` (flock, also across NFS) while it runs. A trial neither
stored nor in a running pack is pending (an interrupted one resumes from its checkpoint).
"""
import argparse
import fcntl
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import pandas as pd

from prmf import store
from prmf.store import StoreError
from sweeps.lock import LOCK_FILE

PROGRESS = "progress.json"
STATES = ("done", "running", "pending", "pruned", "diverged")
STORED = {"finished": "done", "pruned": "pruned", "diverged": "diverged", "failed": "diverged"}


def write_progress(root, n_trials, packs, epochs, best, eta_s):
    """The driver's progress as of now (`packs`: {pack id: (epochs run, Tune's state)})."""
    record = {"time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), "trials": n_trials, "epochs": epochs,
              "packs": {p: {"epoch": e, "state": s} for p, (e, s) in packs.items()},
              "best": best if math.isfinite(best) else None, "eta_s": eta_s if math.isfinite(eta_s) else None}
    try:
        store.atomic_write(Path(root) / PROGRESS, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    except OSError:  # a full disk: the run goes on (a pack's store write says so in one line); the next line retries
        pass


def driver(root):
    """'host H PID P' of the driver running the sweep now, or None. A shared lock taken and dropped
    at once: the driver's exclusive one refuses it."""
    path = Path(root) / LOCK_FILE
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return path.read_text().strip() or "a driver"
    finally:
        os.close(fd)


def _json(path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or from a sweep that never got that far
        return default


def trials(root) -> pd.DataFrame:
    """One row per trial of the sweep: trial_id, state, epoch (run so far), cv_emoval (stored ones)."""
    root = Path(root)
    packs, progress, running = _json(root / "packs.json", {}), _json(root / PROGRESS, {}), driver(root)
    proposed = [p.stem for p in sorted((root / "search").glob("*.json"))] if (root / "search").is_dir() else []
    rows = {t: {"trial_id": t, "state": "pending", "epoch": 0, "cv_emoval": math.nan}
            for t in [t for tids in packs.values() for t in tids] + proposed}
    for pid, p in progress.get("packs", {}).items():
        for t in packs.get(pid, [pid]):  # a search's pack is its one trial
            rows.setdefault(t, {"trial_id": t, "state": "pending", "epoch": 0, "cv_emoval": math.nan})
            rows[t]["epoch"] = p["epoch"]
            if running and p["state"] == "RUNNING":
                rows[t]["state"] = "running"
    for t in store.completed_trials(root):
        try:
            df = store.read_trial(root, t)
        except store.StoreError:  # a foreign file in results/: no trial of this sweep
            continue
        if df.empty:  # removed since it was listed
            continue
        cv = store.clean_rows(df)
        cv = cv[cv.split == "cv"]
        rows[t] = {"trial_id": t, "state": STORED.get(str(df.status.iloc[0]), "done"), "epoch": int(df.epochs_run.max()),
                   "cv_emoval": float(cv.emoval.iloc[0]) if len(cv) else math.nan}
    return pd.DataFrame(list(rows.values()), columns=["trial_id", "state", "epoch", "cv_emoval"])


def _when(t):
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def summary(root) -> dict:
    """The sweep's state in one dict: name, kind, state, trials by state, best, last progress, ETA."""
    root = Path(root)
    table, progress, running = trials(root), _json(root / PROGRESS, {}), driver(root)
    counts = {s: int((table.state == s).sum()) for s in STATES}
    total = max(progress.get("trials", 0), len(table))
    counts["pending"] += total - len(table)  # an Optuna search's points not proposed yet
    finished = table[table.state == "done"]
    best = finished.loc[finished.cv_emoval.idxmax()] if finished.cv_emoval.notna().any() else None
    last = progress.get("time")
    eta = progress.get("eta_s")
    if eta is not None and running:
        eta = max(0.0, eta - (time.time() - last))
    state = "running" if running else "finished" if counts["pending"] == 0 and counts["running"] == 0 else "stopped"
    return {"sweep": root.name, "kind": _json(root / "sweep.json", {}).get("kind", "?"), "state": state,
            "driver": running, "trials": total, **counts,
            "best": None if best is None else (best.trial_id, float(best.cv_emoval)),
            "last_progress": last, "eta_s": eta if running else None}


def _eta(seconds):
    return "-" if seconds is None else time.strftime("%H:%M:%S", time.gmtime(seconds))


def show_sweep(root):
    s, table = summary(root), trials(root)
    held = f" (driver: {s['driver']})" if s["driver"] else ""
    best = f"{s['best'][0]}, cv emoval {s['best'][1]:.4f}" if s["best"] else "-"
    last = _when(s["last_progress"]) if s["last_progress"] else "-"
    print(f"sweep {s['sweep']} ({s['kind']}) at {Path(root).resolve()}: {s['state']}{held}")
    print("trials: " + ", ".join(f"{s[k]} {k}" for k in STATES) + f" (of {s['trials']})")
    print(f"best so far: {best}")
    print(f"last progress: {last}; ETA {_eta(s['eta_s'])}")
    if s["state"] == "stopped":
        print("no driver runs it: run the same command again to resume it")
    if not table.empty:
        order = {k: i for i, k in enumerate(STATES)}
        table = table.sort_values(["state", "trial_id"], key=lambda c: c.map(order) if c.name == "state" else c)
        print(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}"))


def sweeps_in(store_dir):
    """The sweep folders in a store folder (those with settings or results)."""
    return [d for d in sorted(Path(store_dir).iterdir()) if d.is_dir() and ((d / "sweep.json").exists() or store.is_store(d))]


def show_store(store_dir):
    rows = []
    for d in sweeps_in(store_dir):
        s = summary(d)
        rows.append({"sweep": s["sweep"], "kind": s["kind"], "state": s["state"], "trials": s["trials"],
                     **{k: s[k] for k in STATES}, "best": s["best"][1] if s["best"] else math.nan,
                     "last progress": _when(s["last_progress"]) if s["last_progress"] else "-", "ETA": _eta(s["eta_s"])})
    if not rows:
        print(f"no sweeps in {store_dir}")
        return
    print(pd.DataFrame(rows).to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="prmf-status", description="Where the sweeps in a store, or one sweep, stand "
                                 "(from the store's files: no Ray; works while a sweep runs elsewhere, or after it died).")
    ap.add_argument("path", help="a store folder (STORAGE: every sweep in it) or one sweep's (STORAGE/NAME)")
    args = ap.parse_args(argv)
    path = Path(args.path)
    try:
        if not path.is_dir():
            raise StoreError(f"{path}: not a folder")
        if (path / "sweep.json").exists() or store.is_store(path):
            show_sweep(path)
        else:
            show_store(path)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
