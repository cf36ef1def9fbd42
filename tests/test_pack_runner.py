"""A pack's loop (sweeps/pack_runner.py) in this process, no Ray: pruning at ASHA's rungs, storing
on prune and at the end, resuming from a checkpoint, leaving stored trials out, the trackers'
calls. The reporter keeps metrics and checkpoints in memory; the store and the rung records are
real files in a temp folder."""
import io
import json
from argparse import Namespace

import numpy as np
import pytest
import torch

from prmf import provenance, store
from prmf.config import preset_config
from sweeps import pack_runner, plan, trackers
from sweeps.definition import Point, RunSettings, Sweep

from helpers import store_curve, tb_steps, tb_texts, wandb_runs

try:
    from mlflow.tracking import MlflowClient
except ImportError:  # the tracker tests skip
    MlflowClient = None

SMALL = dict(hidden_dim=8, batch_size=128, lr=3e-3, epochs=4, patience=4)


class Killed(Exception):
    """What a worker killed mid-pack looks like to the loop: it stops wherever it is."""


class MemoryReporter:
    """pack_runner's reporter without Ray: every report kept, the last checkpoint as bytes (what Tune
    would have persisted); `stop_after`: raise Killed after that epoch's report."""

    def __init__(self, checkpoint=None, stop_after=None):
        self.reports, self.checkpoint, self.stop_after = [], checkpoint, stop_after

    def restore(self, engine):
        if self.checkpoint is None:
            return 0.0
        state = torch.load(io.BytesIO(self.checkpoint), weights_only=True)
        engine.load_state_dict(state["engine"])
        return state["wall"]

    def node(self):
        return {"node_ip": "127.0.0.1", "hostname": "here", "node_id": "n0"}

    def report(self, metrics, engine, wall_time_s):
        self.reports.append(metrics)
        if engine is not None:
            buf = io.BytesIO()
            torch.save({"engine": engine.state_dict(), "wall": wall_time_s}, buf)
            self.checkpoint = buf.getvalue()
        if self.stop_after is not None and metrics["epoch"] >= self.stop_after:
            raise Killed


def make_pack(root, points, milestones=(), checkpoint_every=2, robustness=False):
    """The pack of `points` [(label, cfg)] over 2 folds, stored under `root`, as the driver plans it."""
    sweep = Sweep("grid", [Point(label, cfg, tag="grid") for label, cfg in points], None,
                  run=RunSettings(folds=2, checkpoint_every=checkpoint_every))
    specs = plan.trial_specs(sweep, "t", root, list(milestones))
    for s in specs:
        s["robustness"] = robustness
    return plan.pack_config("pack-t", specs)


def points(n=3):
    base = preset_config("Exp4", **SMALL)
    return [(f"p{i}", base.replace(kl_weight=0.01 * (i + 1))) for i in range(n)]


def metrics_of(root):
    df = store.read_results(root).sort_values(store.RESULT_KEY).reset_index(drop=True)
    return df[store.RESULT_KEY + ["status", "f1", "acc", "val_mse", "emoval", "best_epoch", "epochs_run"]]


def test_every_trial_is_stored_once_when_it_ends(tmp_path, tiny_data):
    planned = make_pack(tmp_path, points())
    plan.write_packs(tmp_path, [(planned["id"], planned["trials"])])  # Tune passes the id; the worker reads the file
    pack = plan.load_pack(tmp_path, plan.pack_id({"pack": planned["id"]}))
    assert pack == planned
    reporter = MemoryReporter()
    pack_runner.run(pack, tiny_data, reporter)
    df = store.read_results(tmp_path)
    assert sorted(df.trial_id.unique()) == sorted(s["trial_id"] for s in pack["trials"])
    assert not df.duplicated(store.RESULT_KEY).any() and set(df.status) == {"finished"}
    assert [r["epoch"] for r in reporter.reports] == [1, 2, 3, 4]
    assert reporter.reports[-1]["trials_running"] == 0 and reporter.reports[0]["trials_running"] == 3
    for tid, rows in df[df.split == "cv"].groupby("trial_id"):  # a search's objective: the stored cv emoval
        folds = rows[~rows.is_aggregate & (rows.scenario == "clean")]
        assert store.trial_result(tmp_path, tid) == pytest.approx(folds.emoval.mean(), abs=1e-12)
    assert store.trial_result(tmp_path, "never-stored") is None
    again = MemoryReporter()  # everything stored: the pack is never trained again
    pack_runner.run(pack, tiny_data, again)
    assert again.reports == [{"epoch": 0, "val_emoval": pytest.approx(float("nan"), nan_ok=True), "already_done": True}]


@pytest.mark.parametrize("recorded, pruned", [(10.0, True), (-10.0, False)])
def test_a_trial_below_the_rung_is_pruned_and_stored_at_once(tmp_path, tiny_data, recorded, pruned):
    # earlier trials recorded `recorded` at rung 2 (ASHA keeps the top third): every trial of this
    # pack scores below 10 (pruned at epoch 2, stored then) and above -10 (runs to its end)
    (tmp_path / "asha_rungs.json").write_text(json.dumps({"2": {"a": recorded, "b": recorded, "c": recorded}}))
    pack = make_pack(tmp_path, points(2), milestones=[2])
    reporter = MemoryReporter()
    pack_runner.run(pack, tiny_data, reporter)
    df = store.read_results(tmp_path)
    assert set(df.status) == {"pruned" if pruned else "finished"} and not df.duplicated(store.RESULT_KEY).any()
    assert set(df[~df.is_aggregate].epochs_run) == ({2} if pruned else {4})
    assert [r["epoch"] for r in reporter.reports] == ([1, 2] if pruned else [1, 2, 3, 4])
    rungs = json.loads((tmp_path / "asha_rungs.json").read_text())
    assert set(rungs.get("stopped", {})) == ({s["trial_id"] for s in pack["trials"]} if pruned else set())


def test_a_killed_pack_resumes_from_its_checkpoint_bit_for_bit(tmp_path, tiny_data):
    straight = tmp_path / "straight"
    pack_runner.run(make_pack(straight, points()), tiny_data, MemoryReporter())
    killed = tmp_path / "killed"
    first = MemoryReporter(stop_after=3)  # checkpoint at epoch 2, killed after epoch 3
    with pytest.raises(Killed):
        pack_runner.run(make_pack(killed, points()), tiny_data, first)
    assert not (killed / "results").exists()  # nothing stored before a trial ends
    second = MemoryReporter(checkpoint=first.checkpoint)
    pack_runner.run(make_pack(killed, points()), tiny_data, second)
    assert [r["epoch"] for r in second.reports] == [3, 4]  # from the checkpoint, epoch 3 run again
    a, b = metrics_of(straight), metrics_of(killed)
    assert a.equals(b), (a.compare(b) if a.shape == b.shape else (a.shape, b.shape))


def test_trials_stored_before_leave_the_batch(tmp_path, tiny_data):
    pack = make_pack(tmp_path, points(2))
    pack_runner.run(plan.pack_config("solo", pack["trials"][:1]), tiny_data, MemoryReporter())
    stored_before = store.read_results(tmp_path)
    reporter = MemoryReporter()
    pack_runner.run(pack, tiny_data, reporter)
    assert reporter.reports[0]["trials_running"] == 1  # only the trial not stored yet trains
    df = store.read_results(tmp_path)
    assert not df.duplicated(store.RESULT_KEY).any() and df.trial_id.nunique() == 2
    first = df[df.trial_id == pack["trials"][0]["trial_id"]].reset_index(drop=True)
    assert np.array_equal(first.acc, stored_before.acc) and np.array_equal(first.f1, stored_before.f1)


def tracked_pack(root, data, n=2, wandb="proj"):
    """A pack of `n` points logged to MLflow (SQLite in `root`), W&B offline (project `wandb`) and
    TensorBoard, with a provenance record as the driver writes one before launching."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    provenance.write_run(root, {"commit": "abc"}, {})
    pack = make_pack(root, points(n))
    tracking = trackers.prepare(Namespace(mlflow=f"sqlite:///{root}/mlflow.db", wandb=wandb, restart=False), "t", data, root)
    assert set(tracking) == {"mlflow", "tensorboard"} | ({"wandb"} if wandb else set())
    for s in pack["trials"]:
        s.update(tracking, commit="c0ffee")
    return pack, tracking


def test_a_killed_pack_continues_each_trials_runs_in_every_tracker_without_a_step_twice(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    pack, tracking = tracked_pack(tmp_path, tiny_data)
    first = MemoryReporter(stop_after=3)  # checkpoint at epoch 2, killed after epoch 3: epoch 3 runs twice
    with pytest.raises(Killed):
        pack_runner.run(pack, tiny_data, first)
    provenance.write_run(tmp_path, {"commit": "abc"}, {})  # the resuming driver's record: run-001
    pack_runner.run(pack, tiny_data, MemoryReporter(checkpoint=first.checkpoint))

    record = str(tmp_path / "provenance" / "run-001.json")
    tids = sorted(s["trial_id"] for s in pack["trials"])
    client = MlflowClient(tracking_uri=tracking["mlflow"]["uri"])
    runs = client.search_runs([tracking["mlflow"]["experiment_id"]])
    assert sorted(r.data.tags["trial_id"] for r in runs) == tids
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["status"] == "finished"
        assert r.data.tags["commit"] == "c0ffee" and r.data.tags["provenance"] == record
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "val_emoval")) == [1, 2, 3, 4]
        assert {"cv_acc", "test1_acc", "test1_f1"} <= set(r.data.metrics)

    wb = wandb_runs(tmp_path / "wandb")
    assert sorted(wb) == sorted(trackers.wandb_id(s) for s in pack["trials"])
    for spec in pack["trials"]:
        killed, resumed = wb[trackers.wandb_id(spec)]  # one folder per worker that ran the trial
        assert [s for s, _ in killed[4]] == [1, 2, 3] and "status" not in killed[5]
        assert [s for s, _ in resumed[4]] == [4] and resumed[6] and resumed[5]["status"] == "finished"
        assert resumed[5]["cv_acc"] == pytest.approx(store.read_results(tmp_path).query(
            f"trial_id == '{spec['trial_id']}' and split == 'cv' and is_aggregate and scenario == 'clean'").acc.iloc[0])
        name, group, config, tags, *_ = resumed
        assert (name, group, config["trial_id"], config["commit"], config["provenance"]) == (
            spec["trial_id"], "t", spec["trial_id"], "c0ffee", record)
        assert "commit=c0ffee" in tags and config["lr"] == spec["cfg"]["lr"] and config["dataset"] == tiny_data.name
        folder = tmp_path / "tensorboard" / spec["trial_id"]
        assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # one file per worker, one run in TensorBoard
        assert tb_steps(folder) == [1, 2, 3, 4] and tb_steps(folder, "folds_running") == [1, 2, 3, 4]
        assert tb_steps(folder, "final/cv_acc") == [4]
        texts = tb_texts(folder)
        assert len(texts) == 2 and "commit: c0ffee" in texts[-1] and record in texts[-1]
    assert trackers.sync(pack["trials"], {s["trial_id"] for s in pack["trials"]}) == 0  # all ended: nothing to fill in


def test_epochs_a_kill_took_from_wandb_and_tensorboard_are_logged_again_once(tmp_path, tiny_data, monkeypatch):
    # W&B and TensorBoard write from a process or thread of their own: a kill may take epochs they
    # were handed with it. Here both lose epochs 2-3 of the killed run; the pack resumes from its
    # checkpoint at 2, so epoch 2 is not replayed: the trial's epoch log fills it in, epoch 3 comes
    # from the replay
    from wandb.sdk.wandb_run import Run
    monkeypatch.setenv("WANDB_MODE", "offline")
    pack, tracking = tracked_pack(tmp_path, tiny_data, n=1)
    real_log, real_tb = Run.log, trackers._Tensorboard.log
    monkeypatch.setattr(Run, "log", lambda self, data, step=None, **kw: real_log(self, data, step=step, **kw) if step < 2 else None)
    monkeypatch.setattr(trackers._Tensorboard, "log", lambda self, step, values: real_tb(self, step, values) if step < 2 else None)
    first = MemoryReporter(stop_after=3)
    with pytest.raises(Killed):
        pack_runner.run(pack, tiny_data, first)
    monkeypatch.undo()
    monkeypatch.setenv("WANDB_MODE", "offline")
    pack_runner.run(pack, tiny_data, MemoryReporter(checkpoint=first.checkpoint))
    (spec,) = pack["trials"]
    killed, resumed = wandb_runs(tmp_path / "wandb")[trackers.wandb_id(spec)]
    assert [s for s, _ in killed[4]] == [1] and [s for s, _ in resumed[4]] == [2, 3, 4]
    curve = store_curve(tmp_path, spec["trial_id"])
    assert dict(killed[4] + resumed[4]) == pytest.approx(curve, rel=1e-12)
    assert tb_steps(tmp_path / "tensorboard" / spec["trial_id"]) == [1, 2, 3, 4]


def test_a_driver_killed_while_ending_a_run_leaves_it_for_the_next_fill_in(tmp_path, tiny_data, monkeypatch):
    # trials stored without trackers, then the driver's fill-in dies between the status tag and
    # set_terminated: the run stays RUNNING with its status tag (W&B left out: its run would live on
    # in this process, where a killed driver's dies with it)
    pack, tracking = tracked_pack(tmp_path, tiny_data, n=1, wandb=None)
    pack_runner.run(plan.pack_config("bare", [{k: v for k, v in s.items() if k not in tracking} for s in pack["trials"]]),
                    tiny_data, MemoryReporter())
    done = {s["trial_id"] for s in pack["trials"]}
    from mlflow.tracking import MlflowClient as Client

    def die(self, run_id, status=None):
        raise Killed
    monkeypatch.setattr(Client, "set_terminated", die)
    with pytest.raises(Killed):
        trackers.sync(pack["trials"], done)
    client = MlflowClient(tracking_uri=tracking["mlflow"]["uri"])
    (run,) = client.search_runs([tracking["mlflow"]["experiment_id"]])
    assert run.info.status == "RUNNING" and run.data.tags["status"] == "finished"
    monkeypatch.undo()
    assert trackers.sync(pack["trials"], done) == 1  # the next fill-in ends it
    (run,) = client.search_runs([tracking["mlflow"]["experiment_id"]])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "cv_acc")) == 1
    folder = tmp_path / "tensorboard" / pack["trials"][0]["trial_id"]  # filled in too: finals, no epochs
    assert tb_texts(folder, "status") == ["finished"] and tb_steps(folder) == [] and tb_steps(folder, "final/cv_acc") == [4]
    assert trackers.sync(pack["trials"], done) == 0
