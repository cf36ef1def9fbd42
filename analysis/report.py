"""A sweep's report: per experiment/grid point mean ± std, paired tests, robustness, PNG plots.

    python analysis/report.py [--result-dir DIR] [--out DIR] [--reference Exp1]
                              [--dataset NAME] [--features A+B+C] [--include-pruned]

DIR is a store (or a folder holding stores; all are read together; default runs/). OUT (default
DIR/report) receives report.md and the PNGs it embeds: ablation_acc.png, learning_curves.png,
robustness_matrix.png, noise_curve.png and, where a grid varies 2+ parameters, grid_*.png.

Statistics use the per-fold clean rows of the store (cv: each fold's validation metrics; tests:
each fold model's own test metrics), grouped by experiment and by the config columns that vary
within it. Differences to the reference are paired by (seed, fold) and tested with the
Nadeau-Bengio corrected resampled t-test: the folds of one CV share most of their training data,
so their differences are not independent and a plain test over seeds x folds gives p-values that
are too small; below MIN_PAIRS (seed, fold) pairs no p-value is given and the text says why. Robustness rows are the fold-averaged scenario rows, averaged over seeds.
Results of different data sets or feature sets are never pooled: pick one with --dataset/--features.
Pruned, failed and diverged trials are left out (as in best_results) unless --include-pruned.
"""
import argparse
import itertools
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import export
from analysis.results import DEFAULT_RESULT_DIR, counted, features_key, read_store_table, stderr_warn
from analysis.stats import (MIN_PAIRS, add_groups, compare, ensemble_summary, fold_rows, learning_curve_data,
                            pick_reference, robustness_table, scenario_order, split_order, summarize, test_train_ratio)
from prmf import records
from prmf.data import dataset_name
from prmf.robustness import noise_level
from prmf.store import StoreError, check_writable, is_store

MIN_SEEDS = 3  # below this the report says the differences cannot support a conclusion


# ---------------------------------------------------------------- loading and grouping

def find_stores(result_dir: Path) -> list:
    if is_store(result_dir):
        return [result_dir]
    found = []
    for root, subdirs, _ in os.walk(result_dir):
        subdirs.sort()
        if is_store(root):
            found.append(Path(root))
            subdirs[:] = []
    return found


def _concat(frames) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load(result_dir: Path, include_pruned=False, dataset=None, features=None, warn=stderr_warn):
    """(results, epochs, left_out) of every store under result_dir, for one data set and feature set.

    Pruned, failed and diverged trials stopped before their end, so their scores are not comparable:
    they are left out (`left_out` counts them by status) unless include_pruned, the rule of
    best_results. Raises ValueError when the stores hold more than one (data set, feature set)
    and the filters do not pick one."""
    stores = find_stores(result_dir)
    results = _concat(read_store_table(s, "results", warn) for s in stores)
    epochs = _concat(read_store_table(s, "epochs", warn) for s in stores)
    if results.empty:
        return results, epochs, {}
    results = results.copy()
    results["dataset"] = results["dataset"].fillna("unnamed").map(dataset_name) if "dataset" in results else "unnamed"
    results["features"] = results["features"].fillna("").map(features_key) if "features" in results else ""
    if dataset:
        results = results[results["dataset"].str.lower() == dataset.lower()]
    if features:
        results = results[results["features"] == features_key(features)]
    combos = sorted(set(zip(results["dataset"], results["features"])))
    if len(combos) > 1:
        raise ValueError(f"{result_dir} holds results of {len(combos)} data set/feature set pairs "
                         f"({'; '.join(f'{d} {f}' for d, f in combos)}): pick one with --dataset and --features")
    results, left_out = counted(results, include_pruned)
    return results, epochs, left_out


# ---------------------------------------------------------------- statistics


# ---------------------------------------------------------------- Markdown

def _pm(mean, std) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"


def _table(header, rows) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def _p(p) -> str:
    return "–" if pd.isna(p) else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _lookup(df, keys: dict, col):
    mask = np.ones(len(df), dtype=bool)
    for k, v in keys.items():
        mask &= (df[k] == v).to_numpy()
    hit = df.loc[mask, col]
    return hit.iloc[0] if len(hit) else np.nan


def diverged_section(results: pd.DataFrame) -> list:
    """Markdown lines listing the diverged trials with the epoch a fold went non-finite ([] if none)."""
    div = records.diverged_trials(results)
    if div.empty:
        return []
    return ["## Diverged trials", "", "A fold's loss or outputs went non-finite at this epoch. NaN scores are left "
            "out of every table below; a fold with a best epoch before that keeps its scores.", ""] + \
        _table(["trial", "experiment", "seed", "diverged at epoch"],
               [[r.trial_id, r.experiment, r.seed, r.diverged_epoch] for r in div.itertuples()]) + [""]


# ---------------------------------------------------------------- the report

def build_report(result_dir: Path, out: Path, reference="Exp1", include_pruned=False, dataset=None,
                 features=None, fmt="md") -> Path:
    """Write OUT/report.md and its PNGs (and, for fmt csv|latex|json, its tables as files of that
    format); returns the Markdown path. Raises ValueError without rows."""
    results, epochs, left_out = load(result_dir, include_pruned, dataset, features)
    left = ", ".join(f"{n} {k}" for k, n in sorted(left_out.items()))
    if results.empty:
        raise ValueError(f"no store results under {result_dir}"
                         f"{f' that count (left out: {left} trials; --include-pruned counts them)' if left else ''}")
    diverged = diverged_section(results)
    results = results[results["f1"].notna() | results["acc"].notna()]  # a diverged fold's NaN: listed, not averaged
    path = out / "report.md"
    if results.empty:  # nothing but diverged trials: the list is the report
        out.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([f"# Sweep report: {result_dir}", "", *diverged]), encoding="utf-8")
        return path
    results, groups, varying = add_groups(results)
    folds = fold_rows(results)
    if folds.empty:
        raise ValueError(f"no per-fold clean rows under {result_dir}")
    splits = split_order(folds["split"])
    summary, ensemble = summarize(folds), ensemble_summary(results)
    ref, ref_note = pick_reference(groups, reference)
    diffs, rob = compare(folds, ref), robustness_table(results)
    out.mkdir(parents=True, exist_ok=True)
    n_seeds, n_folds = results["seed"].nunique(), folds["fold"].nunique()
    seeds_folds = f"{n_seeds} seed{'s' if n_seeds != 1 else ''} × {n_folds} fold{'s' if n_folds != 1 else ''}"

    md = [f"# Sweep report: {result_dir}", "",
          f"Data set **{results['dataset'].iloc[0]}**, features {results['features'].iloc[0] or '(not recorded)'}.", ""]
    if "synthetic" in results["dataset"].iloc[0].lower():
        md += ["Generated data: these numbers show the pipeline works, not the paper's claims.", ""]
    md += [f"{results['trial_id'].nunique()} trials, {len(groups)} experiment/grid points, "
           f"seeds {sorted(results['seed'].unique().tolist())}. Reference: **{ref}**{ref_note}.", ""]
    if left_out:
        md += [f"Left out (stopped before the end; --include-pruned counts them): {left} trials.", ""]
    md += diverged
    md += per_fold_section(summary, groups, splits, seeds_folds)
    md += ensemble_section(ensemble, groups, [s for s in splits if s != "cv"], n_folds, n_seeds)
    md += difference_section(diffs, groups, splits, ref, seeds_folds, test_train_ratio(folds), n_seeds)
    md += plots_section(results, epochs, folds, summary, groups, varying, splits, out)
    md += robustness_section(rob, groups, out)
    path.write_text("\n".join(md), encoding="utf-8")
    export.write_tables(out, fmt, {"per_fold_summary": summary, "ensemble_summary": ensemble,
                                   "comparison": diffs, "robustness": rob})
    return path


def per_fold_section(summary, groups, splits, seeds_folds) -> list:
    md = ["## Per-fold metrics", "",
          f"Mean ± std over {seeds_folds} (cv: each fold's best-epoch validation; tests: each fold model alone).", ""]
    header = ["experiment", "seeds", "runs"] + [f"{s} {m}" for s in splits for m in ("F1", "ACC")]
    rows = []
    for g in groups:
        cells = [g, _lookup(summary, {"group": g}, "seeds"), _lookup(summary, {"group": g}, "runs")]
        for s in splits:
            for m in ("f1", "acc"):
                cells.append(_pm(_lookup(summary, {"group": g, "split": s}, f"{m}_mean"),
                                 _lookup(summary, {"group": g, "split": s}, f"{m}_std")))
        rows.append(cells)
    return md + _table(header, rows) + [""]


def ensemble_section(ensemble, groups, test_splits, n_folds, n_seeds) -> list:
    if not test_splits or ensemble.empty:
        return []
    md = ["## Fold-averaged test metrics", "",
          f"The {n_folds} fold models' outputs averaged per sample (the paper's test numbers); "
          f"mean ± std over {n_seeds} seed{'s' if n_seeds != 1 else ''}.", ""]
    header = ["experiment"] + [f"{s} {m}" for s in test_splits for m in ("F1", "ACC")]
    rows = [[g] + [_pm(_lookup(ensemble, {"group": g, "split": s}, f"{m}_mean"),
                       _lookup(ensemble, {"group": g, "split": s}, f"{m}_std"))
                   for s in test_splits for m in ("f1", "acc")] for g in groups]
    return md + _table(header, rows) + [""]


def difference_section(diffs, groups, splits, ref, seeds_folds, ratio, n_seeds) -> list:
    if diffs.empty:
        return []
    md = [f"## Difference to {ref}", "",
          f"Mean paired difference over (seed, fold) pairs ({seeds_folds}); in brackets the two-sided p of the Nadeau-Bengio corrected "
          f"resampled t-test (variance scaled by 1/n + n_test/n_train = 1/n + {ratio:.3g}, "
          "since the folds share training data; n - 1 degrees of freedom). Test splits use the same "
          "correction; their fold models also share the test set, so those p-values remain optimistic.", ""]
    if len(groups) > 2:  # many points against one: some p below 0.05 by chance alone
        md += [f"With {len(groups) - 1} points tested against {ref}, `Holm` is each p adjusted by Holm's step-down "
               "method over the points of its column (one family per split and metric): it keeps the chance of any "
               "false positive among them at the level read; the unadjusted p holds for one point chosen in advance.", ""]
    few = int((diffs["pairs"] < MIN_PAIRS).sum())
    if few:
        md += [f"**No p-value where a comparison has fewer than {MIN_PAIRS} (seed, fold) pairs** "
               f"(here {few} of {len(diffs)} comparisons, with as few as {int(diffs['pairs'].min())}): the test estimates the variance of the differences from n - 1 degrees of freedom, and "
               f"from so few its p-value reflects the noise of that estimate more than the difference. "
               f"Run more seeds (--seeds) or folds.", ""]
    if n_seeds < MIN_SEEDS:
        md += [f"**Warning: only {n_seeds} seed(s), too few to conclude** "
               f"(run --seeds {MIN_SEEDS} or more); read the differences as descriptive.", ""]
    for m, name in (("acc", "ACC"), ("f1", "F1")):
        header = ["experiment", "pairs"] + [f"{s} Δ{name}" for s in splits]
        rows = []
        for g in groups:
            if g == ref:
                continue
            cells = [g, _lookup(diffs, {"group": g}, "pairs")]
            for s in splits:
                d = _lookup(diffs, {"group": g, "split": s}, f"{m}_diff")
                p = _lookup(diffs, {"group": g, "split": s}, f"{m}_p")
                holm = f", Holm {_p(_lookup(diffs, {'group': g, 'split': s}, f'{m}_p_holm'))}" if len(groups) > 2 else ""
                cells.append("–" if pd.isna(d) else f"{d:+.4f}" if pd.isna(p) else f"{d:+.4f} (p={_p(p)}{holm})")
            rows.append(cells)
        md += [f"**{name}**", ""] + _table(header, rows) + [""]
    return md


def plots_section(results, epochs, folds, summary, groups, varying, splits, out) -> list:
    from analysis import plots
    md = ["## Plots", ""]
    if plots.ablation_bars(summary, groups, splits, out / "ablation_acc.png"):
        md += ["![ACC per experiment](ablation_acc.png)", ""]
    else:
        md += [f"No bar chart: {len(groups)} experiment/grid points are more than one chart shows readably "
               f"({plots.MAX_BARS}); the per-fold table above lists them all.", ""]
    for exp, params in varying.items():
        exp_folds = folds[folds["group"].isin([g for g in groups if g.split(" ")[0] == exp])]
        exp_rows = results[results["experiment"] == exp].drop_duplicates("group").set_index("group")
        for p1, p2 in itertools.combinations(params, 2):
            frame = exp_folds.join(exp_rows[[p1, p2]], on="group")
            panels = [(s, frame[frame["split"] == s].pivot_table(index=p2, columns=p1, values="acc", aggfunc="mean"))
                      for s in splits]
            name = re.sub(r"[^\w.-]+", "_", f"grid_{exp}__{p1}__{p2}.png")
            plots.heatmap_panels(panels, p1, p2, f"{exp}: ACC over {p1} × {p2} (mean over the rest)", out / name)
            md += [f"![{exp} grid {p1} × {p2}]({name})", ""]
    curves = learning_curve_data(results, epochs, groups)
    if curves:
        plots.learning_curves(curves, out / "learning_curves.png")
        md += ["![Learning curves](learning_curves.png)", ""]
    return md


def robustness_section(rob, groups, out) -> list:
    from analysis import plots
    md = ["## Robustness", ""]
    if rob.empty:
        return md + ["No robustness rows in this store (trials run with --no-robustness or before it existed).", ""]
    scenarios = scenario_order(rob["scenario"])
    rob_splits = split_order(rob["split"])
    md += ["ACC of the fold-averaged models with modalities missing (all-zero input) and with Gaussian "
           "feature noise (std = level × feature std), mean over seeds.", ""]
    panels = []
    for s in rob_splits:
        table = rob[rob["split"] == s].pivot(index="group", columns="scenario", values="acc_mean")
        table = table.reindex(index=[g for g in groups if g in table.index],
                              columns=[c for c in scenarios if c in table.columns])
        panels.append((s, table))
        md += [f"**{s}**", ""] + _table(["experiment"] + list(table.columns),
                                        [[g] + [f"{v:.4f}" if pd.notna(v) else "–" for v in r]
                                         for g, r in table.iterrows()]) + [""]
    for png in plots.robustness_matrix(panels, out / "robustness_matrix.png"):  # one per split for a large grid
        md += [f"![Robustness matrix]({png.name})", ""]
    noise = [c for c in scenarios if noise_level(c) is not None]
    if not noise:
        return md
    names = (["all"] if "all" in scenarios else []) + noise
    levels = [0.0 if c == "all" else noise_level(c) for c in names]
    lines = []
    for s in rob_splits:
        per_group = {}
        for g in groups:
            means = [_lookup(rob, {"group": g, "split": s, "scenario": c}, "acc_mean") for c in names]
            stds = [_lookup(rob, {"group": g, "split": s, "scenario": c}, "acc_std") for c in names]
            if not all(pd.isna(means)):
                per_group[g] = (levels, means, stds)
        lines.append((s, per_group))
    plots.noise_curves(lines, out / "noise_curve.png")
    return md + ["![ACC against noise](noise_curve.png)", ""]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--result-dir", default=str(DEFAULT_RESULT_DIR), metavar="DIR",
                   help=f"a store, or a folder of stores (default {DEFAULT_RESULT_DIR})")
    p.add_argument("--out", metavar="DIR", help="output folder (default DIR/report)")
    p.add_argument("--reference", default="Exp1", help="experiment or group the others are compared with")
    p.add_argument("--dataset", help="only this data set (needed when the stores hold several)")
    p.add_argument("--features", help="only this feature set (names joined by + or ,; any order)")
    p.add_argument("--include-pruned", action="store_true",
                   help="also count pruned, failed and diverged trials (left out by default)")
    p.add_argument("--format", choices=export.FORMATS, default="md",
                   help="besides report.md, write its tables (per_fold_summary, ensemble_summary, comparison, "
                        "robustness) as csv, latex (booktabs, best mean in bold) or json files")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    result_dir = Path(args.result_dir)
    if not result_dir.is_dir():
        print(f"error: result dir {result_dir} does not exist or is not a directory", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else result_dir / "report"
    try:
        check_writable(out, "--out")  # before the work, not after it
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        path = build_report(result_dir, out, args.reference, args.include_pruned, args.dataset, args.features,
                            args.format)
    except (ValueError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
