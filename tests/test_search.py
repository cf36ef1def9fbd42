"""Searches beyond the grid: seeded random draws, and Optuna with ASHA killed and resumed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prmf import store
from prmf.config import ConfigError
from sweeps import grid as grid_cli

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import REPO, TINY, store_curve, sweep  # noqa: E402

SPACE = """base: Exp1
grid:
  hidden_dim: [16]
search:
  lr: {loguniform: ["1e-3", 1e-2]}
  dropout: {uniform: [0.1, 0.4]}
  batch_size: {randint: [32, 65]}
"""


def make(tmp_path, text, *argv):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return grid_cli.make_sweep(grid_cli.build_parser().parse_args(["--grid", str(path), *argv]))


def test_random_search_draws_the_same_distinct_points_for_the_same_seed(tmp_path):
    a = make(tmp_path, SPACE, "--search", "random", "--num-samples", "5")
    b = make(tmp_path, SPACE, "--search", "random", "--num-samples", "5")
    c = make(tmp_path, SPACE, "--search", "random", "--num-samples", "5", "--search-seed", "1")
    cfgs = [p.cfg.to_dict() for p in a.points]
    assert cfgs == [p.cfg.to_dict() for p in b.points] != [p.cfg.to_dict() for p in c.points]
    assert len({json.dumps(c, sort_keys=True) for c in cfgs}) == 5
    for c in cfgs:
        assert 1e-3 <= c["lr"] <= 1e-2 and 0.1 <= c["dropout"] <= 0.4 and 32 <= c["batch_size"] < 65
        assert c["hidden_dim"] == 16 and isinstance(c["batch_size"], int)
    small = make(tmp_path, "base: Exp1\ngrid:\n  hidden_dim: [16, 32]\n", "--search", "random", "--num-samples", "5")
    assert sorted(p.cfg.hidden_dim for p in small.points) == [16, 32]  # the whole space, each point once


@pytest.mark.parametrize("text,argv,message", [
    (SPACE, [], "search: distributions need --search random or --search optuna"),
    ("search:\n  lr: {normal: [0, 1]}\n", ["--search", "random"], "search 'lr': expected one of"),
    ("search:\n  lr: {loguniform: [0, 1]}\n", ["--search", "optuna"], "low > 0"),
    ("search:\n  kl_wieght: {uniform: [0, 1]}\n", ["--search", "random"], "unknown config key 'kl_wieght'"),
    ("search:\n  dropout: {uniform: [0.5, 1.5]}\n", ["--search", "random"], "config key 'dropout'"),
    (SPACE, ["--search", "optuna", "--seeds", "2"], "one seed per point"),
])
def test_bad_search_spaces_are_config_errors(tmp_path, text, argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        make(tmp_path, text, *argv)


def recorded_id(root, params):
    """The trial id a proposed point was recorded under (search/ID.json holds its values)."""
    for p in (root / "search").glob("*.json"):
        if json.loads(p.read_text())["values"] == params:
            return p.stem
    raise AssertionError(f"no recorded point {params}")


def checkpointed(root):
    """Packs (here: one trial each, named by it) with a checkpoint in the sweep's Tune storage."""
    markers = []
    for p in root.glob("tune/run-*/*/checkpoint_*/pack.json"):
        try:
            markers.append(json.loads(p.read_text())["pack"])
        except (OSError, ValueError):  # being written right now
            pass
    return set(markers)


def test_the_study_on_postgresql_has_one_trial_per_point_pruned_ones_pruned(tmp_path, postgres_url, monkeypatch):
    """The searcher's two runs of test_search_study, the study in a real PostgreSQL (--optuna-storage)."""
    pytest.importorskip("optuna")
    from test_search_study import check_study, run_and_resume
    check_study(*run_and_resume(tmp_path, postgres_url, monkeypatch))


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_optuna_search_with_asha_killed_and_resumed_runs_exactly_n_trials(tmp_path, data_dir, mlflow_server, db, request):
    """Also: `--quick`; one Optuna trial per point, ended as stored; each trial one MLflow run, the
    interrupted one continued (no step logged twice). The study in the sweep folder's SQLite file, or
    in a PostgreSQL server (--optuna-storage)."""
    optuna = pytest.importorskip("optuna")
    mlflow = pytest.importorskip("mlflow")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    n = 3
    url = request.getfixturevalue("postgres_url") if db == "postgresql" else f"sqlite:///{tmp_path / 'opt' / 'optuna.db'}"
    args = ["--grid", str(space), "--search", "optuna", "--num-samples", str(n), "--quick", "--epochs", "6", "--grace-period", "2",
            "--folds", "2", "--checkpoint-every", "1", "--cpus-per-trial", "2", "--storage", str(tmp_path), "--name", "opt", "--mlflow", mlflow_server,
            *(["--optuna-storage", url] if db == "postgresql" else [])]
    root = tmp_path / "opt"
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "sweeps" / "grid.py"), *TINY, *args], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:  # kill once one trial is stored and the next has a checkpoint
        stored = store.completed_trials(root)
        if stored and checkpointed(root) - stored:
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"the search never reached a stored trial plus a checkpoint: {log.read_text()[-2000:]}")
    os.killpg(proc.pid, signal.SIGKILL)  # driver and the local Ray it started
    proc.wait()
    finished_before = {p.name: p.stat().st_mtime_ns for p in (root / "results").glob("*.parquet")}
    in_flight = checkpointed(root) - {Path(k).stem for k in finished_before}
    assert 1 <= len(finished_before) < n and in_flight

    again = sweep("grid.py", *args)
    after = {p.name: p.stat().st_mtime_ns for p in (root / "results").glob("*.parquet")}
    assert {k: after[k] for k in finished_before} == finished_before  # no stored trial ran again
    assert len(after) == n, again.stderr[-2000:]  # exactly N trials, the interrupted one among them
    assert in_flight <= {Path(k).stem for k in after}
    df = store.read_results(root)
    assert df.trial_id.nunique() == n and not df.duplicated(store.RESULT_KEY).any()
    assert set(df.status) <= {"finished", "pruned"} and (df.trial_id.str.startswith("optuna-")).all()
    epochs = store.read_epochs(root)
    assert not epochs.duplicated(["trial_id", "fold", "epoch"]).any()
    assert not checkpointed(root)  # Tune's checkpoints of finished packs removed

    study = optuna.load_study(study_name="opt", storage=url)
    state = optuna.trial.TrialState
    assert len(study.trials) == n  # one trial per point: the interrupted one resumed in place
    status = df[df.is_aggregate & (df.split == "cv") & (df.scenario == "clean")].set_index("trial_id").status
    for t in study.trials:  # ended as stored, every epoch it ran reported once
        tid = recorded_id(root, t.params)
        assert t.state == {"finished": state.COMPLETE, "pruned": state.PRUNED}[status[tid]]
        assert sorted(t.intermediate_values) == sorted(store_curve(root, tid))
        assert t.intermediate_values == pytest.approx(store_curve(root, tid), rel=1e-9)
        if t.state == state.COMPLETE:  # what the study learnt is the stored result, as the results table has it
            assert t.value == pytest.approx(store.trial_result(root, tid), abs=1e-12)
    first_line = next(line for line in log.read_text().splitlines() if line.startswith("sweep opt:"))
    assert first_line.startswith(f"sweep opt: {n} trials ({n} points proposed one at a time x 1 seeds x 2 folds)")
    assert "ETA 23:" not in log.read_text() + again.stderr  # the ETA never wraps below zero
    recorded = {json.dumps(json.loads(p.read_text())["values"], sort_keys=True): p.stem for p in (root / "search").glob("*.json")}
    assert sorted(recorded.values()) == sorted(df.trial_id.unique())  # every proposed point stored, once
    assert sorted(recorded[json.dumps(t.params, sort_keys=True)] for t in study.trials) == sorted(df.trial_id.unique())

    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("opt").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(df.trial_id.unique())
    agg = df[df.is_aggregate & (df.scenario == "clean") & (df.split == "cv")].set_index("trial_id")
    for run in runs:
        tid = run.info.run_name
        assert run.info.status == "FINISHED" and run.data.tags["status"] == agg.loc[tid, "status"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_emoval")]
        n_run = int(agg.loc[tid, "epochs_run"])
        assert len(steps) == len(set(steps)) and sorted(steps)[:n_run] == list(range(1, n_run + 1)), (tid, steps)
        assert run.data.metrics["cv_acc"] == pytest.approx(agg.loc[tid, "acc"], rel=1e-12)

    rerun = sweep("grid.py", *args)  # a finished search: nothing to propose, nothing run
    assert "3 already done" in rerun.stderr or len(list((root / "results").glob("*.parquet"))) == n
    assert len(optuna.load_study(study_name="opt", storage=url).trials) == n
