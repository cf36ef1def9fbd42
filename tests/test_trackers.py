"""A short packed sweep logged to a real MLflow tracking server (localhost, SQLite backend), W&B
offline and TensorBoard, each read back (MLflow's client, the W&B run files, the event files): one
run per trial with its epochs and commit; a missing tracker package is one line."""
import sys
from pathlib import Path

import pytest

from cluster.free_ports import free_ports
from prmf import store
from sweeps import trackers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import sweep, tb_steps, tb_texts, wandb_runs  # noqa: E402

mlflow = pytest.importorskip("mlflow")
EPOCHS = 4


def test_a_packed_sweep_logs_one_run_per_trial_in_every_tracker(mlflow_server, tmp_path, data_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: Exp1\ngrid:\n  lr: [0.003, 0.000000001]\n")
    # as in test_sweeps: both points in one pack, the hopeless one meets ASHA's rung (epoch 2) last and is
    # stopped there; its pack stores it and closes its run while the other trains on
    args = ["--grid", str(grid), "--epochs", str(EPOCHS), "--grace-period", "2", "--cpus-per-trial", "2", "--folds", "2", "--pack", "2",
            "--storage", str(tmp_path), "--name", "tracked", "--mlflow", mlflow_server, "--wandb", "test-project"]
    sweep("grid.py", *args)
    root = tmp_path / "tracked"
    df = store.read_results(root)
    agg = df[df.is_aggregate & (df.scenario == "clean")]

    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(df.trial_id.unique())  # one run per trial
    record = str(root / "provenance" / "run-000.json")
    wb = wandb_runs(root / "wandb")
    assert len(wb) == df.trial_id.nunique() == 2
    for run in runs:
        tid = run.data.tags["trial_id"]
        rows = agg[agg.trial_id == tid]
        assert run.data.tags["commit"] == rows.commit.iloc[0] != "unknown" and run.data.tags["provenance"] == record
        ((name, group, config, tags, wsteps, summary, ended),) = wb[trackers.wandb_id({"trial_id": tid, "sweep": "tracked"})]  # one offline run
        assert (name, group, config["commit"], config["provenance"]) == (tid, "tracked", rows.commit.iloc[0], record)
        assert ended and summary["status"] == rows.status.iloc[0]
        assert summary["cv_acc"] == pytest.approx(rows[rows.split == "cv"].acc.iloc[0], rel=1e-12)
        tb = root / "tensorboard" / tid
        tsteps = tb_steps(tb)
        assert [s for s, _ in wsteps] == tsteps and len(tsteps) == len(set(tsteps))
        (text,) = tb_texts(tb)
        assert f"commit: {rows.commit.iloc[0]}" in text and record in text and tb_texts(tb, "status") == [rows.status.iloc[0]]
        assert run.info.status == "FINISHED" and run.data.tags["status"] == rows.status.iloc[0]
        assert run.data.tags["sweep"] == "tracked" and run.data.tags["seed"] == "0"
        assert run.data.tags["dataset"] == rows.dataset.iloc[0] and run.data.tags["features"] == rows.features.iloc[0]
        assert float(run.data.params["lr"]) == rows.lr.iloc[0]
        assert run.data.params["model"] == "attention_robust_v2" and run.data.params["folds"] == "2"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_emoval"))
        if rows.status.iloc[0] == "finished":
            assert steps == tsteps == list(range(1, EPOCHS + 1))
            assert len(client.get_metric_history(run.info.run_id, "folds_running")) == EPOCHS
        else:  # stopped at the rung; its worker may have trained on a little before it was stopped
            assert steps[:2] == tsteps[:2] == [1, 2] and len(steps) == len(set(steps))
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

    events = list((root / "tune").rglob("events.out.tfevents.*"))  # Tune's own TensorBoard files, one per Tune trial
    assert len(events) == df.pack.nunique() == 1

    # the same command again: nothing to run, no run doubled
    sweep("grid.py", *args)
    assert len(client.search_runs([exp.experiment_id])) == len(runs)
    assert [len(v) for v in wandb_runs(root / "wandb").values()] == [1, 1]
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
