"""Reading a store's tables whole: the per-trial files folded into one compacted file per table
(DIR/index/{table}.parquet), kept in step by whoever reads, so a sweep of 10,000 trials reads in
one file instead of 10,000.

The per-trial files are the truth; the index is a cache of them at this schema version. It names
the files it holds with their (inode, size, mtime); a read lists the table's folder (no file
opened), drops the rows of files gone or changed, reads the new ones (grouped by schema version,
each group upgraded once) and, if anything changed, writes the index again atomically (a reader
that cannot write there only skips that). A file modified within RACY_NS of the index being built
is not trusted to it (its mtime could repeat), so it is read again next time. A missing, damaged
or older index is rebuilt.
"""
import glob
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..compat import SCHEMA_VERSION
from .files import (SCHEMA_KEY, StoreError, atomic_write, is_store, read_file, read_part, table_files,
                    trial_path, upgrade)

INDEX_KEY = b"prmf_index"  # the index's metadata: {trial id: [inode, size, mtime_ns]} of the files in it
FILE = "_file"  # the index's column naming each row's file (its trial id)
RACY_NS = 2 * 10 ** 9
READERS = min(4, 2 * (os.cpu_count() or 1))  # threads reading new trial files (more add memory, not speed, on 2 cores)
BATCH = 256  # trial files joined into one table at a time
FOLD_IN = 100  # trials stored since the index was written that a reader reads from their files, not rewriting it


def index_path(store_dir, table="results") -> Path:
    return Path(store_dir) / "index" / f"{table}.parquet"


def clean_rows(df: pd.DataFrame, aggregate=True) -> pd.DataFrame:
    """The clean-scenario rows of result rows: the fold aggregates (default) or the per-fold rows."""
    if df.empty:
        return df
    return df[(df["is_aggregate"] if aggregate else ~df["is_aggregate"]) & (df["scenario"] == "clean")]


CLEAN_AGGREGATE = [("is_aggregate", "==", True), ("scenario", "==", "clean")]  # clean_rows as a reader's filter


def _manifest(path: Path):
    """The index's {file: [inode, size, mtime_ns]}, or None when it is missing, damaged or of another version."""
    try:
        meta = pq.read_schema(path).metadata or {}
        if int(meta.get(SCHEMA_KEY, b"0")) != SCHEMA_VERSION:
            return None
        return {k: tuple(v) for k, v in json.loads(meta[INDEX_KEY]).items()}
    except Exception:  # absent or unreadable: rebuilt from the files
        return None


def _encoded(t: pa.Table) -> pa.Table:
    """String columns dictionary-encoded: a trial's rows repeat its config text, ids and names, so
    the index of 10,000 trials holds each once per trial instead of once per row (~10x less memory)."""
    for i, f in enumerate(t.schema):
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            t = t.set_column(i, f.name, pc.dictionary_encode(t.column(i)))
    return t


def _decoded(t: pa.Table) -> pa.Table:
    """Dictionary columns back to plain strings (pandas would make them categoricals)."""
    for i, f in enumerate(t.schema):
        if pa.types.is_dictionary(f.type):
            t = t.set_column(i, f.name, t.column(i).cast(f.type.value_type))
    return t


def _concat(tables: list):
    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def _read_new(store, table, names, warn):
    """The rows of `names` as one Arrow table at this schema version (an index column FILE added),
    files of one older version upgraded together; (table or None, names read). Files are read in
    threads and joined BATCH at a time, so 10,000 small tables never wait side by side."""
    def read(name):
        try:
            t, version = read_file(trial_path(store, name, table), table)
            return t.append_column(FILE, pa.array([name] * t.num_rows, pa.string())), version
        except StoreError as e:
            return e

    by_version, done = {}, []
    with ThreadPoolExecutor(READERS) as pool:  # Parquet decoding lets go of the GIL
        for start in range(0, len(names), BATCH):
            batch, tables = names[start:start + BATCH], {}
            for name, got in zip(batch, pool.map(read, batch)):
                if isinstance(got, StoreError):
                    if not trial_path(store, name, table).exists():  # removed since the listing
                        continue
                    if warn is None:
                        raise got
                    warn(f"skipped {got}")
                    continue
                tables.setdefault(got[1], []).append(got[0])
                done.append(name)
            for version, ts in tables.items():
                t = _concat(ts).combine_chunks()
                by_version.setdefault(version, []).append(_encoded(t) if version == SCHEMA_VERSION else t)
    out = []
    for version, tables in sorted(by_version.items()):
        t = _concat(tables)
        if t is not None and version < SCHEMA_VERSION:  # once per version, not per file
            t = _encoded(pa.Table.from_pandas(upgrade(t.to_pandas(), version, table), preserve_index=False))
        out.append(t)
    return _concat(out), done


def _write_index(path, t, manifest):
    meta = {**(t.schema.metadata or {}), SCHEMA_KEY: str(SCHEMA_VERSION).encode(),
            INDEX_KEY: json.dumps(manifest).encode()}
    try:
        atomic_write(path, lambda tmp: pq.write_table(t.replace_schema_metadata(meta), tmp))
    except OSError:
        pass  # a store this reader may not write (a teammate's): the files stay the truth


def _of_files(t, names):
    return t.filter(pc.is_in(t[FILE].cast(pa.string()), value_set=pa.array(sorted(names), pa.string())))


def refresh(store_dir, table="results", warn=None, fold_in=FOLD_IN):
    """Bring the index of `table` in step with its files: (index, extra), Arrow tables with the
    FILE column. index: the whole table when the index had to be rewritten, None when the one on
    disk holds every trial it needs to. extra: the rows of trials stored since, read from their
    files, when they are at most `fold_in` and nothing else changed (the index is not rewritten
    for a few trials; a sweep's driver folds them in on its own schedule with fold_in=0)."""
    store, path = Path(store_dir), index_path(store_dir, table)
    files = table_files(store, table)
    manifest = _manifest(path)
    keep = {f for f, stat in (manifest or {}).items() if files.get(f) == stat}
    new = sorted(set(files) - keep)
    if manifest is not None and len(keep) == len(manifest) and len(new) <= fold_in:
        return None, (_read_new(store, table, new, warn)[0] if new else None)
    started = time.time_ns()
    old = None
    if keep:
        try:
            old = pq.read_table(path)
            old = _of_files(old, keep)
        except Exception:  # damaged past its metadata: rebuilt from the files
            old, keep = None, set()
    added, read = _read_new(store, table, sorted(set(files) - keep), warn)
    full = _concat([old, added])
    trusted = {f: files[f] for f in keep | set(read) if files[f][2] < started - RACY_NS}
    if full is not None and trusted != manifest:  # the index holds the rows of the trusted files alone
        racy = len(trusted) < len(keep) + len(read)
        _write_index(path, _of_files(full, trusted) if racy else full, trusted)
    elif full is None and manifest:
        path.unlink(missing_ok=True)  # every trial of the index is gone
    return (full if full is not None else pa.table({FILE: pa.array([], pa.string())})), None


def _rows(t, keep, filters):
    t = t.filter(pq.filters_to_expression(filters)) if filters and t.num_rows else t
    return t.select([c for c in keep if c in t.schema.names])


def read_table(store_dir, table="results", columns=None, filters=None, warn=None, fold_in=FOLD_IN) -> pd.DataFrame:
    """All rows of a store's `table` (results or epochs) at this schema version, through its index:
    only `columns` (None: all) of the rows `filters` keeps (pyarrow's [(column, op, value)], e.g.
    CLEAN_AGGREGATE). An unreadable or newer file raises StoreError, or with `warn` is skipped
    with a warning naming it. StoreError if DIR holds no store; an empty frame if no trial is stored.
    `fold_in`: see refresh."""
    if not is_store(store_dir):
        raise StoreError(f"{store_dir}: no result store here (no results/ folder)")
    full, extra = refresh(store_dir, table, warn, fold_in)
    index = index_path(store_dir, table)
    names = list(full.schema.names if full is not None else pq.read_schema(index).names)
    names += [c for c in (extra.schema.names if extra is not None else ()) if c not in names]
    if filters and not {f[0] for f in filters} <= set(names):
        return pd.DataFrame()  # rows without the filter's columns: none can match
    keep = [c for c in (columns if columns is not None else names) if c in names and c != FILE]
    if full is None:  # the projection and the filter pushed into the Parquet reader
        on_disk = set(pq.read_schema(index).names)
        t = pq.read_table(index, columns=[c for c in keep if c in on_disk], filters=filters)
    else:
        t = _rows(full, keep, filters)
    t = _concat([t, _rows(extra, keep, filters) if extra is not None else None])
    return _decoded(t.select(keep)).to_pandas() if t is not None and t.num_rows else pd.DataFrame()


def stores(paths) -> list:
    """The store folders named: folders, or glob patterns of folders ('runs/*': the stores among
    the matches; StoreError if none)."""
    found = []
    for path in map(str, paths):
        if glob.has_magic(path):
            matches = [p for p in sorted(glob.glob(path)) if is_store(p)]
            if not matches:
                raise StoreError(f"{path}: no result store matches")
            found += matches
        else:
            found.append(path)
    return found


def _union(frames) -> pd.DataFrame:
    """Frames of stores of different versions as one, columns unioned by name (a column an older
    store lacks, and no upgrade gives a value, is missing there)."""
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0] if frames else pd.DataFrame()


def read_results(*store_dirs, columns=None, filters=None, warn=None, fold_in=FOLD_IN) -> pd.DataFrame:
    """The result rows of one store or several (`read_results("runs/*")`, or folders): read_table of
    `results` for each, columns unioned by name."""
    return _union(read_table(s, "results", columns, filters, warn, fold_in) for s in stores(store_dirs))


def read_epochs(*store_dirs, columns=None, warn=None) -> pd.DataFrame:
    """The per-epoch history of every trial of one store or several (read_table of `epochs`)."""
    return _union(read_table(s, "epochs", columns, None, warn) for s in stores(store_dirs))


def read_trial(store_dir, trial_id, table="results") -> pd.DataFrame:
    """One trial's rows at this schema version (its file alone); an empty frame while it is not stored."""
    path = trial_path(store_dir, trial_id, table)
    try:
        return read_part(path, table)
    except StoreError:
        if not path.exists():
            return pd.DataFrame()
        raise


def trial_result(store_dir, trial_id):
    """A stored trial's result, the number a search maximises: its aggregate clean cv emoval (the
    mean over folds of each fold's best-epoch validation emoval); None while it is not stored, or
    when it has none (diverged)."""
    try:
        return cv_emoval(read_trial(store_dir, trial_id))
    except StoreError:  # a foreign Parquet file in results/ (a trial's own is never half there): no result
        return None


def cv_emoval(rows: pd.DataFrame):
    """The aggregate clean cv emoval of one trial's result rows; None if none or not finite."""
    rows = clean_rows(rows)
    rows = rows[rows["split"] == "cv"] if not rows.empty else rows
    value = float(rows["emoval"].iloc[0]) if len(rows) else float("nan")
    return value if value == value and abs(value) != float("inf") else None
