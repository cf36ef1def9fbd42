"""The report's PNG figures (matplotlib, Agg backend). Each function takes tidy frames built by
analysis/report.py, writes one PNG and returns its path."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 110


def _save(fig, path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


# Bars are drawn for up to MAX_BARS experiment/grid points; beyond that a chart is a wall of
# labels and the report's table is the readable view.
MAX_BARS = 40
# Upright bars only for a few short labels (Exp1 ... Exp7); anything longer, e.g. a grid point's
# "Exp4 kl_weight=0.005 recon_weight=0.1", lies horizontally: one label per row never overlaps.
MAX_UPRIGHT, MAX_UPRIGHT_LABEL = 8, 12


def ablation_bars(summary, groups, splits, path, metric="acc"):
    """Grouped bars (one group per experiment/grid point, one bar per split, ±std) as a PNG;
    None, and no file, for more than MAX_BARS points."""
    if len(groups) > MAX_BARS:
        return None
    return _save(ablation_figure(summary, groups, splits, metric), path)


def ablation_figure(summary, groups, splits, metric="acc"):
    """The figure of ablation_bars: upright for a few short labels, else horizontal."""
    width = 0.8 / max(len(splits), 1)
    pos = np.arange(len(groups))
    horizontal = len(groups) > MAX_UPRIGHT or max(map(len, groups)) > MAX_UPRIGHT_LABEL
    if horizontal:
        fig, ax = plt.subplots(figsize=(8, 1.5 + (0.1 + 0.05 * len(splits)) * len(groups)))  # 27 points: a page
    else:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(groups) * len(splits) + 2), 4.5))
    table = summary.set_index(["group", "split"])
    for i, split in enumerate(splits):
        means = [table[f"{metric}_mean"].get((g, split), np.nan) for g in groups]
        stds = np.nan_to_num([table[f"{metric}_std"].get((g, split), np.nan) for g in groups])
        offset = pos + (i - (len(splits) - 1) / 2) * width
        if horizontal:
            ax.barh(offset, means, width, xerr=stds, capsize=2, label=split)
        else:
            ax.bar(offset, means, width, yerr=stds, capsize=3, label=split)
    spread = summary[f"{metric}_std"].fillna(0)
    lows, highs = summary[f"{metric}_mean"] - spread, summary[f"{metric}_mean"] + spread
    limits = (max(0.0, float(lows.min()) - 0.05), min(1.05, float(highs.max()) + 0.06))
    if horizontal:
        ax.set_xlim(*limits)
        ax.set_yticks(pos, groups, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(metric.upper())
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.set_ylim(*limits)
        ax.set_xticks(pos, groups, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
        ax.set_ylabel(metric.upper())
        ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{metric.upper()} per experiment (mean ± std over seeds × folds)", pad=22)
    ax.legend(ncols=len(splits), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return fig


def heatmap_panels(panels, xlabel, ylabel, title, path, fmt="{:.3f}"):
    """One annotated heat map per (name, DataFrame) in `panels` (rows = y values, columns = x values)."""
    return _save(heatmap_figure(panels, xlabel, ylabel, title, fmt), path)


def heatmap_figure(panels, xlabel, ylabel, title, fmt="{:.3f}"):
    """The figure of heatmap_panels: cells sized for any number of grid values."""
    cols, rows = max(t.shape[1] for _, t in panels), max(t.shape[0] for _, t in panels)
    # a cell wide and tall enough for its annotation and its tick label, however many grid values
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.2, 0.45 * cols + 1.5) * len(panels), max(3.8, 0.3 * rows + 1.8)),
                             squeeze=False)
    for ax, (name, table) in zip(axes[0], panels):
        values = table.to_numpy(dtype=float)
        im = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower")
        xlabels = [f"{v:g}" if isinstance(v, float) else str(v) for v in table.columns]
        crowded = sum(map(len, xlabels)) > 4 * len(xlabels) + 8  # longer than the cells are wide
        ax.set_xticks(range(table.shape[1]), xlabels, rotation=90 if crowded else 0)
        ax.set_yticks(range(table.shape[0]), [f"{v:g}" if isinstance(v, float) else str(v) for v in table.index])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        finite = values[np.isfinite(values)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0
        for (r, c), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=7,
                        color="black" if v > middle else "white")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def robustness_matrix(panels, path):
    """Models x scenarios ACC, one panel per test split; `panels` = [(split, DataFrame)]. Up to
    MAX_LINES models one PNG at `path`; more, one page-sized PNG per split (`path`'s stem + _SPLIT).
    Returns the paths."""
    n_rows = max(t.shape[0] for _, t in panels)
    if n_rows <= MAX_LINES:
        return [_save(_matrix_figure(panels), path)]
    path = Path(path)
    return [_save(_matrix_figure([(split, table)]), path.with_name(f"{path.stem}_{split}{path.suffix}"))
            for split, table in panels]


def _matrix_figure(panels):
    n_rows = max(t.shape[0] for _, t in panels)
    n_cols = max(t.shape[1] for _, t in panels)
    small = n_rows > MAX_LINES  # rows and annotations smaller: a 27-point grid fits a page
    fig, axes = plt.subplots(len(panels), 1, squeeze=False, figsize=(
        max(6.0, (0.5 if small else 0.75) * n_cols + 2.5), ((0.22 if small else 0.45) * n_rows + 1.3) * len(panels)))
    for ax, (split, table) in zip(axes[:, 0], panels):
        values = table.to_numpy(dtype=float)
        im = ax.imshow(values, cmap="RdYlGn", vmin=np.nanmin(values), vmax=np.nanmax(values), aspect="auto")
        ax.set_xticks(range(table.shape[1]), table.columns, rotation=30, ha="right", fontsize=7 if small else None)
        ax.set_yticks(range(table.shape[0]), table.index, fontsize=6 if small else None)
        ax.set_title(f"{split}: ACC by scenario (fold-averaged, mean over seeds)")
        for (r, c), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2f}" if small else f"{v:.3f}", ha="center", va="center", fontsize=5 if small else 7)
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    return fig


def noise_curves(curves, path):
    """ACC against noise level, one line per group and one panel per test split; more groups than
    MAX_LINES: one small panel per group, a line per split.

    `curves` = [(split, {group: (levels, means, stds)})]; level 0 is the clean ('all') score.
    """
    groups = list(dict.fromkeys(g for _, lines in curves for g in lines))
    if len(groups) > MAX_LINES:
        series = {g: [(split, *lines[g][:2]) for split, lines in curves if g in lines] for g in groups}
        return _save(small_multiples(series, "noise std / feature std", "ACC", "ACC under Gaussian feature noise"), path)
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.8), squeeze=False, sharey=True)
    for ax, (split, lines) in zip(axes[0], curves):
        for group, (levels, means, stds) in lines.items():
            ax.errorbar(levels, means, yerr=np.nan_to_num(stds), marker="o", capsize=3, label=group)
        ax.set_title(split)
        ax.set_xlabel("noise std / feature std")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("ACC")
    axes[0, -1].legend(fontsize=7, loc="best")
    fig.suptitle("ACC under Gaussian feature noise")
    fig.tight_layout()
    return _save(fig, path)


def learning_curves(curves, path):
    """Mean validation emoval per epoch, one line per group; `curves` = {group: (epochs, means)}.
    More groups than MAX_LINES: one small panel per group, the others grey behind it."""
    ylabel = "val emoval (mean over folds and seeds)"
    if len(curves) > MAX_LINES:
        series = {g: [("val emoval", epochs, means)] for g, (epochs, means) in curves.items()}
        return _save(small_multiples(series, "epoch", ylabel, "Learning curves"), path)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for group, (epochs, means) in curves.items():
        ax.plot(epochs, means, label=group, marker="." if len(epochs) < 30 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title("Learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


# More lines than this in one axes repeat matplotlib's 10 colours and need a legend taller than
# the plot: a grid's points get small multiples instead, one panel per point named in its title.
MAX_LINES = 10
PAGE_WIDTH = 8.0  # inches: figures fit a page at the report's DPI


def short_labels(groups) -> dict:
    """group -> its panel title: the words all groups share (the experiment) dropped, one
    'param=value' per line."""
    words = [g.split(" ") for g in groups]
    common = 0
    while all(len(w) > common + 1 and w[common] == words[0][common] for w in words):
        common += 1
    return {g: "\n".join(w[common:]) for g, w in zip(groups, words)}


def small_multiples(series, xlabel, ylabel, title):
    """One small panel per group, in the groups' order, sharing axes: `series` = {group: [(line
    name, x, y)]}; a line name has one colour in every panel (legend once). Where each group has one
    line, every other group's is drawn in light grey behind it, for comparison."""
    groups, labels = list(series), short_labels(list(series))
    cols = min(5, len(groups))
    rows = -(-len(groups) // cols)
    lines_per = max(len(label.splitlines()) for label in labels.values())
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_WIDTH, rows * (1.05 + 0.12 * lines_per) + 0.6),
                             sharex=True, sharey=True, squeeze=False)
    names = list(dict.fromkeys(name for lines in series.values() for name, _, _ in lines))
    colour = {n: f"C{i % 10}" for i, n in enumerate(names)}
    single = all(len(lines) == 1 for lines in series.values())
    for ax, g in zip(axes.flat, groups):
        if single:
            for other in groups:
                if other != g:
                    _, x, y = series[other][0]
                    ax.plot(x, y, color="0.85", linewidth=0.6)
        for name, x, y in series[g]:
            ax.plot(x, y, color=colour[name], linewidth=1.4, label=name)
        ax.set_title(labels[g], fontsize=6)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for i, ax in enumerate(axes.flat):
        if i >= len(groups):
            ax.set_visible(False)
        elif i + cols >= len(groups):  # the lowest panel of its column: its x ticks are labelled
            ax.xaxis.set_tick_params(labelbottom=True)
    fig.supxlabel(xlabel, fontsize=8)
    fig.supylabel(ylabel, fontsize=8)
    fig.suptitle(title, fontsize=10)
    if not single:
        fig.legend([plt.Line2D([], [], color=colour[n]) for n in names], names, ncols=len(names), fontsize=7,
                   loc="upper right", frameon=False)
    fig.tight_layout()
    return fig
