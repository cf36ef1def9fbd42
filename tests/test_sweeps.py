"""Sweeps on real Ray Tune (a local Ray, 2 CPUs, tiny built-in data, few epochs)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from prmf import store

from helpers import REPO, TINY, sweep


def test_ablation_sweep_writes_one_row_per_trial_fold_split_and_npz(tmp_path, data_dir):
    sweep("ablation.py", "--experiments", "Exp1,Exp4", "--epochs", "3", "--storage", str(tmp_path), "--name", "abl")
    root = tmp_path / "abl"
    df = store.read_results(root)
    clean = df[df.scenario == "clean"]
    assert sorted(clean.experiment.unique()) == ["Exp1", "Exp4"]
    assert len(clean) == 2 * 4 * 6  # trials x splits x (5 folds + aggregate)
    assert not df.duplicated(store.RESULT_KEY).any()
    assert set(clean.fold.dropna()) == {0, 1, 2, 3, 4} and clean.fold.isna().equals(clean.is_aggregate)
    assert (df.status == "finished").all()
    assert (clean.epochs_run <= 3).all() and (clean.model == "attention_robust_v2").all()
    for tid in df.trial_id.unique():
        npz = sorted((root / "predictions" / tid).glob("*.npz"))
        assert [p.name.split("_")[0] for p in npz] == ["cv", "test1", "test2", "test3"]
        np.load(npz[0], allow_pickle=False)["logits"]
    assert len(store.read_epochs(root)) == 2 * 5 * 3
    assert not list(root.glob("tune/run-*/*/checkpoint_*"))  # finished packs leave no checkpoint behind
    run, = (root / "provenance").glob("run-*.json")  # where the rows came from: command, commit, versions
    record = json.loads(run.read_text())
    assert "ablation.py" in record["command"] and set(record["trials"]) == set(df.trial_id)
    assert set(df.commit) == {record["commit"] + ("+dirty" if record["dirty"] else "")}
    state, = root.glob("tune/run-*/experiment_state*.json")  # Tune holds pack ids; the specs are files
    assert "kl_weight" not in state.read_text() and len(list(root.glob("pack-specs/*.json"))) == 2


def test_asha_stops_a_hopeless_grid_point_inside_its_pack(tmp_path, data_dir):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: Exp1\ngrid:\n  lr: [0.003, 0.002, 0.000000001]\n")
    # the three points differ in lr only: one pack (one slot of 2 CPUs), judged in grid order, so the
    # hopeless point meets its rung last; the folds' patience (40) cannot stop anything in 8 epochs:
    # only ASHA (rungs at epochs 2 and 6) can
    out = sweep("grid.py", "--grid", str(grid), "--epochs", "8", "--grace-period", "2", "--cpus-per-trial", "2", "--pack", "3",
                "--storage", str(tmp_path), "--name", "g")
    assert "3 trials in 1 packs of 3" in out.stderr
    df = store.read_results(tmp_path / "g")
    assert df.pack.nunique() == 1
    agg = df[df.is_aggregate & (df.scenario == "clean") & (df.split == "cv")].set_index("lr")
    assert agg.loc[0.003, "status"] == "finished" and agg.loc[0.003, "epochs_run"] == 8
    assert agg.loc[1e-9, "status"] == "pruned" and agg.loc[1e-9, "epochs_run"] == 2
    assert agg.loc[1e-9, "acc"] < agg.loc[0.003, "acc"]
    assert len(df[df.scenario == "clean"]) == 3 * 4 * 6  # a pruned trial still has all its rows
    epochs = store.read_epochs(tmp_path / "g").groupby("trial_id").epoch.max()
    assert epochs[agg.loc[1e-9, "trial_id"]] == 2 and epochs[agg.loc[0.003, "trial_id"]] == 8  # it left the batch
    assert not list((tmp_path / "g").glob("tune/run-*/*/checkpoint_*"))
    rung2 = json.loads((tmp_path / "g" / "asha_rungs.json").read_text())["2"]  # for a resumed sweep to judge by
    assert sorted(rung2) == sorted(df.trial_id.unique())


def test_pack_auto_measures_once_says_why_and_packs_as_it_said(tmp_path, data_dir):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: Exp4\ngrid:\n  kl_weight: [0.001, 0.002, 0.003]\n")
    args = ["--grid", str(grid), "--epochs", "1", "--no-asha", "--cpus-per-trial", "2", "--storage", str(tmp_path)]
    said = []
    for name in ("first", "second"):
        err = sweep("grid.py", *args, "--name", name).stderr
        line, = [x for x in err.splitlines() if x.startswith("--pack auto: ")]
        size = int(line.split()[2])
        said.append(line)
        packs = {p for p in store.read_results(tmp_path / name).pack}
        assert len(packs) == -(-3 // size), (line, packs)  # 3 trials, 1 slot of 2 CPUs: as many packs as it said
        assert ("3 trials in" in err) == (size > 1)
    assert re.search(r"measured in [0-9.]+ s with 2 CPU per pack: a step of 1 trial \d+ ms, of 3 trials \d+ ms", said[0])
    assert "measured before (cached) with 2 CPU per pack" in said[1]
    assert said[0].split(": a step")[1] == said[1].split(": a step")[1]  # the same timings, the same choice


def _results(root):
    df = store.read_results(root)
    return df.sort_values(store.RESULT_KEY).reset_index(drop=True)


def test_sigkilled_packed_grid_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path, data_dir):
    # 4 points in 2 packs of 2, each pack a good and a hopeless lr: ASHA prunes inside the packs
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: Exp4\ngrid:\n  lr: [0.003, 0.000000001]\n  kl_weight: [0.005, 0.05]\n")
    args = ["--grid", str(grid), "--epochs", "6", "--grace-period", "2", "--checkpoint-every", "1",
            "--cpus-per-trial", "2", "--pack", "2", "--storage", str(tmp_path)]
    sweep("grid.py", *args, "--name", "straight")

    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, str(REPO / "sweeps" / "grid.py"), *TINY, *args, "--name", "killed"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    root = tmp_path / "killed"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a trial is stored and a pack has a checkpoint in Tune's storage
        if store.completed_trials(root) and list(root.glob("tune/run-*/*/checkpoint_*/pack.json")):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the sweep never reached a stored trial plus a checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)  # driver and the local Ray it started, as a node crash would
    proc.wait()
    finished_before = {p.name: p.stat().st_mtime_ns for p in (root / "results").glob("*.parquet")}
    assert 1 <= len(finished_before) < 4  # killed mid-sweep: some trials stored, not all

    again = sweep("grid.py", *args, "--name", "killed")
    assert f"{len(finished_before)} already done" in again.stderr
    after = {p.name: p.stat().st_mtime_ns for p in (root / "results").glob("*.parquet")}
    assert {k: after[k] for k in finished_before} == finished_before  # no stored trial ran again

    a, b = _results(tmp_path / "straight"), _results(root)
    assert a[store.RESULT_KEY].equals(b[store.RESULT_KEY])
    assert set(a.status) == {"finished", "pruned"} and a.pack.nunique() == 2
    for col in ("acc", "f1", "val_mse", "best_epoch", "epochs_run", "status"):
        assert (a[col] == b[col]).all() if col == "status" else np.allclose(a[col], b[col], equal_nan=True), col
    ep_a, ep_b = store.read_epochs(tmp_path / "straight"), store.read_epochs(root)
    assert len(ep_a) == len(ep_b) and not ep_b.duplicated(["trial_id", "fold", "epoch"]).any()


def test_sigterm_at_a_store_write_resumes_to_the_numbers_of_every_packing_and_of_prmf_train(tmp_path, data_dir):
    # 4 points: two stop early (min_delta 10: no gain counts; patience 2: stored at epoch 3) while
    # their pack-mates run on; the first checkpoint is due at epoch 4, so the resumed pack starts
    # over without the stored trials. Each trial's rows must be the same in packs of 1, 2 and 4,
    # after the kill and resume, and from prmf.train (float32: to 1e-6, ACC and best epochs equal)
    from prmf.train import main as train_main
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: Exp4\nset:\n  patience: 2\n  modality_dropout_warmup: 1\n"
                    "grid:\n  kl_weight: [0.005, 0.01]\n  min_delta: [0.0, 10.0]\n")
    common = ["--grid", str(grid), "--epochs", "5", "--folds", "2", "--no-asha", "--checkpoint-every", "4",
              "--storage", str(tmp_path)]
    sweep("grid.py", *common, "--pack", "1", "--name", "alone")
    sweep("grid.py", *common, "--pack", "2", "--name", "pairs")
    killed = [*common, "--pack", "4", "--name", "killed"]
    proc = subprocess.Popen([sys.executable, str(REPO / "sweeps" / "grid.py"), *TINY, *killed], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True)
    root = tmp_path / "killed"
    deadline = time.time() + 300
    while not (list(root.glob(".pred-*")) or store.completed_trials(root)):  # a trial's store write under way
        assert time.time() < deadline and proc.poll() is None, "the sweep never stored a trial"
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGTERM)  # every process of the sweep, as a scheduler's preemption does
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(store.completed_trials(root)) < 4
    sweep("grid.py", *killed)
    assert train_main(["--data", "synthetic", "--profile", "tiny", "--experiment", "Exp4", "--epochs", "5", "--folds", "2",
                       "--no-robustness", "--out", str(tmp_path / "train"), "--device", "cpu",
                       *[a for kv in ("hidden_dim=16", "batch_size=64", "lr=0.003", "patience=2", "modality_dropout_warmup=1",
                                      "kl_weight=0.01", "min_delta=0.0") for a in ("--set", kv)]]) == 0
    frames = {name: _results(tmp_path / name) for name in ("alone", "pairs", "killed")}
    a = frames["alone"]
    assert len(a) == 4 * len(a[a.trial_id == a.trial_id[0]]) and set(a.epochs_run[a.min_delta == 10.0]) == {3}
    cols = ["acc", "f1", "emoval", "val_mse"]
    for name, b in frames.items():
        assert a[store.RESULT_KEY].equals(b[store.RESULT_KEY]) and not b.duplicated(store.RESULT_KEY).any(), name
        assert (a.best_epoch == b.best_epoch).all() and (a.epochs_run == b.epochs_run).all() and (a.acc == b.acc).all(), name
        assert np.allclose(a[cols].to_numpy(float), b[cols].to_numpy(float), rtol=0, atol=1e-6, equal_nan=True), name
    one = a[(a.kl_weight == 0.01) & (a.min_delta == 0.0) & (a.scenario == "clean")].sort_values(["split", "fold"])
    alone = _results(tmp_path / "train")
    alone = alone[alone.scenario == "clean"].sort_values(["split", "fold"])
    assert len(one) == len(alone) and (one.acc.to_numpy() == alone.acc.to_numpy()).all()
    assert np.allclose(one[cols].to_numpy(float), alone[cols].to_numpy(float), rtol=0, atol=1e-6, equal_nan=True)


def test_bad_inputs_are_one_line_errors_that_leave_nothing(tmp_path, data_dir):
    cases = [
        (["ablation.py", "--experiments", "Exp1,Exp9"], "unknown experiment 'Exp9'"),
        (["ablation.py", "--num-gpus", "64"], "--num-gpus 64 is more than this machine has"),  # before Ray starts
        (["ablation.py", "--storage", "/proc/no-such-dir/x"], "cannot be written"),
        (["ablation.py", "--set", "dropout=1.5"], "config key 'dropout'"),
    ]
    bad_grid = tmp_path / "bad.yaml"
    bad_grid.write_text("grid:\n  kl_wieght: [0.1]\n")
    cases.append((["grid.py", "--grid", str(bad_grid)], "unknown config key 'kl_wieght'"))
    for argv, message in cases:
        proc = sweep(argv[0], *argv[1:], "--storage" if "--storage" not in argv else "--name",
                     str(tmp_path / "s") if "--storage" not in argv else "x", check=False)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], (argv, proc.stderr[-2000:])
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").rglob("*.parquet"))


def test_same_name_with_other_settings_is_refused_until_restart(tmp_path, data_dir):
    sweep("ablation.py", "--experiments", "Exp1", "--epochs", "2", "--storage", str(tmp_path), "--name", "n")
    proc = sweep("ablation.py", "--experiments", "Exp1", "--epochs", "3", "--storage", str(tmp_path), "--name", "n",
                 check=False)
    assert proc.returncode == 2
    assert "Exp1.epochs: 2 -> 3" in proc.stderr and "--restart" in proc.stderr
    old = store.completed_trials(tmp_path / "n")
    n_files = sum(1 for p in (tmp_path / "n").rglob("*") if p.is_file() and p.name != "driver.lock")
    proc = sweep("ablation.py", "--experiments", "Exp1", "--epochs", "3", "--storage", str(tmp_path), "--name", "n",
                 "--restart")
    said = [line for line in proc.stderr.splitlines() if line.startswith("--restart: deleting")]
    assert said == [f"--restart: deleting sweep 'n' at {tmp_path / 'n'}: 1 stored trial ({', '.join(old)}), "
                    f"{n_files} files in {said[0].split(' files in ')[1]}"], proc.stderr[-2000:]
    assert "results/" in said[0] and "sweep.json" in said[0]
    df = store.read_results(tmp_path / "n")
    assert (df.epochs_run <= 3).all() and df.epochs_run.max() == 3 and df.trial_id.nunique() == 1


def test_packs_group_trials_by_architecture_and_keep_their_members_on_resume(tmp_path):
    from prmf.config import preset_config
    from sweeps import plan

    def spec(tid, cfg):
        return {"trial_id": tid, "cfg": cfg.to_dict(), "folds": 5}

    base = preset_config("Exp4", hidden_dim=16)
    specs = [spec(f"k{i}", base.replace(kl_weight=0.01 * i, lr=1e-3 * (i + 1))) for i in range(5)]
    specs.append(spec("wide", base.replace(hidden_dim=32)))  # another architecture: its own pack
    packs = plan.make_packs(specs, 2, tmp_path)
    members = sorted(sorted(s["trial_id"] for s in m) for _, m in packs)
    assert members == [["k0", "k3"], ["k1", "k4"], ["k2"], ["wide"]]  # 5 in 3 packs of 2/2/1, balanced
    assert {pid for pid, m in packs if len(m) == 1} == {"k2", "wide"}  # a pack of one is named by its trial
    again = plan.make_packs(specs[::-1], 3, tmp_path)  # resumed: packs.json
    assert sorted(sorted(s["trial_id"] for s in m) for _, m in again) == members


def test_a_worker_killed_mid_trial_is_one_line_counted_in_the_progress(tmp_path, data_dir):
    """Tune retries the pack from its checkpoint; the user sees one line, not Ray's traceback, and
    the progress line counts the error."""
    import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
    import psutil
    proc = subprocess.Popen([sys.executable, str(REPO / "sweeps" / "ablation.py"), *TINY, "--experiments", "Exp1",
                             "--folds", "2", "--epochs", "200", "--patience", "200", "--storage", str(tmp_path),
                             "--name", "k"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_ADDRESS": ""})

    def training_worker():
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "ray::ImplicitFunc" in " ".join(p.cmdline()):
                    return p
            except psutil.Error:
                pass
    deadline = time.time() + 120
    while (worker := training_worker()) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert worker is not None, "no training worker appeared"
    time.sleep(2)  # mid-trial: past its first checkpoints
    worker.kill()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "ActorDiedError" in err, err[-3000:]
    died = [line for line in err.splitlines() if "ActorDiedError" in line]
    assert len(died) == 1 and "retried from its last checkpoint" in died[0], err[-3000:]
    assert re.search(r"errors 1 \|", err), err[-3000:]
    assert len(store.completed_trials(tmp_path / "k")) == 1


def test_a_packed_bf16_mixed_ablation_stores_finite_bf16_rows(tmp_path, data_dir):
    # two seeds of Exp4 packed into one batched model (modality dropout on), trained and scored under
    # bf16 autocast
    out = sweep("ablation.py", "--experiments", "Exp4", "--seeds", "2", "--folds", "2", "--epochs", "2", "--pack", "2",
                "--set", "precision=bf16-mixed", "--set", "modality_dropout_warmup=0", "--storage", str(tmp_path),
                "--name", "bf16")
    assert "2 trials in 1 packs of 2" in out.stderr
    df = store.read_results(tmp_path / "bf16")
    assert df.trial_id.nunique() == 2 and df.pack.nunique() == 1 and (df.status == "finished").all()
    assert set(df.precision) == {"bf16-mixed"} and {json.loads(c)["precision"] for c in df.config_json} == {"bf16-mixed"}
    assert np.isfinite(df[["f1", "acc"]].to_numpy()).all()
    assert json.loads((tmp_path / "bf16" / "sweep.json").read_text())["Exp4.precision"] == "bf16-mixed"
