"""No run silently trains on the wrong data or lands in the wrong sweep."""
import json
import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prmf import records, store
from prmf.config import make_config
from prmf.data import load_merbench

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import FEATS, LABELS, REPO, make_root, sweep_argv, sweep_env  # noqa: E402


def test_feature_file_rewritten_in_place_is_read_again(tmp_path, capsys):
    root = make_root(tmp_path, LABELS, FEATS)
    first = load_merbench(root, FEATS)
    folder = root / "features" / FEATS[0]
    st = folder.stat()
    np.save(folder / "s1.npy", np.full(3, 42.0, np.float32))  # a re-extraction: same name, same size
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the folder's mtime as it was
    capsys.readouterr()
    second = load_merbench(root, FEATS)
    assert first.splits["train"].inputs[0][0].tolist() == [1.0, 1.0, 1.0]
    assert second.splits["train"].inputs[0][0].tolist() == [42.0, 42.0, 42.0]
    assert "feature files changed" in capsys.readouterr().err
    assert load_merbench(root, FEATS).splits["train"].inputs[0][0][0] == 42.0  # the rebuilt cache is used
    assert len(list((root / ".prmf-cache").iterdir())) == 1  # replaced, not piled up


def test_features_replaced_with_their_mtimes_kept_are_read_again(tmp_path):
    """`cp -p`, `rsync -a`, `tar x`: new data of the same size under the old mtimes."""
    root = make_root(tmp_path, LABELS, FEATS)
    load_merbench(root, FEATS)
    time.sleep(0.05)  # past the kernel's timestamp tick (at most 10 ms), as any later copy is
    files = sorted((root / "features").rglob("*.npy"))
    for f in files:
        st = f.stat()
        old = np.load(f)
        np.save(f, old + 7.0)  # same shape and dtype: the same size
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    ds = load_merbench(root, FEATS)
    assert ds.splits["train"].inputs[0][:, 0].tolist() == [8.0, 9.0]  # 1, 2 as written, plus 7
    assert ds.splits["test3"].inputs[2][0].tolist() == [8.0, 8.0]


def test_store_files_get_the_umask_modes(tmp_path):
    old = os.umask(0o022)
    try:
        df = pd.DataFrame({"trial_id": ["t"], "acc": [0.5]})
        store.write_trial(tmp_path, "t", df, df, {"cv_x.npz": {"a": np.zeros(2)}})
        store.atomic_write(tmp_path / "sweep.json", lambda tmp: Path(tmp).write_text("{}"))
    finally:
        os.umask(old)
    for f in ["results/t.parquet", "epochs/t.parquet", "sweep.json", "predictions/t/cv_x.npz"]:
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == 0o644, f
    assert stat.S_IMODE((tmp_path / "predictions" / "t").stat().st_mode) == 0o755


def test_trial_id_includes_data_set_and_features(tiny_data, small_data):
    cfg = make_config(epochs=3)
    a, b = records.trial_id("Exp1", cfg, 0, tiny_data), records.trial_id("Exp1", cfg, 0, small_data)
    assert a != b and a == records.trial_id("Exp1", cfg, 0, tiny_data)
    assert records.trial_id("Exp1", cfg, 0) not in (a, b)  # the old id (config and seed only)


def test_a_fold_with_non_finite_outputs_stops_marked_diverged(tiny_data):
    import torch

    from prmf.engine import Engine
    cfg = make_config(epochs=3, hidden_dim=16, batch_size=64, lr=1e-3)
    runner = Engine([(cfg, 0)], tiny_data, 2, "cpu")
    runner.step()
    with torch.no_grad():  # fold 1's weights blow up after epoch 1
        for p in runner.model.parameters():
            p[1].fill_(math.inf)
    while not runner.done:
        runner.step()
    assert [f.diverged_epoch for f in runner.members] == [0, 2] and runner.epoch == 3
    assert runner.live == []  # the diverged fold left the batch at once, the other at its last epoch
    res = runner.score()[0]
    results, _, _ = records.tables(res, tid="t", sweep="s", experiment="e", cfg=cfg, seed=0, dataset=tiny_data,
                                   status="finished", wall_time_s=1.0)
    assert (results.status == "diverged").all()
    cv = results[results.split == "cv"]
    agg = cv[cv.is_aggregate].iloc[0]
    cv = cv[~cv.is_aggregate].set_index("fold")
    assert cv.loc[1, "diverged_epoch"] == 2 and cv.loc[0, "diverged_epoch"] == 0 and agg.diverged_epoch == 2
    assert np.isfinite(cv.loc[1, "acc"])  # its best epoch (1) came before the blow-up
    assert np.isfinite(results[results.split == "test1"].acc).all()


def sweep_proc(*args):
    return subprocess.Popen(sweep_argv("ablation.py", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=sweep_env(), cwd=REPO)


@pytest.mark.timeout(600)
def test_second_driver_on_a_sweep_is_turned_away_then_old_ids_resume_and_lr_1e6_diverges(tmp_path, data_dir):
    common = ["--experiments", "Exp1", "--folds", "2", "--storage", str(tmp_path), "--name", "s"]
    first = sweep_proc(*common, "--epochs", "3")
    lock = tmp_path / "s" / "driver.lock"
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    t0 = time.time()
    second = sweep_proc(*common, "--epochs", "4")
    _, err = second.communicate(timeout=120)
    dt = time.time() - t0
    assert second.returncode == 2, err[-2000:]
    assert err.strip().splitlines()[-1] == (f"error: sweep 's' at {tmp_path} is being run by another driver "
                                            f"(host {os.uname().nodename} PID {first.pid}); wait for it to end, "
                                            f"or use --name NEW"), err[-2000:]
    assert "Ray instance" not in err and dt < 60  # turned away before any Ray started
    _, err1 = first.communicate(timeout=400)
    assert first.returncode == 0, err1[-3000:]
    print(f"\n[lock] second driver refused in {dt:.1f}s")
    df = store.read_results(tmp_path / "s")
    assert set(df.epochs_run[df.fold >= 0]) <= {1, 2, 3} and df.trial_id.nunique() == 1

    # a sweep stored under the old ids (config and seed only) resumes without training them again
    tid = df.trial_id.iloc[0]
    cfg = make_config(json.loads(df.config_json.iloc[0]))
    old = records.trial_id("Exp1", cfg, 0)
    assert tid != old
    for part in ("results", "epochs"):
        os.replace(tmp_path / "s" / part / f"{tid}.parquet", tmp_path / "s" / part / f"{old}.parquet")
    again = sweep_proc(*common, "--epochs", "3")
    _, err2 = again.communicate(timeout=300)
    assert again.returncode == 0 and "1 already done" in err2, err2[-2000:]
    assert store.completed_trials(tmp_path / "s") == {old}

    # lr=1e6 (lr=inf is refused up front): every fold diverges at epoch 1; the trial is stored as
    # diverged, the sweep ends cleanly and its summary names it
    div = sweep_proc("--experiments", "Exp1", "--folds", "2", "--epochs", "3", "--set", "lr=1e6",
                     "--storage", str(tmp_path), "--name", "d")
    _, err3 = div.communicate(timeout=300)
    assert div.returncode == 0, err3[-3000:]
    d = store.read_results(tmp_path / "d")
    assert set(d.status) == {"diverged"} and set(d.diverged_epoch) == {1} and set(d.epochs_run) == {1}
    assert f"diverged (left out): {d.trial_id.iloc[0]} at epoch 1" in err3, err3[-3000:]
