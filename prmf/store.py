"""The result store: Parquet tables and MERBench-named NPZ predictions, written atomically.

Layout of a store directory (one per sweep, or per `python -m prmf.train --out DIR`):

    DIR/results/{trial_id}.parquet   one row per (fold-or-aggregate, split, scenario) of one trial
    DIR/epochs/{trial_id}.parquet    per-epoch history of that trial (one row per fold and epoch)
    DIR/predictions/{trial_id}/{split}_features:..._model:...+utt+None_f1:..._acc:..._val:..._{ts}.npz

A trial (one config x one seed) owns exactly one file in each table, named by its id, so a
trial written twice (a resumed sweep replaying its end) replaces its rows instead of doubling
them, and many workers on a shared filesystem never write the same file. Every file is written
to a temporary name and renamed, so a killed writer leaves no half file; the results file is
written last and marks the trial complete.
"""
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

AGGREGATE = -1  # `fold` value of the rows that aggregate all folds (cv mean, fold-averaged test)
RESULT_KEY = ["trial_id", "experiment", "seed", "fold", "split", "scenario"]  # identical presets share a trial


class StoreError(Exception):
    """A store file that cannot be read or written."""


def umask() -> int:
    """This process's umask, read without changing it (Linux's /proc; elsewhere set and restore)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write):
    """Write through `write(tmp_path)` to a temporary file, then rename it over `path`.

    The file gets the umask's mode (mkstemp makes 0600), so teammates on a shared store can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_table(path, df: pd.DataFrame):
    atomic_write(Path(path), lambda tmp: pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp))


def prediction_name(split, features, dataset, model, feat_type, f1, acc, val, timestamp):
    """MERBench's result file name (its `main-release.py`), so its own tools can read ours."""
    feats = "+".join(sorted(features))
    return (f"{split}_features:{feats}_dataset:{dataset}_model:{model}+{feat_type}+None"
            f"_f1:{f1:.4f}_acc:{acc:.4f}_val:{val:.4f}_{timestamp}.npz")


def write_trial(store_dir, trial_id, results: pd.DataFrame, epochs: pd.DataFrame, predictions: dict):
    """Write one trial: predictions, history, then the results file that marks it complete.

    `predictions` maps an NPZ file name to a dict of plain arrays (no objects: loads without pickle).
    """
    store = Path(store_dir)
    pred_dir = store / "predictions" / trial_id
    store.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=store, prefix=f".pred-{trial_id}."))
    try:
        for name, arrays in predictions.items():
            for key, arr in arrays.items():
                if np.asarray(arr).dtype == object:
                    raise StoreError(f"prediction array {key!r} of {name} has dtype object (would need pickle)")
            np.savez(tmp_dir / name, **arrays)
        os.chmod(tmp_dir, 0o777 & ~umask())  # mkdtemp makes 0700
        if pred_dir.exists():
            shutil.rmtree(pred_dir)
        pred_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_dir, pred_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    write_table(store / "epochs" / f"{trial_id}.parquet", epochs)
    write_table(store / "results" / f"{trial_id}.parquet", results)


def completed_trials(store_dir):
    """Ids of the trials whose results file exists (so whose work is done)."""
    d = Path(store_dir) / "results"
    return {p.stem for p in d.glob("*.parquet")} if d.is_dir() else set()


def _read_parts(folder: Path, what: str) -> pd.DataFrame:
    parts = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    frames = []
    for p in parts:
        try:
            frames.append(pq.read_table(p).to_pandas())
        except Exception as e:  # a corrupt part names itself; the caller decides to stop or skip
            raise StoreError(f"{p}: unreadable {what} file ({type(e).__name__}: {e})") from None
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_results(store_dir) -> pd.DataFrame:
    """All result rows of a store as one DataFrame (empty if there are none)."""
    return _read_parts(Path(store_dir) / "results", "results")


def read_epochs(store_dir) -> pd.DataFrame:
    """The per-epoch history of every trial of a store."""
    return _read_parts(Path(store_dir) / "epochs", "epoch history")


def is_store(path) -> bool:
    return (Path(path) / "results").is_dir()


def timestamp() -> int:
    return int(time.time())


def config_json(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


def check_writable(folder, what="folder"):
    """Raise StoreError unless `folder` exists or could be created, and a file can be written in it.

    Checked before any work (hours of training must not end in 'permission denied'); creates nothing.
    """
    path = Path(folder).absolute()
    if path.exists() and not path.is_dir():
        raise StoreError(f"{what} {path} is a file, not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise StoreError(f"{what} {path} cannot be created: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise StoreError(f"{what} {path} cannot be written ({e.strerror or e})") from None
