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

from prmf.store import AGGREGATE, StoreError, is_store, read_results

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULT_DIR = REPO_ROOT / "runs"
SPLITS = ("cv", "test1", "test2", "test3")
CANDIDATE_COLUMNS = ["model", "experiment", "split", "f1", "acc", "val", "source"]
JSON_KEYS = ["model", "display_name", "split", "f1", "acc", "val", "source"]

# The seeds' names (extract_best_results.py); attention_robust_vN -> "Robust vN" otherwise.
DISPLAY_NAMES = {
    "attention": "Baseline (v0)",
    "attention_robust": "Robust v1 (Dropout)",
    "attention_robust_v2": "P-RMF V2 (VAE)",
}
STORE_COLUMNS = {"trial_id", "model", "fold", "split", "scenario", "f1", "acc"}

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


def display_name(model, experiment: str = "") -> str:
    model = base_model(model)
    name = DISPLAY_NAMES.get(model)
    if name is None:
        m = re.fullmatch(r"attention_robust_v(\d+)", model)
        name = f"Robust v{m.group(1)}" if m else model
    return f"{name} [{experiment}]" if experiment else name


def natural_key(text: str) -> list:
    """Sort key that orders Exp2 before Exp10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def _model_order(model: str) -> tuple:
    fixed = list(DISPLAY_NAMES)
    return (fixed.index(model) if model in fixed else len(fixed), natural_key(model))


def split_key(split: str) -> tuple:
    """Sort key: cv, test1, test2, test3, then any other split by name."""
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def npz_candidate(path: Path, warn=stderr_warn) -> dict | None:
    """One candidate from a MERBench NPZ file name; None (after a warning) if unusable."""
    info = parse_name(path.name)
    if info is None:
        warn(f"skipped {path}: name does not match the MERBench result pattern")
        return None
    try:  # only the zip directory is read: the members are pickles and are never loaded
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith(".npy") for n in z.namelist()):
                raise ValueError("no .npy member")
    except Exception as e:
        warn(f"skipped {path}: not a readable NPZ ({type(e).__name__}: {e})")
        return None
    return {"model": base_model(info["model"]), "experiment": "", "split": info["split"],
            "f1": info["f1"], "acc": info["acc"], "val": info["val"], "source": str(path)}


def store_candidates(store: Path, warn=stderr_warn) -> pd.DataFrame:
    """The aggregate clean rows of a store (one per trial, seed and split) as candidates."""
    empty = pd.DataFrame(columns=CANDIDATE_COLUMNS)
    try:
        df = read_results(store)
    except StoreError as e:
        warn(f"skipped store {store}: {e}")
        return empty
    if df.empty:
        return empty
    missing = STORE_COLUMNS - set(df.columns)
    if missing:
        warn(f"skipped store {store}: results lack columns {', '.join(sorted(missing))}")
        return empty
    df = df[(df["fold"] == AGGREGATE) & (df["scenario"] == "clean")]
    experiment = df["experiment"] if "experiment" in df else pd.Series("", index=df.index)
    return pd.DataFrame({
        "model": df["model"].map(base_model),
        "experiment": experiment.fillna("").astype(str),
        "split": df["split"].astype(str),
        "f1": df["f1"].astype(float),
        "acc": df["acc"].astype(float),
        "val": df["val_mse"].astype(float) if "val_mse" in df else math.nan,
        "source": f"{store}#" + df["trial_id"].astype(str),
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


def select_best(candidates: pd.DataFrame, metric: str = "acc", by: str = "model") -> pd.DataFrame:
    """Best row per (model, split), or per (model, experiment, split) with by='experiment'.

    Highest `metric` wins; ties go to the other metric (F1 for ACC), then to the first source.
    Rows come ordered for the table: baseline, v1, v2, other models; splits cv..test3.
    """
    if metric not in ("acc", "f1") or by not in ("model", "experiment"):
        raise ValueError(f"metric must be acc or f1 and by model or experiment, got {metric!r}, {by!r}")
    other = "f1" if metric == "acc" else "acc"
    keys = ["model", "split"] if by == "model" else ["model", "experiment", "split"]
    ranked = candidates.dropna(subset=[metric]).sort_values(
        [metric, other, "source"], ascending=[False, False, True], na_position="last")
    best = ranked.groupby(keys, sort=False).head(1).copy()
    if by == "model":
        best["display_name"] = best["model"].map(display_name)
    else:
        best["display_name"] = [display_name(m, e) for m, e in zip(best["model"], best["experiment"])]

    def row_order(i):
        row = best.iloc[i]
        experiment = natural_key(row["experiment"]) if by == "experiment" else []
        return (_model_order(row["model"]), experiment, split_key(row["split"]))

    best = best.iloc[sorted(range(len(best)), key=row_order)]
    return best.reset_index(drop=True)


def _cell(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.4f}"


def render_markdown(best: pd.DataFrame) -> str:
    """The seeds' comparison table: one row per model, cv/test1/test2/test3 x F1/ACC."""
    header = ["Method"] + [f"{s} {m}" for s in SPLITS for m in ("F1", "ACC")]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["------"] + ["-----:"] * (len(header) - 1)) + "|"]
    for name, rows in best.groupby("display_name", sort=False):
        by_split = rows.set_index("split")
        cells = [name]
        for split in SPLITS:
            for metric in ("f1", "acc"):
                cells.append(_cell(by_split[metric].get(split)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_records(best: pd.DataFrame) -> list[dict]:
    """The best rows as plain dicts with exactly JSON_KEYS (NaN -> None)."""
    records = []
    for row in best[JSON_KEYS].itertuples(index=False):
        rec = dict(zip(JSON_KEYS, row))
        for key in ("f1", "acc", "val"):
            rec[key] = None if pd.isna(rec[key]) else float(rec[key])
        records.append(rec)
    return records


def render_json(best: pd.DataFrame) -> str:
    return json.dumps(to_records(best), indent=2, ensure_ascii=False)
