"""Turn a finished trial into the store's rows and NPZ predictions (formats: docs/SCHEMA.md, prmf.store)."""
import hashlib
import json

import numpy as np
import pandas as pd

from . import provenance, store
from .config import stable_dict
from .data.merbench import NO_VALENCE

# Statuses of trials that stopped before their end: their scores are not comparable, so tables
# and reports leave them out unless asked (analysis --include-pruned).
NOT_COUNTED = ("pruned", "failed", "diverged")


def diverged_trials(results: pd.DataFrame) -> pd.DataFrame:
    """One row per diverged trial (trial_id, experiment, model, seed, diverged_epoch: the first epoch
    a fold went non-finite), from store rows; empty where none diverged."""
    cols = ["trial_id", "experiment", "model", "seed", "diverged_epoch"]
    if results.empty or "status" not in results or "diverged_epoch" not in results:
        return pd.DataFrame(columns=cols)
    rows = results[(results["status"] == "diverged") & results["is_aggregate"]]
    return rows.drop_duplicates("trial_id")[cols].sort_values(["diverged_epoch", "trial_id"]).reset_index(drop=True)


def trial_id(experiment: str, cfg, seed: int, dataset=None) -> str:
    """Stable id of (config, seed, data set, features): the same trial gets the same id in every run
    of a sweep, and one config on two data sets two ids. Without `dataset`: the id of sweeps started
    before the data set was part of it (config and seed only), which resume under their old ids.
    Keys added since, at the value trials ran under before them (fp32 precision), are left out, so
    those ids are unchanged."""
    key = stable_dict(cfg)
    if dataset is not None:
        key = {"config": key, "dataset": dataset.name, "features": list(dataset.features), "dims": list(dataset.dims)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return f"{experiment}-s{seed}-{digest}"


def _row(split, fold, scenario, m, best_epoch, epochs_run, diverged_epoch):
    """fold None: the row aggregates all folds (cv: mean of the folds' best epochs; tests: the
    fold-averaged logits), marked by `is_aggregate` (docs/SCHEMA.md)."""
    return {"is_aggregate": fold is None, "fold": fold, "split": split, "scenario": scenario, "f1": m["f1"], "acc": m["acc"],
            "val_mse": m["val_mse"], "emoval": m["emoval"], "best_epoch": best_epoch, "epochs_run": epochs_run,
            "diverged_epoch": diverged_epoch}


def name_val_mse(val_mse, preds, vals) -> float:
    """The `val:` of an NPZ name. Where the split has no valence (test3) the Parquet keeps NaN, but
    MERBench writes the MSE against the stored -10 placeholders over all samples (79.9783 in the
    paper's table), and the published scraper (extract_best_results.py) only parses a number there: so the name does the same."""
    if np.isfinite(val_mse):
        return float(val_mse)
    labels = np.where(np.isnan(vals), NO_VALENCE, vals)
    return float(np.mean((np.asarray(preds, dtype=np.float64) - labels) ** 2))


def tables(result, *, tid, sweep, experiment, cfg, seed, dataset, status, wall_time_s, extra=None, identical=(),
           commit="unknown"):
    """(results DataFrame, epochs DataFrame, {npz name: arrays}) for prmf.store.write_trial.

    `identical`: other preset names whose effective config is this one's (trained once): their
    rows are stored too, every row naming the others in `identical_to`. `commit`: the code's git
    commit (prmf.provenance), so every row can be traced to the code that produced it; `version`:
    the installed prmf-sweep's, for installs whose commit is unknown."""
    best, runs = result.best_epochs, result.epochs_run
    div = result.diverged_epochs or [0] * len(best)  # 0: did not diverge; else the epoch its loss went non-finite
    first_div = min((d for d in div if d), default=0)
    status = "diverged" if first_div else status
    rows = []
    for split, sr in result.splits.items():
        rows += [_row(split, k, "clean", m, best[k], runs[k], div[k]) for k, m in enumerate(sr.fold_metrics)]
        rows.append(_row(split, None, "clean", sr.metrics, int(round(np.mean(best))), max(runs), first_div))
    for (split, scenario), m in result.scenarios.items():
        rows.append(_row(split, None, scenario, m, int(round(np.mean(best))), max(runs), first_div))
    config = cfg.to_dict()
    meta = {"sweep": sweep, "trial_id": tid, "experiment": experiment, "model": cfg.model, "seed": seed,
            "dataset": dataset.name, "profile": dataset.profile, "features": "+".join(dataset.features), "status": status,
            "wall_time_s": wall_time_s, "train_time_s": result.train_seconds, "n_params": result.n_params,
            "commit": commit, "version": provenance.version(), "random_streams": result.random_streams,
            **(extra or {})}
    names = [experiment, *identical]
    results = pd.DataFrame([{**meta, "experiment": name, "identical_to": ",".join(n for n in names if n != name),
                             **r, **config, "config_json": json.dumps(config, sort_keys=True)}
                            for name in names for r in rows])
    results["fold"] = results["fold"].astype("Int64")
    epochs = pd.DataFrame(result.history).rename(columns={"val_val_mse": "val_mse"})  # the fold's validation MSE
    for i, (col, value) in enumerate((("sweep", sweep), ("experiment", experiment), ("trial_id", tid), ("seed", seed))):
        epochs.insert(i, col, value)

    ts = store.timestamp()
    predictions = {}
    for split, sr in result.splits.items():
        m = sr.metrics
        name = store.prediction_name(split, dataset.features, dataset.name, cfg.model, cfg.feat_type,
                                     m["f1"], m["acc"], name_val_mse(m["val_mse"], sr.vals_pred, sr.vals), ts)
        predictions[name] = {
            "names": sr.names.astype(str), "logits": sr.logits.astype(np.float32), "labels": sr.emos,
            "val_preds": sr.vals_pred.astype(np.float32), "val_labels": sr.vals.astype(np.float32),
            "fold_ids": sr.fold_ids, "classes": np.array(dataset.classes, dtype=str),
            "config": np.array(json.dumps({**config, "seed": seed, "experiment": experiment, "trial_id": tid})),
        }
    return results, epochs, predictions
