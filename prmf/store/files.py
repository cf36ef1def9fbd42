"""The result store: Parquet tables and MERBench-named NPZ predictions, written atomically.

Layout of a store directory (one per sweep, or per `python -m prmf.train --out DIR`):

    DIR/results/{trial_id}.parquet   one row per (fold-or-aggregate, split, scenario) of one trial
    DIR/epochs/{trial_id}.parquet    per-epoch history of that trial (one row per fold and epoch)
    DIR/predictions/{trial_id}/{split}_features:..._model:...+utt+None_f1:..._acc:..._val:..._{ts}.npz
    DIR/index/{results,epochs}.parquet   the per-trial files compacted, kept in step by the readers

A trial (one config x one seed) owns exactly one file in each table, named by its id, so a
trial written twice (a resumed sweep replaying its end) replaces its rows instead of doubling
them, and many workers on a shared filesystem never write the same file. Every file is written
to a temporary name and renamed, so a killed writer leaves no half file; the results file is
written last and marks the trial complete. The index is only a cache of those files
(prmf/store/table.py): deleted, it is rebuilt.
"""
import errno
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

from ..compat import SCHEMA_VERSION, upgrade_epochs, upgrade_results

# The store's schema (docs/SCHEMA.md); its version (prmf.compat) is in every Parquet file's metadata,
# and the readers bring files of every earlier version to this one.
SCHEMA_KEY = b"prmf_schema_version"
RESULT_KEY = ["trial_id", "experiment", "seed", "is_aggregate", "fold", "split", "scenario"]  # identical presets share a trial
# Columns of every schema version's files: a Parquet file without them is not the store's.
REQUIRED = {"results": ("trial_id", "split"), "epochs": ("trial_id", "epoch")}


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # errnos of a full disk or quota


class StoreError(Exception):
    """A store file that cannot be read or written."""


def umask() -> int:
    """This process's umask, read without changing it (Linux's /proc; elsewhere set and restore)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
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
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), SCHEMA_KEY: str(SCHEMA_VERSION).encode()})
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


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
    pred_dir = predictions_dir(store, trial_id)
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
    result_file, epoch_file = trial_path(store, trial_id), trial_path(store, trial_id, "epochs")
    fresh = not result_file.exists()
    try:
        write_table(epoch_file, epochs)
        write_table(result_file, results)
    except BaseException:  # a full disk, a signal: a trial not stored before leaves none of its files
        if fresh and not result_file.exists():
            epoch_file.unlink(missing_ok=True)
            shutil.rmtree(pred_dir, ignore_errors=True)
        raise


def write_problem(e: OSError, folder) -> str:
    """What went wrong writing in `folder`, in words: a full disk (or quota) is said as such."""
    if e.errno in DISK_FULL:
        return f"the disk holding {folder} is full ({os.strerror(e.errno)})"
    return f"cannot write in {folder} ({e.strerror or e}{f': {e.filename}' if e.filename else ''})"


def trial_path(store_dir, trial_id, table="results") -> Path:
    """The file of one trial in a table (`results` or `epochs`); the results file marks it stored."""
    return Path(store_dir) / table / f"{trial_id}.parquet"


def predictions_dir(store_dir, trial_id) -> Path:
    return Path(store_dir) / "predictions" / trial_id


def is_stored(store_dir, trial_id) -> bool:
    """Whether a trial's work is done (its results file exists: finished, pruned or diverged)."""
    return trial_path(store_dir, trial_id).exists()


def table_files(store_dir, table="results") -> dict:
    """{trial id: (inode, size, mtime_ns)} of a table's files (one directory listing, no reads);
    a writer's temporary files (.NAME.tmp) are not part of it."""
    try:
        entries = list(os.scandir(Path(store_dir) / table))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out = {}
    for e in entries:
        if e.name.endswith(".parquet") and not e.name.startswith("."):
            try:
                st = e.stat()
            except FileNotFoundError:  # replaced or removed while listed
                continue
            out[e.name[:-len(".parquet")]] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def completed_trials(store_dir) -> set:
    """Ids of the trials whose results file exists (so whose work is done): one listing, no stat."""
    try:
        names = os.listdir(Path(store_dir) / "results")
    except (FileNotFoundError, NotADirectoryError):
        return set()
    return {n[:-len(".parquet")] for n in names if n.endswith(".parquet") and not n.startswith(".")}


def read_file(path: Path, table="results") -> tuple:
    """(Arrow table, schema version) of one file of a store; StoreError if unreadable or newer."""
    try:
        with pq.ParquetFile(path) as f:  # half the cost of pq.read_table's dataset path, for one small file
            t = f.read()
    except Exception as e:  # a corrupt part names itself; the caller decides to stop or skip
        raise StoreError(f"{path}: unreadable {table} file ({type(e).__name__}: {e})") from None
    version = int((t.schema.metadata or {}).get(SCHEMA_KEY, b"1"))
    missing = [c for c in REQUIRED[table] if c not in t.column_names]
    if missing:  # a Parquet file of something else, put in the store's folder by hand
        raise StoreError(f"{path}: not a {table} file of this store (no column {', '.join(missing)})")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path}: written by a newer prmf-sweep (schema {version} > {SCHEMA_VERSION}); update it")
    return t, version


def upgrade(df: pd.DataFrame, version: int, table="results") -> pd.DataFrame:
    """Rows of a `table` of schema `version` as this version's (prmf.compat)."""
    return (upgrade_results if table == "results" else upgrade_epochs)(df, version)


def read_part(path: Path, table="results") -> pd.DataFrame:
    """One Parquet file of a store (`results` or `epochs`), brought to this schema version."""
    t, version = read_file(path, table)
    return upgrade(t.to_pandas(), version, table)


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
