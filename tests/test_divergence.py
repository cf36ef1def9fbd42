"""A diverged trial is a result, reported as one: refused when its learning
rate cannot be finite, a non-zero exit naming the epoch and what went non-finite, listed by the
sweep summary, best_results --include-pruned and report.py with its epoch, never fake metrics."""
import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest

from prmf import store
from prmf.config import ConfigError, make_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import FEATS, merbench_root  # noqa: E402

from analysis import best_results, report  # noqa: E402
from prmf import train  # noqa: E402
from sweeps import driver  # noqa: E402


@pytest.mark.parametrize("lr", ["inf", "-inf", "nan", "0"])
def test_a_learning_rate_that_is_not_finite_and_positive_is_refused(lr, tmp_path, capsys):
    with pytest.raises(ConfigError, match="config key 'lr': must be a finite number > 0"):
        make_config(lr=float(lr))
    assert train.main(["--data", "synthetic", "--set", f"lr={lr}", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: config key 'lr': must be a finite number > 0")
    assert not (tmp_path / "out").exists()


def huge(f):
    np.save(f, np.full(3, 1e38, np.float32))  # finite, but beyond any encoder's output


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """(store, stderr, exit code) of prmf.train on a root where one sample's text feature is 1e38."""
    d = tmp_path_factory.mktemp("diverged")
    root = merbench_root(d / "root", feature=huge)
    out = d / "out"
    err = io.StringIO()  # capsys is function-scoped: redirected by hand
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = train.main(["--data", str(root), "--features", ",".join(FEATS), "--folds", "2", "--epochs", "3",
                         "--no-robustness", "--out", str(out)])
    return out, err.getvalue(), rc, root


def test_train_warns_of_absurd_features_and_exits_non_zero_naming_the_epoch(diverged):
    out, err, rc, root = diverged
    assert rc == 1
    lines = [line for line in err.splitlines() if line.strip()]
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == [f"warning: {root / 'features' / FEATS[1] / 's1.npy'}: values up to 1e+38 (|x| > 1e+06) in "
                        f"1 of 12 files of this folder; features this large make training diverge"], err
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors == [lines[-1]], err
    assert "diverged at epoch 1" in errors[0] and "training loss is nan" in errors[0], errors[0]
    assert "Traceback" not in err
    rows = store.read_results(out)
    assert set(rows.status) == {"diverged"} and set(rows.diverged_epoch) == {1}


def test_the_warning_is_repeated_when_the_cache_is_read(diverged, capsys):
    from prmf.data import load_merbench
    _, _, _, root = diverged
    load_merbench(root, FEATS)  # the cache written by the run above
    assert "s1.npy: values up to 1e+38" in capsys.readouterr().err


def test_sweep_summary_lists_diverged_trials_with_their_epoch(diverged, capsys):
    out = diverged[0]
    driver.summary(store.read_results(out))
    err = capsys.readouterr().err
    tid = store.read_results(out).trial_id.iloc[0]
    assert f"diverged (left out): {tid} at epoch 1" in err, err


def test_best_results_include_pruned_shows_the_diverged_trial(diverged, capsys):
    out = diverged[0]
    tid = store.read_results(out).trial_id.iloc[0]
    assert best_results.main(["--result-dir", str(out), "--include-pruned"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ("Diverged (a fold's loss or outputs went non-finite; NaN scores are in no table): "
                            f"attention_robust_v2 {tid} at epoch 1.\n"), captured
    assert "skipped" not in captured.err  # NaN metrics of a diverged trial are not a damaged file
    assert best_results.main(["--result-dir", str(out)]) == 2  # left out by default: nothing to compare
    assert "1 diverged" in capsys.readouterr().err


def test_report_shows_the_diverged_trial(diverged, tmp_path):
    out = diverged[0]
    tid = store.read_results(out).trial_id.iloc[0]
    assert report.main(["--result-dir", str(out), "--out", str(tmp_path / "report"), "--include-pruned"]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Diverged trials" in md and f"| {tid} | attention_robust_v2 | 0 | 1 |" in md, md
    assert report.main(["--result-dir", str(out), "--out", str(tmp_path / "r2")]) == 2  # left out by default, and said
