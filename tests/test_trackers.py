"""A short packed sweep logged to a real MLflow tracking server (localhost, SQLite backend), W&B
offline and TensorBoard, its driver SIGKILLed mid-pack and the same command run again, each tracker
read back (MLflow's client, the W&B run files, the event files): one run per trial with every epoch
once, equal to the store's history, and its commit; a missing tracker package is one line."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.free_ports import free_ports
from prmf import store
from sweeps import status, trackers, wandb_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import store_curve, sweep, sweep_argv, sweep_env, tb_steps, tb_texts, tb_values, wandb_runs  # noqa: E402

mlflow = pytest.importorskip("mlflow")
EPOCHS = 12


def killed_mid_pack(args, root, log):
    """Start the sweep and SIGKILL its driver (and the local Ray it started) once a trial has run
    2 epochs past the pack's checkpoint at epoch 2 (TensorBoard's files, flushed every epoch)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(sweep_argv("grid.py", *args), stdout=out, stderr=subprocess.STDOUT, env=sweep_env(),
                                start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if max((max(tb_steps(d), default=0) for d in (root / "tensorboard").glob("*")), default=0) >= 4:
            break
        time.sleep(0.1)
    running = status.summary(root)  # prmf-status from another process while the driver runs
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(store.completed_trials(root)) < 2, f"the sweep ended before the kill: {log.read_text()[-2000:]}"
    assert running["state"] == "running" and f"PID {proc.pid}" in running["driver"] and running["trials"] == 2
    assert running["running"] + running["done"] + running["pruned"] == 2 and running["running"] >= 1
    assert running["last_progress"] > time.time() - 120 and running["eta_s"] is not None


def test_a_packed_sweep_killed_and_resumed_logs_every_epoch_once_in_every_tracker(mlflow_server, tmp_path, data_dir,
                                                                                  monkeypatch, capsys):
    """Also prmf-status on the sweep running, killed and finished."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: Exp1\ngrid:\n  lr: [0.003, 0.000000001]\n")
    # as in test_sweeps: both points in one pack, the hopeless one meets ASHA's rung (epoch 2) last and is
    # stopped there; its pack stores it and closes its run while the other trains on, and is killed
    args = ["--grid", str(grid), "--epochs", str(EPOCHS), "--patience", str(EPOCHS), "--grace-period", "2",
            "--checkpoint-every", "2", "--cpus-per-trial", "2", "--folds", "2", "--pack", "2",
            "--storage", str(tmp_path), "--name", "tracked", "--mlflow", mlflow_server, "--wandb", "test-project"]
    root = tmp_path / "tracked"
    killed_mid_pack(args, root, tmp_path / "killed.log")
    killed = status.summary(root)
    assert (killed["state"], killed["driver"], killed["running"], killed["pruned"], killed["pending"]) == ("stopped", None, 0, 1, 1)
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[tracked\] trials done \d/2", (tmp_path / "killed.log").read_text(), re.M)
    sweep("grid.py", *args)
    finished = status.summary(root)
    assert (finished["state"], finished["done"], finished["pruned"], finished["pending"]) == ("finished", 1, 1, 0)
    assert status.main([str(tmp_path)]) == 0 and re.search(r"tracked\s+grid\s+finished\s+2\s+1\s+0\s+0\s+1\s+0", capsys.readouterr().out)
    df = store.read_results(root)
    agg = df[df.is_aggregate & (df.scenario == "clean")]

    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(df.trial_id.unique())  # one run per trial
    record = str(root / "provenance" / "run-001.json")  # the resuming run's
    wb = wandb_runs(root / "wandb")
    assert len(wb) == df.trial_id.nunique() == 2
    for run in runs:
        tid = run.data.tags["trial_id"]
        rows = agg[agg.trial_id == tid]
        curve = store_curve(root, tid)  # every epoch the store has, once
        assert sorted(curve) == list(range(1, int(rows.epochs_run.max()) + 1))
        parts = wb[trackers.wandb_id({"trial_id": tid, "sweep": "tracked"})]  # one offline run folder per process
        wsteps = [step for part in parts for step in part[4]]
        assert [s for s, _ in wsteps] == sorted(curve) and dict(wsteps) == pytest.approx(curve, rel=1e-12)
        name, group, config, tags, _, summary, ended = parts[-1]
        assert (name, group, config["commit"]) == (tid, "tracked", rows.commit.iloc[0]) and ended
        assert summary["status"] == rows.status.iloc[0]
        assert summary["cv_acc"] == pytest.approx(rows[rows.split == "cv"].acc.iloc[0], rel=1e-12)
        history = client.get_metric_history(run.info.run_id, "val_emoval")
        assert sorted(m.step for m in history) == sorted(curve)
        assert {m.step: m.value for m in history} == pytest.approx(curve, rel=1e-12)
        assert len(client.get_metric_history(run.info.run_id, "folds_running")) == len(curve)
        tb = root / "tensorboard" / tid
        assert tb_steps(tb) == sorted(curve) and tb_values(tb) == pytest.approx(curve, rel=1e-6)  # float32 there
        assert tb_texts(tb, "status") == [rows.status.iloc[0]] and f"commit: {rows.commit.iloc[0]}" in tb_texts(tb)[-1]
        assert run.info.status == "FINISHED" and run.data.tags["status"] == rows.status.iloc[0]
        assert run.data.tags["commit"] == rows.commit.iloc[0] != "unknown"
        assert run.data.tags["sweep"] == "tracked" and run.data.tags["seed"] == "0"
        assert run.data.tags["dataset"] == rows.dataset.iloc[0] and run.data.tags["features"] == rows.features.iloc[0]
        assert float(run.data.params["lr"]) == rows.lr.iloc[0]
        assert run.data.params["model"] == "attention_robust_v2" and run.data.params["folds"] == "2"
        for r in rows.itertuples():
            for m in ("acc", "f1", "val_mse", "emoval"):
                expected = getattr(r, m)
                if expected != expected:  # NaN (a split without valence labels): not logged
                    assert f"{r.split}_{m}" not in run.data.metrics
                else:
                    assert run.data.metrics[f"{r.split}_{m}"] == pytest.approx(expected, rel=1e-12), (r.split, m)
        logged = sorted(a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "predictions"))
        assert logged == sorted(p.name for p in (root / "predictions" / tid).glob("*.npz"))
        assert len(logged) == 4
    (resumed,) = [r for r in runs if r.data.tags["status"] == "finished"]  # the trial in flight at the kill
    assert len(wandb_files.run_files(root / "wandb", trackers.wandb_id(resumed.data.tags))) == 2  # killed, resumed
    assert resumed.data.tags["provenance"] == record  # the run that last trained it
    assert finished["best"] == (resumed.data.tags["trial_id"], pytest.approx(agg[agg.split == "cv"].emoval.max(), rel=1e-12))
    assert sorted(agg[agg.split == "cv"].status) == ["finished", "pruned"]


def test_an_unreachable_tracking_server_or_missing_wandb_is_one_line(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = free_ports(1)[0]
    cases = [(["--mlflow", f"http://127.0.0.1:{port}"], "cannot reach the tracking server")]
    try:
        import wandb  # noqa: F401
    except ImportError:
        cases.append((["--wandb"], "--wandb needs the wandb package"))
    for extra, message in cases:
        proc = sweep("ablation.py", "--experiments", "Exp1", "--epochs", "1", "--storage", str(tmp_path),
                     "--name", "x", *extra, check=False)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert not list(tmp_path.rglob("*.parquet"))
