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
        fig, ax = plt.subplots(figsize=(8, 1.5 + (0.2 + 0.08 * len(splits)) * len(groups)))
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
    """Models x scenarios ACC, one panel per test split; `panels` = [(split, DataFrame)]."""
    n_rows = max(t.shape[0] for _, t in panels)
    n_cols = max(t.shape[1] for _, t in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.75 * n_cols + 2.5), (0.45 * n_rows + 1.3) * len(panels)),
                             squeeze=False)
    for ax, (split, table) in zip(axes[:, 0], panels):
        values = table.to_numpy(dtype=float)
        im = ax.imshow(values, cmap="RdYlGn", vmin=np.nanmin(values), vmax=np.nanmax(values), aspect="auto")
        ax.set_xticks(range(table.shape[1]), table.columns, rotation=30, ha="right")
        ax.set_yticks(range(table.shape[0]), table.index)
        ax.set_title(f"{split}: ACC by scenario (fold-averaged, mean over seeds)")
        for (r, c), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.3f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    return _save(fig, path)


def noise_curves(curves, path):
    """ACC against noise level, one line per group and one panel per test split.

    `curves` = [(split, {group: (levels, means, stds)})]; level 0 is the clean ('all') score.
    """
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
    """Mean validation emoval per epoch, one line per group; `curves` = {group: (epochs, means)}."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for group, (epochs, means) in curves.items():
        ax.plot(epochs, means, label=group, marker="." if len(epochs) < 30 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val emoval (mean over folds and seeds)")
    ax.set_title("Learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)
