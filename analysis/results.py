"""Result candidates from stores and MERBench result folders: scan, pick the best, render.

A candidate is one result of a model on a split. It comes either from a store's Parquet rows
(the fold aggregate, clean scenario) or from the *name* of a MERBench NPZ file: those files
hold only a pickled `args`, so they are never loaded, only checked to be a readable zip.
"""
import json
import math
import os
import re
import sys
import zipfile
from pathlib import Path

import pandas as pd

from analysis.export import wide_tables
from prmf.data import dataset_name
from prmf.records import NOT_COUNTED
from prmf import store as result_store
from prmf.store import CLEAN_AGGREGATE, StoreError, is_store

DEFAULT_RESULT_DIR = Path("runs")  # where the sweeps store by default: runs/ under the current folder
SPLITS = ("cv", "test1", "test2", "test3")
CANDIDATE_COLUMNS = ["dataset", "features", "profile", "model", "experiment", "fidelity", "precision", "split", "f1",
                     "acc", "val", "source", "run", "status", "commit", "diverged_epoch"]
JSON_KEYS = ["dataset", "features", "model", "experiment", "fidelity", "precision", "split", "f1", "acc", "val",
             "display_name", "source", "n_runs", "commit"]
# MERBench's own files ran the real code, so they count as the published behaviour; store rows say
# theirs. Rows of other fidelities or precisions are other rows of the table, never one cell with
# the default's (MERBench's files and stores without the column ran in fp32).
DEFAULT_FIDELITY = "published"
DEFAULT_PRECISION = "fp32"
UNNAMED = "unnamed"  # data set of a MERBench file name without a `_dataset:` field

# The paper's names (its extract_best_results.py); attention_robust_vN -> "Robust vN" otherwise.
DISPLAY_NAMES = {
    "attention": "Baseline (v0)",
    "attention_robust": "Robust v1 (Dropout)",
    "attention_robust_v2": "P-RMF V2 (VAE)",  # the paper's name for the model (its best preset in --by model)
}
# The presets (prmf.config) by their own names: a V2 row says which ablation it is.
EXPERIMENT_NAMES = {
    "attention": "Baseline (v0)",
    "attention_robust": "Robust v1 (Dropout)",
    "Exp1": "P-RMF: V1 baseline (Exp1)",
    "Exp2": "P-RMF: VAE only (Exp2)",
    "Exp3": "P-RMF: VAE + proxy (Exp3)",
    "Exp4": "P-RMF full (Exp4)",
    "Exp5": "P-RMF: no VAE (Exp5)",
}
STORE_COLUMNS = {"trial_id", "model", "fold", "split", "scenario", "f1", "acc"}
STORE_READ = sorted(STORE_COLUMNS | {"dataset", "features", "profile", "experiment", "fidelity", "precision", "val_mse",
                                    "seed", "status", "commit", "diverged_epoch"})  # what a candidate needs

_NUM = r"[-+]?(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|nan|inf)"
# {split}_features:{feats}[_dataset:{dataset}]_model:{model}+{feat_type}[+{e2e}]_f1:F_acc:A_val:V_{ts}.npz
NAME_RE = re.compile(
    r"^(?P<split>[^_]+)_features:(?P<features>.+?)(?:_dataset:(?P<dataset>.+?))?"
    r"_model:(?P<model>[^+]+)\+(?P<feat_type>[^+]+?)(?:\+(?P<e2e>[^+]+?))?"
    rf"_f1:(?P<f1>{_NUM})_acc:(?P<acc>{_NUM})_val:(?P<val>{_NUM})"
    r"_(?P<timestamp>\d+(?:\.\d+)?)\.npz$"
)


def stderr_warn(message: str):
    print(f"warning: {message}", file=sys.stderr)


def parse_name(name: str) -> dict | None:
    """Fields of a MERBench result file name (metrics as floats), or None if it does not parse."""
    m = NAME_RE.match(name)
    if m is None:
        return None
    info = m.groupdict()
    for key in ("f1", "acc", "val"):
        info[key] = float(info[key])
    return info


def base_model(model) -> str:
    """'attention+utt' -> 'attention' (MERBench's model field carries the feature type)."""
    return str(model).split("+")[0]


def features_key(features) -> str:
    """The sorted '+'-joined feature names, as in MERBench file names ('b,a' or 'b+a' -> 'a+b';
    case-blind, as the paper's Baichuan+chinese+CLIP)."""
    parts = features if isinstance(features, (list, tuple)) else re.split(r"[+,]", str(features))
    return "+".join(sorted((p.strip() for p in parts if p.strip()), key=lambda p: (p.lower(), p)))


def display_name(model, experiment=None, fidelity=DEFAULT_FIDELITY, precision=DEFAULT_PRECISION) -> str:
    """A row's name: the preset's own name when the row is one preset, else the model's; rows of a
    fidelity or precision other than the default say which (`P-RMF full (Exp4) [design_plan]`,
    `P-RMF full (Exp4) [bf16-mixed]`)."""
    tag = "".join(f" [{v}]" for v, default in ((fidelity, DEFAULT_FIDELITY), (precision, DEFAULT_PRECISION))
                  if v is not None and not pd.isna(v) and v != default)
    if experiment and experiment in EXPERIMENT_NAMES:
        return EXPERIMENT_NAMES[experiment] + tag
    model = base_model(model)
    name = DISPLAY_NAMES.get(model)
    if name is None:
        m = re.fullmatch(r"attention_robust_v(\d+)", model)
        name = f"Robust v{m.group(1)}" if m else model
    return (f"{name} [{experiment}]" if experiment else name) + tag


def natural_key(text: str) -> list:
    """Sort key that orders Exp2 before Exp10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def _model_order(model: str) -> tuple:
    fixed = list(DISPLAY_NAMES)
    return (fixed.index(model) if model in fixed else len(fixed), natural_key(model))


def split_key(split: str) -> tuple:
    """Sort key: cv, test1, test2, test3, then any other split by name."""
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def metric_problem(f1, acc, val) -> str:
    """Why these metrics cannot be real ('' if they can): F1 and ACC in [0, 1], val MSE >= 0 or NaN."""
    for key, v in (("f1", f1), ("acc", acc)):
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            return f"{key} {v:g} outside [0, 1]"
    if not (math.isnan(val) or (math.isfinite(val) and val >= 0.0)):
        return f"val {val:g} is not an MSE (>= 0)"
    return ""


def npz_candidate(path: Path, warn=stderr_warn) -> dict | None:
    """One candidate from a MERBench NPZ file name; None (after a warning) if unusable.

    A MERBench run writes its cv and test files with one timestamp, so (folder, model, timestamp)
    identifies the run for --select-by cv."""
    info = parse_name(path.name)
    if info is None:
        warn(f"skipped {path}: name does not match the MERBench result pattern")
        return None
    problem = metric_problem(info["f1"], info["acc"], info["val"])
    if problem:
        warn(f"skipped {path}: {problem}")
        return None
    try:  # only the zip directory is read: the members are pickles and are never loaded
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith(".npy") for n in z.namelist()):
                raise ValueError("no .npy member")
    except Exception as e:
        warn(f"skipped {path}: not a readable NPZ ({type(e).__name__}: {e})")
        return None
    model = base_model(info["model"])
    return {"dataset": dataset_name(info["dataset"] or UNNAMED), "features": features_key(info["features"]),
            "profile": "", "model": model, "experiment": None, "fidelity": DEFAULT_FIDELITY,
            "precision": DEFAULT_PRECISION, "split": info["split"],
            "f1": info["f1"], "acc": info["acc"], "val": info["val"], "source": str(path),
            "run": f"{path.parent}/{model}@{info['timestamp']}", "status": "finished", "commit": None, "diverged_epoch": 0}


def read_store_table(store: Path, table="results", warn=stderr_warn, columns=None, filters=None) -> pd.DataFrame:
    """Rows of a store table (results or epochs; only `columns` of the rows `filters` keeps: see
    prmf.store.read_table). A file that cannot be read is skipped with a warning naming it, so are
    result rows with impossible metrics: the other trials stay."""
    try:
        df = result_store.read_table(store, table, columns, filters, warn)
    except StoreError as e:
        warn(f"skipped {e}")
        return pd.DataFrame()
    if table != "results" or not {"f1", "acc", "trial_id"} <= set(df.columns):
        return df
    val = df["val_mse"].astype(float) if "val_mse" in df else pd.Series(math.nan, index=df.index)
    diverged = df["status"] == "diverged" if "status" in df else pd.Series(False, index=df.index)
    bad = [not (d and math.isnan(f) and math.isnan(a)) and metric_problem(f, a, v)  # NaN: no scores, not damage
           for f, a, v, d in zip(df["f1"].astype(float), df["acc"].astype(float), val, diverged)]
    if not any(bad):
        return df
    for tid, problems in pd.Series(bad, index=df.index)[[bool(b) for b in bad]].groupby(df["trial_id"]):
        warn(f"skipped {len(problems)} row(s) of {result_store.trial_path(store, tid)}: {problems.iloc[0]}")
    return df[[not b for b in bad]].reset_index(drop=True)


def counted(rows: pd.DataFrame, include_pruned=False, key="trial_id"):
    """(rows that count, {status: trials left out}): pruned, failed and diverged trials stopped
    before their end, so their scores are not comparable; they count only with include_pruned."""
    if include_pruned or rows.empty or "status" not in rows:
        return rows, {}
    out = rows["status"].isin(NOT_COUNTED)
    return rows[~out], rows[out].groupby("status")[key].nunique().to_dict()


def store_candidates(store: Path, warn=stderr_warn) -> pd.DataFrame:
    """The aggregate clean rows of a store (one per trial, seed and split) as candidates."""
    empty = pd.DataFrame(columns=CANDIDATE_COLUMNS)
    df = read_store_table(store, "results", warn, columns=STORE_READ, filters=CLEAN_AGGREGATE)
    if df.empty:
        return empty
    missing = STORE_COLUMNS - set(df.columns)
    if missing:
        warn(f"skipped store {store}: results lack columns {', '.join(sorted(missing))}")
        return empty

    def col(name, default):
        return df[name] if name in df else pd.Series(default, index=df.index, dtype=object)

    experiment = col("experiment", None).astype(object)  # None, not a string column's NaN
    source = f"{store}#" + df["trial_id"].astype(str)
    return pd.DataFrame({
        "dataset": col("dataset", UNNAMED).fillna(UNNAMED).map(dataset_name),
        "features": col("features", "").fillna("").map(features_key),
        "profile": col("profile", "").fillna("").astype(str),
        "model": df["model"].map(base_model),
        "experiment": experiment.where(experiment.notna() & (experiment.astype(str) != ""), None),
        "fidelity": col("fidelity", DEFAULT_FIDELITY).fillna(DEFAULT_FIDELITY).astype(str),  # old names read as today's
        "precision": col("precision", DEFAULT_PRECISION).fillna(DEFAULT_PRECISION).astype(str),
        "split": df["split"].astype(str),
        "f1": df["f1"].astype(float),
        "acc": df["acc"].astype(float),
        "val": df["val_mse"].astype(float) if "val_mse" in df else math.nan,
        "source": source,
        "run": source + "@" + col("seed", "").astype(str),
        "status": col("status", "finished").fillna("finished").astype(str),
        "commit": col("commit", None),  # None: a store written before rows carried it
        "diverged_epoch": col("diverged_epoch", 0).fillna(0).astype(int),
    }, columns=CANDIDATE_COLUMNS)


def scan(dirs, warn=stderr_warn) -> pd.DataFrame:
    """Every candidate under `dirs`: stores (by their Parquet rows) and MERBench NPZ files.

    A store's subtree is not searched further, so its predictions/ NPZs are not counted twice;
    a file or store reached through two of `dirs` is read once.
    """
    frames, npz_rows, seen = [], [], set()

    def first_time(path: Path) -> bool:
        key = path.resolve()
        if key in seen:
            return False
        seen.add(key)
        return True

    def on_error(e: OSError):
        warn(f"skipped {e.filename}: {e.strerror}")

    for d in dirs:
        for root, subdirs, files in os.walk(d, onerror=on_error):
            root = Path(root)
            if is_store(root):
                subdirs[:] = []
                if first_time(root):
                    frames.append(store_candidates(root, warn))
                continue
            subdirs.sort()
            for name in sorted(files):
                path = root / name
                if name.endswith(".npz") and first_time(path):
                    row = npz_candidate(path, warn)
                    if row is not None:
                        npz_rows.append(row)
    frames.append(pd.DataFrame(npz_rows, columns=CANDIDATE_COLUMNS))
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=CANDIDATE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def filter_candidates(candidates: pd.DataFrame, dataset=None, features=None, experiment=None,
                      include_pruned=False):
    """(candidates kept, {status: runs left out}) after the filters and the pruned/failed rule."""
    c = candidates
    if dataset:
        c = c[c["dataset"].str.lower() == str(dataset).lower()]
    if features:
        c = c[c["features"] == features_key(features)]
    if experiment:
        c = c[c["experiment"] == experiment]
    return counted(c, include_pruned, key="run")


def diverged_note(candidates: pd.DataFrame) -> str:
    """'Diverged ...: MODEL TRIAL at epoch E, ...' for the diverged runs among candidates ('' if none):
    their NaN scores are in no table, so they are named here."""
    div = candidates[candidates["status"] == "diverged"].drop_duplicates("run")
    if div.empty:
        return ""
    runs = [f"{m} {src.rsplit('#', 1)[-1]} at epoch {e}" for m, src, e in
            sorted(zip(div["model"], div["source"], div["diverged_epoch"]), key=lambda r: (r[2], r[1]))]
    return ("Diverged (a fold's loss or outputs went non-finite; NaN scores are in no table): "
            + ", ".join(runs) + ".")


def select_best(candidates: pd.DataFrame, metric: str = "acc", by: str = "model", select_by: str = "split") -> pd.DataFrame:
    """The table's cells, per (dataset, features, model[, experiment]) and split.

    select_by='split' (the paper's rule): each split's cell is the candidate with the
    highest `metric` on that split, so cells of one row may come from different runs.
    select_by='cv': one run per row, the one with the highest cv `metric`, and that run's test
    splits, so no test set takes part in the choice. Ties go to the other metric, then the first
    source. `n_runs` counts the candidates that competed. Rows come ordered: dataset, features,
    baseline, v1, v2, other models; splits cv..test3.
    """
    if metric not in ("acc", "f1") or by not in ("model", "experiment") or select_by not in ("split", "cv"):
        raise ValueError(f"metric must be acc or f1, by model or experiment, select_by split or cv; "
                         f"got {metric!r}, {by!r}, {select_by!r}")
    other = "f1" if metric == "acc" else "acc"
    row_keys = ["dataset", "features", "model", "fidelity", "precision"]
    row_keys += ["experiment"] if by == "experiment" else []
    cands = candidates.copy()
    cands["experiment_key"] = cands["experiment"].fillna("")
    row_keys = [k if k != "experiment" else "experiment_key" for k in row_keys]
    ranked = cands.dropna(subset=[metric]).sort_values(
        [metric, other, "source"], ascending=[False, False, True], na_position="last")
    if select_by == "split":
        best = ranked.groupby(row_keys + ["split"], sort=False).head(1).copy()
        n_runs = ranked.groupby(row_keys + ["split"], sort=False).size()
        best["n_runs"] = [n_runs[tuple(r)] for r in best[row_keys + ["split"]].itertuples(index=False)]
    else:
        cv = ranked[ranked["split"] == "cv"]
        winners = cv.groupby(row_keys, sort=False).head(1)
        n_runs = cv.groupby(row_keys, sort=False).size()
        best = cands[cands["run"].isin(set(winners["run"]))].copy()
        best = best.merge(winners[row_keys + ["run"]], on=row_keys + ["run"])
        best = best.sort_values("source").groupby(["run", "split"], sort=False).head(1)
        best["n_runs"] = [n_runs[tuple(r)] for r in best[row_keys].itertuples(index=False)]
    experiments = best["experiment"] if by == "experiment" else [None] * len(best)
    best["display_name"] = [display_name(m, e, f, p) for m, e, f, p in
                            zip(best["model"], experiments, best["fidelity"], best["precision"])]

    def row_order(i):
        row = best.iloc[i]
        experiment = natural_key(row["experiment_key"]) if by == "experiment" else []
        fidelity = (row["fidelity"] != DEFAULT_FIDELITY, row["fidelity"])  # the defaults' rows first
        precision = (row["precision"] != DEFAULT_PRECISION, row["precision"])
        return (row["dataset"], row["features"], _model_order(row["model"]), experiment, fidelity, precision,
                split_key(row["split"]))

    best = best.iloc[sorted(range(len(best)), key=row_order)]
    return best.drop(columns="experiment_key").reset_index(drop=True)


def _cell(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.4f}"


SELECTION_NOTES = {
    "split": "Selection: the paper's rule (highest {metric} on each split separately; a row's cells may "
             "come from different runs and the test sets take part in the choice). --select-by cv avoids that.",
    "cv": "Selection: per row the run with the highest cv {metric}, and that run's test splits "
          "(test sets take no part in the choice).",
}


def generated(dataset: str) -> bool:
    return "synthetic" in str(dataset).lower()


def render_markdown(best: pd.DataFrame) -> str:
    """One comparison table, as the paper's, per (dataset, features), a header naming both."""
    out = []
    for (dataset, features), table in wide_tables(best, SPLITS):
        header = list(table.columns)
        if out:
            out.append("")
        out.append(f"## {dataset} · features {features or '(not recorded)'}")
        if generated(dataset):
            out.append("Generated data: these numbers show the pipeline works, not the paper's claims.")
        out += ["", "| " + " | ".join(header) + " |",
                "|" + "|".join(["------"] + ["-----:"] * (len(header) - 1)) + "|"]
        for row in table.itertuples(index=False):
            out.append("| " + " | ".join([row[0], *map(_cell, row[1:])]) + " |")
    return "\n".join(out)


def to_records(best: pd.DataFrame) -> list[dict]:
    """The best rows as plain dicts with exactly JSON_KEYS (NaN -> None, so valid JSON)."""
    records = []
    for row in best[JSON_KEYS].itertuples(index=False):
        rec = dict(zip(JSON_KEYS, row))
        for key in ("f1", "acc", "val"):
            rec[key] = None if pd.isna(rec[key]) or not math.isfinite(rec[key]) else float(rec[key])
        rec["experiment"] = None if rec["experiment"] is None or pd.isna(rec["experiment"]) else str(rec["experiment"])
        rec["fidelity"], rec["precision"] = str(rec["fidelity"]), str(rec["precision"])
        rec["n_runs"] = int(rec["n_runs"])
        rec["commit"] = None if rec["commit"] is None or pd.isna(rec["commit"]) else str(rec["commit"])
        records.append(rec)
    return records


def render_json(best: pd.DataFrame) -> str:
    return json.dumps(to_records(best), indent=2, ensure_ascii=False, allow_nan=False)
