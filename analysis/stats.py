"""The statistics of a sweep report: results grouped by experiment and by the config columns that
vary within it, mean ± std per group and split, paired differences to a reference with the
Nadeau-Bengio corrected resampled t-test, robustness per scenario, learning curves."""
from dataclasses import fields

import numpy as np
import pandas as pd
from scipy import stats

from analysis.results import natural_key, split_key
from prmf.config import TrialConfig
from prmf.store import clean_rows
from prmf.robustness import missing_patterns, noise_level

CONFIG_COLUMNS = [f.name for f in fields(TrialConfig)]
# No p-value from fewer (seed, fold) pairs: the corrected t-test estimates the variance of the
# differences from n - 1 degrees of freedom; below 10 pairs that estimate's relative standard
# error, sqrt(2 / (n - 1)), is above 47% and the t quantile climbs steeply (t_0.975 = 2.26 at 9 df,
# 4.30 at 2, 12.7 at 1), so the p-value reflects the noise of the variance more than the
# difference. 10 pairs is 2 seeds x 5 folds (or one seed of 10 folds).
MIN_PAIRS = 10


def _fmt_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def varying_params(results: pd.DataFrame) -> dict:
    """experiment -> the config columns that take more than one value within it."""
    cols = [c for c in CONFIG_COLUMNS if c in results.columns]
    out = {}
    for exp, rows in results.groupby("experiment", sort=False):
        out[exp] = [c for c in cols if rows[c].nunique(dropna=False) > 1]
    return out


def add_groups(results: pd.DataFrame):
    """Add a `group` column (experiment, plus 'param=value' for params varying within it).

    Returns (results, groups in display order, varying params per experiment)."""
    results = results.copy()
    results["experiment"] = results["experiment"].fillna("").astype(str)
    varying = varying_params(results)
    labels, keys = [], {}
    for row in results[["experiment"] + sorted({p for ps in varying.values() for p in ps})].itertuples(index=False):
        exp = row.experiment
        params = varying[exp]
        values = [getattr(row, p) for p in params]
        label = " ".join([exp] + [f"{p}={_fmt_value(v)}" for p, v in zip(params, values)])
        labels.append(label)
        keys.setdefault(label, (natural_key(exp), tuple(values)))
    results["group"] = labels
    groups = sorted(keys, key=lambda g: keys[g])
    return results, groups, varying


def split_order(splits) -> list:
    return sorted(set(splits), key=split_key)


def scenario_order(scenarios) -> list:
    patterns = missing_patterns()
    return sorted(set(scenarios), key=lambda s: (0, patterns.index(s), 0.0, s) if s in patterns else
                  (1, 0, noise_level(s), s) if noise_level(s) is not None else (2, 0, 0.0, s))


def corrected_t_test(diffs, test_train_ratio) -> float:
    """Two-sided p-value of mean(diffs) == 0 by the Nadeau-Bengio corrected resampled t-test.

    `diffs` are paired differences over seeds x folds; the variance term 1/n becomes
    1/n + n_test/n_train, which accounts for the training data the folds share (Nadeau & Bengio,
    Machine Learning 52, 2003; Bouckaert & Frank, PAKDD 2004). t has n - 1 degrees of freedom."""
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 2:
        return float("nan")
    mean, var = d.mean(), d.var(ddof=1)
    if var == 0:
        return 1.0 if mean == 0 else 0.0
    t = mean / np.sqrt((1 / n + test_train_ratio) * var)
    return float(2 * stats.t.sf(abs(t), n - 1))


def test_train_ratio(folds: pd.DataFrame) -> float:
    """n_test / n_train of one CV fold: k folds of N samples hold N/k each, trained on the rest."""
    k = folds["fold"].nunique()  # per-fold rows only (fold_rows)
    return 1 / (k - 1) if k > 1 else float("nan")


def fold_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Per-fold clean rows, one per (group, split, seed, fold) (duplicates across stores averaged)."""
    rows = clean_rows(results, aggregate=False)
    return rows.groupby(["group", "split", "seed", "fold"], as_index=False)[["f1", "acc"]].mean()


def _mean_std(grouped, cols) -> pd.DataFrame:
    """Mean and std of `cols` per group, as flat columns COL_mean, COL_std."""
    out = grouped[cols].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    return out


def summarize(folds: pd.DataFrame) -> pd.DataFrame:
    """group, split, seeds, runs, f1/acc mean and std over seeds × folds."""
    g = folds.groupby(["group", "split"])
    out = _mean_std(g, ["f1", "acc"])
    out["seeds"] = g["seed"].nunique()
    out["runs"] = g.size()
    return out.reset_index()


def ensemble_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Fold-averaged (aggregate) clean metrics: mean and std over seeds per group and split."""
    rows = clean_rows(results)
    rows = rows.groupby(["group", "split", "seed"], as_index=False)[["f1", "acc"]].mean()
    return _mean_std(rows.groupby(["group", "split"]), ["f1", "acc"]).reset_index()


def compare(folds: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per group (≠ reference) and split: pairs, mean difference and corrected t-test p for f1 and
    acc; p is NaN below MIN_PAIRS pairs."""
    keys = ["split", "seed", "fold"]
    ratio = test_train_ratio(folds)
    ref = folds.loc[folds["group"] == reference, keys + ["f1", "acc"]]
    out = []
    for (group, split), rows in folds[folds["group"] != reference].groupby(["group", "split"], sort=False):
        joined = rows.merge(ref, on=keys, suffixes=("", "_ref"))
        rec = {"group": group, "split": split, "pairs": len(joined)}
        for m in ("f1", "acc"):
            diffs = (joined[m] - joined[f"{m}_ref"]).to_numpy()
            rec[f"{m}_diff"] = float(diffs.mean()) if len(diffs) else float("nan")
            rec[f"{m}_p"] = corrected_t_test(diffs, ratio) if len(diffs) >= MIN_PAIRS else float("nan")
        out.append(rec)
    out = pd.DataFrame(out, columns=["group", "split", "pairs", "f1_diff", "f1_p", "acc_diff", "acc_p"])
    for m in ("f1", "acc"):  # every point against one reference: a family of tests per split and metric
        out[f"{m}_p_holm"] = out.groupby("split", sort=False)[f"{m}_p"].transform(holm) if len(out) else []
    return out


def holm(p) -> pd.Series:
    """Holm's step-down adjusted p-values (family-wise error rate) of one family of tests; NaN
    (no test) stays NaN and is not counted. Four lines: scipy has no Holm (only Benjamini-Hochberg),
    and statsmodels would be a dependency for them."""
    p = pd.Series(p, dtype=float)
    tested = p.dropna().sort_values()
    steps = (tested * np.arange(len(tested), 0, -1)).cummax().clip(upper=1.0)  # (m - i) p_(i), kept monotone
    return steps.reindex(p.index)


def pick_reference(groups, wanted: str):
    """(reference group, note): the group named `wanted`, the only group of experiment `wanted`,
    or else the first group."""
    if wanted in groups:
        return wanted, ""
    of_exp = [g for g in groups if g.split(" ")[0] == wanted]
    if of_exp:
        return of_exp[0], "" if len(of_exp) == 1 else f" (first of the {len(of_exp)} {wanted} grid points)"
    return groups[0], f" ({wanted} not in this sweep)"


def robustness_table(results: pd.DataFrame) -> pd.DataFrame:
    """group, split, scenario, acc/f1 mean and std over seeds of the fold-averaged scenario rows;
    'all' (every modality present) is the clean test rows, which the store holds once."""
    scen = results[results["is_aggregate"] & (results["scenario"] != "clean")]
    if scen.empty:
        rows = scen
    else:
        clean = clean_rows(results)
        clean = clean[clean["split"].isin(scen["split"])]
        rows = pd.concat([scen, clean.assign(scenario="all")], ignore_index=True)
    if rows.empty:
        return pd.DataFrame(columns=["group", "split", "scenario", "acc_mean", "acc_std", "f1_mean", "f1_std"])
    rows = rows.groupby(["group", "split", "scenario", "seed"], as_index=False)[["f1", "acc"]].mean()
    return _mean_std(rows.groupby(["group", "split", "scenario"]), ["acc", "f1"]).reset_index()


def learning_curve_data(results: pd.DataFrame, epochs: pd.DataFrame, groups) -> dict:
    """group -> (epochs, mean val_emoval over folds and seeds)."""
    if epochs.empty or "val_emoval" not in epochs:
        return {}
    group_of = results.drop_duplicates("trial_id").set_index("trial_id")["group"]
    ep = epochs[epochs["trial_id"].isin(group_of.index)].copy()
    ep["group"] = ep["trial_id"].map(group_of)
    mean = ep.groupby(["group", "epoch"])["val_emoval"].mean()
    return {g: (mean[g].index.to_numpy(), mean[g].to_numpy()) for g in groups if g in mean.index.get_level_values(0)}
