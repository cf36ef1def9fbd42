"""The Optuna study of `--search optuna` (sweeps/study.py) in this process, no Ray: one trial per
point, every epoch's score reported, the end as stored (COMPLETE, PRUNED), an interrupted trial
resumed in place; a missing optuna is one line before anything starts."""
import sys

import pytest

from sweeps import grid as grid_cli
from sweeps import search, study
from sweeps.study import reconcile

optuna = pytest.importorskip("optuna")
State = optuna.trial.TrialState
SPACE = "base: Exp1\ngrid:\n  hidden_dim: [16]\nsearch:\n  lr: {loguniform: [1e-4, 1e-2]}\n"


def study_with(url, states):
    """A study with one trial per state, the point lr = 1, 2, ... in that order; each reported 0.1*lr
    at epochs 1 and 2."""
    s = optuna.create_study(study_name="s", storage=url, direction="maximize")
    for i, state in enumerate(states, start=1):
        s.enqueue_trial({"lr": float(i)})
        t = s.ask({"lr": optuna.distributions.FloatDistribution(0.0, 10.0)})
        t.report(0.1 * i, 1)
        t.report(0.1 * i + 0.01, 2)
        if state == State.COMPLETE:
            s.tell(t, 0.1 * i)
        elif state == State.FAIL:
            s.tell(t, state=State.FAIL)
    return s


def test_a_resumed_study_ends_what_was_stored_and_resumes_the_rest_in_place(tmp_path):
    # lr=1 finished before (COMPLETE); lr=2 was stored while the driver died (RUNNING); lr=3 was
    # failed by an earlier version while it was stored; lr=4 never got stored (RUNNING); lr=5 was
    # pruned by ASHA while the driver died (RUNNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study_with(url, [State.COMPLETE, State.RUNNING, State.FAIL, State.RUNNING, State.RUNNING])
    stored = {"t1": {"state": State.COMPLETE, "values": 0.1}, "t2": {"state": State.COMPLETE, "values": 0.52},
              "t3": {"state": State.COMPLETE, "values": 0.61}, "t5": {"state": State.PRUNED}}
    again = optuna.load_study(study_name="s", storage=url)
    resume = reconcile(again, lambda params: f"t{int(params['lr'])}", stored.get)
    assert resume == {"t4": 3}  # continued in place: no new trial
    trials = optuna.load_study(study_name="s", storage=url).trials
    ended = {int(t.params["lr"]): (t.state, t.value) for t in trials if t.state in (State.COMPLETE, State.PRUNED)}
    assert ended == {1: (State.COMPLETE, pytest.approx(0.1)), 2: (State.COMPLETE, pytest.approx(0.52)),
                     3: (State.COMPLETE, pytest.approx(0.61)), 5: (State.PRUNED, pytest.approx(0.51))}
    assert [int(t.params["lr"]) for t in trials if t.state == State.RUNNING] == [4]
    assert reconcile(optuna.load_study(study_name="s", storage=url), lambda p: f"t{int(p['lr'])}", stored.get) == {"t4": 3}
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 6  # nothing twice; lr=3's FAIL stays


def run_and_resume(tmp_path, url, monkeypatch):
    """Two runs of an Optuna search's searcher, as Tune drives it: the first proposes A, B, C, stores A
    (finished) and B (pruned at epoch 2) and is interrupted during C's epoch 3; the second resumes C
    from its checkpoint at epoch 2 (replaying epoch 3) and stores it. The study afterwards."""
    argv = ["--grid", str(tmp_path / "space.yaml"), "--search", "optuna", "--num-samples", "3", "--quick"]
    (tmp_path / "space.yaml").write_text(SPACE)
    if url:
        argv += ["--optuna-storage", url]
    sweep = grid_cli.make_sweep(grid_cli.build_parser().parse_args(argv))
    ctx = dict(sweep=sweep, name="searcher", root=tmp_path, milestones=[2], tracking={}, data=None)  # a shared server: its own study
    stored = {}
    monkeypatch.setattr(study, "outcome", lambda root, tid: stored.get(tid))
    monkeypatch.setattr(search.ray, "cluster_resources", lambda: {"CPU": 4})
    first = sweep.search.tune_config(ctx, set(), [])["search_alg"]
    ids = [first.suggest(k)["trial"]["trial_id"] for k in "ABC"]
    for key, epochs in zip("ABC", (4, 2, 3)):
        for e in range(1, epochs + 1):
            first.on_trial_result(key, {"epoch": e, "val_emoval": 0.1 * e + 0.01 * "ABC".index(key)})
    stored[ids[0]] = {"state": State.COMPLETE, "values": 0.45}
    stored[ids[1]] = {"state": State.PRUNED}
    first.on_trial_complete("A")
    first.on_trial_complete("B")
    first.on_trial_complete("C", error=True)  # interrupted: not stored

    pending = [s for s in sweep.search.recorded(ctx) if s["trial_id"] not in stored]
    second = sweep.search.tune_config(ctx, set(stored), pending)
    assert second["num_samples"] == 1
    spec = second["search_alg"].suggest("X")["trial"]
    assert spec["trial_id"] == ids[2]  # the interrupted point first
    for e in (3, 4):  # its checkpoint was at epoch 2
        second["search_alg"].on_trial_result("X", {"epoch": e, "val_emoval": 9.0 * e})
    stored[ids[2]] = {"state": State.COMPLETE, "values": 0.7}
    second["search_alg"].on_trial_complete("X")
    return optuna.load_study(study_name="searcher", storage=url or f"sqlite:///{tmp_path / 'optuna.db'}"), ids


def check_study(s, ids):
    """One trial per point, in proposal order, each ended as stored, every epoch reported once."""
    a, b, c = s.trials
    assert (a.state, a.value) == (State.COMPLETE, 0.45) and a.intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})
    assert (b.state, b.value) == (State.PRUNED, pytest.approx(0.21)) and sorted(b.intermediate_values) == [1, 2]
    assert c.state == State.COMPLETE and c.value == 0.7
    assert c.intermediate_values == pytest.approx({1: 0.12, 2: 0.22, 3: 0.32, 4: 36.0})  # epoch 3 as first reported


def test_an_interrupted_search_has_one_trial_per_point_with_its_epochs(tmp_path, monkeypatch):
    check_study(*run_and_resume(tmp_path, None, monkeypatch))


def test_a_missing_optuna_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    (tmp_path / "space.yaml").write_text(SPACE)
    code = grid_cli.main(["--grid", str(tmp_path / "space.yaml"), "--search", "optuna", "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'prmf-sweep[search]'" in err
    assert list(tmp_path.iterdir()) == [tmp_path / "space.yaml"]  # nothing written, no Ray started


def test_an_unreachable_optuna_storage_is_one_line(tmp_path, capsys):
    (tmp_path / "space.yaml").write_text(SPACE)
    code = grid_cli.main(["--grid", str(tmp_path / "space.yaml"), "--search", "optuna", "--storage", str(tmp_path),
                          "--optuna-storage", "postgresql+psycopg2://u:secret@127.0.0.1:1/db"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --optuna-storage postgresql+psycopg2://u:***@127.0.0.1:1/db: cannot open")
    assert err.count("\n") == 1 and "secret" not in err
