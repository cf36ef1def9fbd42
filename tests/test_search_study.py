"""The Optuna study agrees with the store (sweeps/search.py): what a trial is worth is its stored
result, and a resumed search first makes the study say what the store says."""
import pytest

from sweeps.search import reconcile

optuna = pytest.importorskip("optuna")
State = optuna.trial.TrialState


def study_with(tmp_path, states):
    """A study in an RDB file with one trial per state, the point lr = 1, 2, ... in that order."""
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    for i, state in enumerate(states, start=1):
        study.enqueue_trial({"lr": float(i)})
        t = study.ask({"lr": optuna.distributions.FloatDistribution(0.0, 10.0)})
        if state == State.COMPLETE:
            study.tell(t, 0.1 * i)
        elif state == State.FAIL:
            study.tell(t, state=State.FAIL)
    return study


def test_a_trial_stored_during_an_interrupt_is_complete_with_its_stored_result(tmp_path):
    # lr=1 finished before (COMPLETE); lr=2 was stored while the driver died (RUNNING); lr=3 was
    # stored while Tune shut down and told the study it failed (FAIL); lr=4 never got stored (RUNNING)
    study = study_with(tmp_path, [State.COMPLETE, State.RUNNING, State.FAIL, State.RUNNING])
    stored = {"t1": 0.1, "t2": 0.52, "t3": 0.61}
    made = reconcile(study, lambda params: f"t{int(params['lr'])}", stored.get)
    assert made == {"t2", "t3"}
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    complete = {int(t.params["lr"]): t.value for t in again.trials if t.state == State.COMPLETE}
    assert complete == {1: pytest.approx(0.1), 2: pytest.approx(0.52), 3: pytest.approx(0.61)}
    assert not [t for t in again.trials if t.state == State.RUNNING]  # lr=4 failed: proposed again
    assert [int(t.params["lr"]) for t in again.trials if t.state == State.FAIL] == [3, 4]
    assert reconcile(again, lambda params: f"t{int(params['lr'])}", stored.get) == set()  # nothing twice
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials) == 5
