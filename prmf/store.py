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
import errno
import glob
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

# The store's schema (docs/SCHEMA.md); its version is in every Parquet file's metadata, and the
# readers bring files of every earlier version to this one (upgrade_results / upgrade_epochs).
#   1: aggregate rows had fold = -1; a robustness scenario 'all' repeated the clean rows; the epoch
#      history's validation MSE was `val_val_mse` and it had no sweep or experiment.
#   2: an `is_aggregate` column (fold is null there); no 'all' rows; `val_mse`; sweep and experiment.
#   3: fidelity 'published' (the new default); the former default 'seeds_code' reads as 'design_plan'
#      (what it trained: the design plan's code); the loop's keys optimizer, lr_schedule, modality_dropout_z.
#   4: the config key `precision`; rows written before it ran in fp32.
#   5: `random_streams`: 'member' (each member draws from its own stream, so a trial's numbers do not
#      depend on its pack); rows written before read 'pack' (one generator fed a whole pack).
SCHEMA_VERSION = 5
# What the config keys added in schema 3 were for every row written before them (docs/FIDELITY.md).
BEFORE_V3 = {"optimizer": "adamw", "lr_schedule": "plateau", "modality_dropout_z": True}
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
    result_file, epoch_file = store / "results" / f"{trial_id}.parquet", store / "epochs" / f"{trial_id}.parquet"
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


def completed_trials(store_dir):
    """Ids of the trials whose results file exists (so whose work is done)."""
    d = Path(store_dir) / "results"
    return {p.stem for p in d.glob("*.parquet")} if d.is_dir() else set()


def trial_result(store_dir, trial_id):
    """A stored trial's result, the number a search maximises: its aggregate clean cv emoval (the
    mean over folds of each fold's best-epoch validation emoval); None while it is not stored, or
    when it has none (diverged)."""
    path = Path(store_dir) / "results" / f"{trial_id}.parquet"
    if not path.exists():
        return None
    try:
        df = read_part(path)
    except StoreError:  # a foreign Parquet file in results/ (a trial's own is never half there): no result
        return None
    row = df[df.is_aggregate & (df.split == "cv") & (df.scenario == "clean")]
    value = float(row.emoval.iloc[0]) if len(row) else float("nan")
    return value if np.isfinite(value) else None


def upgrade_results(df: pd.DataFrame, version: int) -> pd.DataFrame:
    """Result rows of schema `version` as this version's."""
    if version < 2 and "fold" in df:
        df = df[df.get("scenario", pd.Series("", index=df.index)) != "all"].copy()  # 'all' repeated clean
        df.insert(df.columns.get_loc("fold"), "is_aggregate", df["fold"] == -1)
        df["fold"] = df["fold"].astype("Int64").mask(df["is_aggregate"])
    if version < 3:
        df = df.copy()
        # trained with the design plan's modality dropout (the default then), never the published file's
        df["fidelity"] = df["fidelity"].replace({"seeds_code": "design_plan"}) if "fidelity" in df else "design_plan"
        for key, value in BEFORE_V3.items():
            if key not in df:
                df[key] = value
    if version < 4 and "precision" not in df:
        df = df.assign(precision="fp32")  # every run before the key was fp32
    if version < 5 and "random_streams" not in df:
        df = df.assign(random_streams="pack")  # trained with one generator per pack
    return df


def upgrade_epochs(df: pd.DataFrame, version: int) -> pd.DataFrame:
    """Epoch rows of schema `version` as this version's."""
    if version < 2:
        df = df.rename(columns={"val_val_mse": "val_mse"})
        for i, col in enumerate(("sweep", "experiment")):
            if col not in df:
                df.insert(i, col, None)
    return df


def read_part(path: Path, table="results") -> pd.DataFrame:
    """One Parquet file of a store (`results` or `epochs`), brought to this schema version."""
    try:
        t = pq.read_table(path)
    except Exception as e:  # a corrupt part names itself; the caller decides to stop or skip
        raise StoreError(f"{path}: unreadable {table} file ({type(e).__name__}: {e})") from None
    version = int((t.schema.metadata or {}).get(SCHEMA_KEY, b"1"))
    missing = [c for c in REQUIRED[table] if c not in t.column_names]
    if missing:  # a Parquet file of something else, put in the store's folder by hand
        raise StoreError(f"{path}: not a {table} file of this store (no column {', '.join(missing)})")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path}: written by a newer prmf-sweep (schema {version} > {SCHEMA_VERSION}); update it")
    return (upgrade_results if table == "results" else upgrade_epochs)(t.to_pandas(), version)


def _read_parts(store_dir, table: str, warn=None) -> pd.DataFrame:
    store = Path(store_dir)
    if not is_store(store):
        raise StoreError(f"{store}: no result store here (no results/ folder)")
    frames = []
    for path in sorted((store / table).glob("*.parquet")):
        try:
            frames.append(read_part(path, table))
        except StoreError as e:  # with `warn`: said and left out (a foreign or damaged file), the other trials kept
            if warn is None:
                raise
            warn(f"{e}; left out")
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _read_stores(paths, table: str, warn=None) -> pd.DataFrame:
    """`table` of every store named: folders, or glob patterns of folders ('runs/*': the stores
    among the matches). Columns are the union by name over all files: a column some rows lack (one
    added since their store was written, and not upgraded to a value) is missing (NaN) there."""
    stores = []
    for path in map(str, paths):
        if glob.has_magic(path):
            found = [p for p in sorted(glob.glob(path)) if is_store(p)]
            if not found:
                raise StoreError(f"{path}: no result store matches")
            stores += found
        else:
            stores.append(path)
    frames = [f for f in (_read_parts(s, table, warn) for s in stores) if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_results(*store_dirs, warn=None) -> pd.DataFrame:
    """All result rows of one store or several (`read_results("runs/*")`, or folders) as one
    DataFrame, at this schema version, columns unioned by name (StoreError if a folder holds no
    store; an empty frame if they hold no finished trial yet). A file that cannot be read, or is
    not the store's, is a StoreError; with `warn(message)` it is said and left out instead."""
    return _read_stores(store_dirs, "results", warn)


def read_epochs(*store_dirs) -> pd.DataFrame:
    """The per-epoch history of every trial of one store or several, at this schema version."""
    return _read_stores(store_dirs, "epochs")


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
