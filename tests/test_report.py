"""analysis/report.py: statistics over seeds × folds, paired tests, PNGs embedded in one Markdown."""
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from analysis import report
from analysis import stats as report_stats
from prmf import records, robustness, store
from prmf.config import preset_config
from prmf.engine import train_trial

REPO = Path(__file__).resolve().parent.parent
FAST = dict(lr=3e-3, batch_size=64, hidden_dim=16, dropout=0.1, epochs=2)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_data):
    """A store of Exp1 and Exp4 x seeds 0, 1 (5 folds, 2 epochs), with robustness rows."""
    d = tmp_path_factory.mktemp("sweep")
    for exp in ("Exp1", "Exp4"):
        cfg = preset_config(exp, **FAST)
        for seed in (0, 1):
            result = train_trial(cfg, tiny_data, seed=seed, scenarios=robustness.scenarios())
            tid = records.trial_id(exp, cfg, seed)
            tables = records.tables(result, tid=tid, sweep="t", experiment=exp, cfg=cfg, seed=seed,
                                    dataset=tiny_data, status="finished", wall_time_s=1.0)
            store.write_trial(d, tid, *tables)
    return d


@pytest.fixture(scope="module")
def grid(tmp_path_factory, sweep):
    """A 2 x 2 grid over kl_weight x recon_weight, made from the Exp4 rows with shifted metrics."""
    d = tmp_path_factory.mktemp("grid")
    results, epochs = store.read_results(sweep), store.read_epochs(sweep)
    base = results[results.experiment == "Exp4"]
    for i, (kl, recon) in enumerate([(0.005, 0.1), (0.005, 0.2), (0.01, 0.1), (0.01, 0.2)]):
        for tid, rows in base.groupby("trial_id"):
            new_tid = f"{tid}-g{i}"
            rows = rows.assign(trial_id=new_tid, kl_weight=kl, recon_weight=recon, acc=rows.acc + 0.01 * i)
            ep = epochs[epochs.trial_id == tid].assign(trial_id=new_tid)
            store.write_trial(d, new_tid, rows, ep, {})
    return d


def check_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 10_000, (path, len(data))
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 200, (path, image.shape)
    assert image[..., :3].std() > 0.05, f"{path} looks blank"  # white background plus drawn content


def test_report_writes_markdown_and_pngs(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main(["--result-dir", str(sweep), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'report.md'}"
    pngs = ["ablation_acc.png", "learning_curves.png", "robustness_matrix.png", "noise_curve.png"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(pngs)  # no grid: nothing varies within Exp1/Exp4
    for name in pngs:
        check_png(out / name)
    md = (out / "report.md").read_text()
    for name in pngs:
        assert f"]({name})" in md
    assert "Reference: **Exp1**" in md and "## Difference to Exp1" in md
    assert "| Exp4 | 10 |" in md  # 2 seeds x 5 folds paired with Exp1
    assert "(p=" in md and "No p-value" not in md  # 10 pairs: enough for a p-value
    assert "Mean ± std over 2 seeds × 5 folds" in md and "The 5 fold models' outputs averaged" in md
    for scenario in robustness.scenarios():
        assert f" {scenario} |" in md


def test_statistics_match_the_store(sweep):
    results, _, left_out = report.load(sweep)
    assert left_out == {}
    results, groups, varying = report_stats.add_groups(results)
    assert groups == ["Exp1", "Exp4"] and varying == {"Exp1": [], "Exp4": []}
    folds = report_stats.fold_rows(results)
    summary = report_stats.summarize(folds).set_index(["group", "split"])
    raw = results[~results.is_aggregate & (results.scenario == "clean") & (results.experiment == "Exp4")]
    for split in ("cv", "test1"):
        acc = raw[raw.split == split].acc
        assert summary.loc[("Exp4", split), "acc_mean"] == pytest.approx(acc.mean())
        assert summary.loc[("Exp4", split), "acc_std"] == pytest.approx(acc.std())
        assert summary.loc[("Exp4", split), "runs"] == 10 and summary.loc[("Exp4", split), "seeds"] == 2
    diff = report_stats.compare(folds, "Exp1").set_index(["group", "split"])
    ref = results[~results.is_aggregate & (results.scenario == "clean") & (results.experiment == "Exp1")]
    a = raw[raw.split == "cv"].sort_values(["seed", "fold"]).acc.to_numpy()
    b = ref[ref.split == "cv"].sort_values(["seed", "fold"]).acc.to_numpy()
    assert diff.loc[("Exp4", "cv"), "acc_diff"] == pytest.approx(np.mean(a - b))
    assert diff.loc[("Exp4", "cv"), "acc_p"] == pytest.approx(report_stats.corrected_t_test(a - b, 1 / 4))
    rob = report_stats.robustness_table(results).set_index(["group", "split", "scenario"])
    agg = results[results.is_aggregate & (results.scenario == "clean")]
    clean = agg[(agg.experiment == "Exp4") & (agg.split == "test2")].acc.mean()
    assert rob.loc[("Exp4", "test2", "all"), "acc_mean"] == clean


def test_corrected_t_test():
    from scipy import stats
    d = np.array([0.1, 0.2, 0.3, 0.0, 0.1])
    # by hand: mean 0.14, var (ddof 1) 0.013, se = sqrt((1/5 + 1/4) * 0.013), t = 1.8304, df 4
    t = 0.14 / np.sqrt((0.2 + 0.25) * 0.013)
    assert report_stats.corrected_t_test(d, 0.25) == pytest.approx(2 * stats.t.sf(t, 4), rel=1e-9)
    assert 0.1 < report_stats.corrected_t_test(d, 0.25) < 0.2  # t = 1.83 on 4 df: p = 0.141
    # the correction only ever widens: larger p than the naive t-test on the same pairs
    assert report_stats.corrected_t_test(d, 0.25) > stats.ttest_1samp(d, 0).pvalue
    assert report_stats.corrected_t_test(d, 0.0) == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    assert report_stats.corrected_t_test([0.0, 0.0, 0.0], 0.25) == 1.0
    assert report_stats.corrected_t_test([0.1, 0.1], 0.25) == 0.0
    assert np.isnan(report_stats.corrected_t_test([0.1], 0.25))


def test_grid_gets_groups_per_point_and_heat_maps(grid, tmp_path):
    out = tmp_path / "report"
    assert report.main(["--result-dir", str(grid), "--out", str(out), "--reference", "Exp4"]) == 0
    heat = out / "grid_Exp4__kl_weight__recon_weight.png"
    check_png(heat)
    md = (out / "report.md").read_text()
    assert "Exp4 kl_weight=0.005 recon_weight=0.1" in md and "](grid_Exp4__kl_weight__recon_weight.png)" in md
    assert "Reference: **Exp4 kl_weight=0.005 recon_weight=0.1** (first of the 4 Exp4 grid points)" in md
    results, _, _ = report.load(grid)
    _, groups, varying = report_stats.add_groups(results)
    assert varying == {"Exp4": ["kl_weight", "recon_weight"]} and len(groups) == 4


def test_two_folds_one_seed_say_so_and_give_no_p_value(tmp_path, tiny_data):
    """--folds 2 --seeds 1: the text counts 2 fold models and 1 seed, and 2 (seed, fold) pairs
    get a difference but no p-value, with the reason in the text."""
    for exp in ("Exp1", "Exp4"):
        cfg = preset_config(exp, **FAST)
        result = train_trial(cfg, tiny_data, seed=0, n_folds=2)
        tid = records.trial_id(exp, cfg, 0)
        store.write_trial(tmp_path / "s", tid, *records.tables(result, tid=tid, sweep="t", experiment=exp, cfg=cfg,
                                                               seed=0, dataset=tiny_data, status="finished", wall_time_s=1.0))
    assert report.main(["--result-dir", str(tmp_path / "s"), "--out", str(tmp_path / "r"), "--format", "json"]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Mean ± std over 1 seed × 2 folds" in md and "The 2 fold models' outputs averaged" in md, md
    assert "5 fold" not in md and "(p=" not in md, md
    assert f"No p-value where a comparison has fewer than {report_stats.MIN_PAIRS} (seed, fold) pairs" in md
    assert "| Exp4 | 2 |" in md
    import json
    comparison = json.loads((tmp_path / "r" / "comparison.json").read_text())
    assert comparison and all(r["acc_p"] is None and r["f1_p"] is None for r in comparison), comparison


def _overlapping_labels(fig):
    """Pairs of tick labels on one axis whose drawn boxes overlap."""
    import itertools
    renderer = fig.canvas.get_renderer()
    pairs = []
    for labels in (fig.axes[0].get_xticklabels(), fig.axes[0].get_yticklabels()):
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels if t.get_text()]
        pairs += [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]
    return pairs


@pytest.mark.parametrize("n", [4, 7, 9, 40])
def test_bar_labels_do_not_overlap_for_any_number_of_grid_points(n):
    """Grid points' labels as report_stats.add_groups writes them, and the ablation's short ones."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from analysis import plots
    grid = [f"Exp4 kl_weight={0.001 * (i + 1):g} recon_weight={0.1 * (i % 3 + 1):g}" for i in range(n)]
    splits = ["cv", "test1", "test2", "test3"]
    for groups in (grid, [f"Exp{i + 1}" for i in range(min(n, 7))]):
        summary = pd.DataFrame([{"group": g, "split": s, "acc_mean": 0.5 + 0.001 * i, "acc_std": 0.01}
                                for i, g in enumerate(groups) for s in splits])
        fig = plots.ablation_figure(summary, groups, splits)
        fig.canvas.draw()
        assert _overlapping_labels(fig) == [], groups
        plt.close(fig)


def test_too_many_points_for_a_chart_are_left_to_the_table(grid, tmp_path, monkeypatch):
    from analysis import plots
    monkeypatch.setattr(plots, "MAX_BARS", 3)  # the 4-point grid stands in for a 41-point one
    assert report.main(["--result-dir", str(grid), "--out", str(tmp_path / "r"), "--reference", "Exp4"]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "No bar chart: 4 experiment/grid points are more than one chart shows readably (3)" in md
    assert not (tmp_path / "r" / "ablation_acc.png").exists() and "](ablation_acc.png)" not in md


def test_heat_map_labels_do_not_overlap_with_many_values():
    import matplotlib.pyplot as plt
    import pandas as pd
    from analysis import plots
    lrs = [1e-4 * 1.5 ** i for i in range(14)]
    table = pd.DataFrame(np.random.default_rng(0).random((3, len(lrs))), index=[0.1, 0.2, 0.3], columns=lrs)
    fig = plots.heatmap_figure([("cv", table), ("test1", table)], "lr", "recon_weight", "t")
    fig.canvas.draw()
    assert _overlapping_labels(fig) == []
    plt.close(fig)


def test_missing_or_empty_dir_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "report.py"), "--result-dir",
                           str(tmp_path / "nope")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: result dir {tmp_path / 'nope'} does not exist or is not a directory"
    (tmp_path / "empty" / "results").mkdir(parents=True)
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "report.py"), "--result-dir",
                           str(tmp_path / "empty")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: no store results under {tmp_path / 'empty'}"
    assert not (tmp_path / "empty" / "report").exists()


def test_pruned_trials_are_left_out_and_named_as_in_best_results(sweep, tmp_path, capsys):
    from analysis import best_results
    d = tmp_path / "store"
    results, epochs = store.read_results(sweep), store.read_epochs(sweep)
    for tid, rows in results.groupby("trial_id"):
        status = {"Exp4-s1": "pruned", "Exp1-s1": "diverged"}.get(tid[:7], "finished")
        store.write_trial(d, tid, rows.assign(status=status), epochs[epochs.trial_id == tid], {})
    loaded, _, left_out = report.load(d)
    assert left_out == {"pruned": 1, "diverged": 1} and set(loaded.status) == {"finished"}
    assert report.main(["--result-dir", str(d), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    note = "Left out (stopped before the end; --include-pruned counts them): 1 diverged, 1 pruned trials."
    assert note in md and "2 trials," in md
    assert "Nadeau-Bengio" in md and "only 1 seed(s), too few to conclude" in md
    capsys.readouterr()
    assert best_results.main(["--result-dir", str(d), "--by", "experiment", "--json"]) == 0
    out = capsys.readouterr()
    assert note in out.err
    counted_trials = {r["source"].split("#")[1] for r in __import__("json").loads(out.out)}
    assert counted_trials == set(loaded.trial_id)  # the same trials count in both
    assert report.main(["--result-dir", str(d), "--out", str(tmp_path / "r2"), "--include-pruned"]) == 0
    assert "4 trials," in (tmp_path / "r2" / "report.md").read_text()


def test_two_data_sets_are_never_pooled(sweep, tmp_path):
    d = tmp_path / "mixed"
    results, epochs = store.read_results(sweep), store.read_epochs(sweep)
    for tid, rows in results.groupby("trial_id"):
        name = "MER2023" if tid.startswith("Exp1") else "mer2023-synthetic-tiny"
        store.write_trial(d / name, tid, rows.assign(dataset=name), epochs[epochs.trial_id == tid], {})
    with pytest.raises(ValueError, match="2 data set/feature set pairs.*--dataset"):
        report.load(d)
    loaded, _, _ = report.load(d, dataset="mer2023")
    assert set(loaded.experiment) == {"Exp1"} and set(loaded.dataset) == {"MER2023"}
    assert report.main(["--result-dir", str(d), "--out", str(tmp_path / "r")]) == 2
    assert report.main(["--result-dir", str(d), "--out", str(tmp_path / "r"), "--dataset", "MER2023"]) == 0


def test_a_corrupt_parquet_skips_only_itself(sweep, tmp_path):
    import shutil
    d = tmp_path / "store"
    shutil.copytree(sweep, d)
    (d / "results" / "zz.parquet").write_bytes(b"PAR1 not parquet")
    (d / "epochs" / "zz.parquet").write_bytes(b"PAR1 not parquet")
    warnings = []
    results, epochs, _ = report.load(d, warn=warnings.append)
    assert results.trial_id.nunique() == 4 and epochs.trial_id.nunique() == 4
    assert len(warnings) == 2 and all("zz.parquet" in w for w in warnings)


# ---------------------------------------------------------------- a large grid's report

def test_grid_points_are_in_numeric_order_not_string_order():
    import pandas as pd
    rows = pd.DataFrame({"experiment": "Exp4", "fusion_temperature": [2.0, 10.0, 0.5], "kl_weight": 0.01})
    _, groups, _ = report_stats.add_groups(rows)
    assert groups == ["Exp4 fusion_temperature=0.5", "Exp4 fusion_temperature=2", "Exp4 fusion_temperature=10"]


def test_many_points_get_small_multiples_and_page_sized_figures(tmp_path):
    from analysis import plots
    import pandas as pd
    groups = [f"Exp4 kl_weight={kl:g} recon_weight={r:g} fusion_temperature={t:g}"
              for kl in (0.005, 0.01, 0.02) for r in (0.05, 0.1, 0.15) for t in (0.5, 0.8, 1.0)]
    epochs = np.arange(1, 16)
    curves = {g: (epochs, np.log(epochs) * (1 + 0.01 * i)) for i, g in enumerate(groups)}
    fig = plots.small_multiples({g: [("val emoval", *c)] for g, c in curves.items()}, "epoch", "val emoval", "t")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titles[:2] == ["kl_weight=0.005\nrecon_weight=0.05\nfusion_temperature=0.5",  # one panel per point, in order
                          "kl_weight=0.005\nrecon_weight=0.05\nfusion_temperature=0.8"] and len(titles) == 27
    assert not fig.legends and all(ax.get_legend() is None for ax in fig.axes)  # titles name the points, no legend
    page = (8.5 * plots.DPI, 11 * plots.DPI)  # pixels of a page at the report's resolution
    check = [plots.learning_curves(curves, tmp_path / "lc.png")]
    scenarios = ["all", "-a", "-t", "-v", "-a-t", "-a-v", "-t-v", "noise:0.5", "noise:1", "noise:2"]
    table = pd.DataFrame(np.linspace(0.2, 0.5, 27 * 10).reshape(27, 10), index=groups, columns=scenarios)
    matrices = plots.robustness_matrix([(s, table) for s in ("test1", "test2", "test3")], tmp_path / "robustness_matrix.png")
    assert [p.name for p in matrices] == [f"robustness_matrix_{s}.png" for s in ("test1", "test2", "test3")]
    noise = [(s, {g: ([0.0, 0.5, 1.0], [0.5, 0.4, 0.3], [0.01] * 3) for g in groups}) for s in ("test1", "test2")]
    check += matrices + [plots.noise_curves(noise, tmp_path / "noise.png")]
    for path in check:
        height, width = matplotlib.image.imread(path).shape[:2]
        assert width <= page[0] and height <= page[1], (path.name, width, height)
        check_png(path)


def test_holm_adjusts_the_p_values_of_many_points_against_one():
    import pandas as pd
    assert report_stats.holm([0.01, 0.04, 0.03, float("nan")]).tolist()[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(report_stats.holm([0.01, float("nan")])[1])
    rng = np.random.default_rng(0)
    folds = pd.DataFrame([{"group": g, "split": "cv", "seed": s, "fold": f, "acc": 0.5 + 0.01 * i + rng.normal(0, 0.02),
                           "f1": 0.5 + rng.normal(0, 0.02), "n_train": 80, "n_test": 20}
                          for i, g in enumerate("ABCD") for s in range(2) for f in range(5)])
    diffs = report_stats.compare(folds, "A")
    raw = diffs.acc_p.to_numpy()
    assert diffs.acc_p_holm.tolist() == pytest.approx(report_stats.holm(raw).tolist())
    assert (diffs.acc_p_holm >= diffs.acc_p).all() and diffs.acc_p_holm.max() <= 1
