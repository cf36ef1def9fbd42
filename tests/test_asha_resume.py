"""ASHA inside packs (sweeps/asha.py): Ray's own rung rule, applied per trial, over records that
outlive the run that made them and are shared by packs running in parallel."""
import json
import random
import types

from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from sweeps.asha import Rungs, milestones

EPOCHS, GRACE = 6, 2  # rungs at epoch 2 only (the next, 6, is max_t)


def test_the_rung_rule_is_rays_asha(tmp_path):
    # the same scores arriving in the same order: Ray's bracket and ours stop the same trials
    rng = random.Random(0)
    for case in range(20):
        bracket = _Bracket(min_t=GRACE, max_t=54, reduction_factor=3, s=0)
        rungs = Rungs(tmp_path / f"rungs-{case}.json")
        for i in range(12):
            tid, score = f"t{i}", rng.random()
            for epoch in milestones(GRACE, 54):  # 2, 6, 18
                ray_stops = bracket.on_result(types.SimpleNamespace(trial_id=tid), epoch, score) == TrialScheduler.STOP
                assert (tid in rungs.judge(epoch, {tid: score})) == ray_stops, (case, i, epoch)
                if ray_stops:
                    break
                score += rng.uniform(-0.2, 0.2)
    assert milestones(GRACE, 54) == [2, 6, 18]


def test_a_resumed_sweep_prunes_against_the_scores_of_the_run_before(tmp_path):
    rungs = Rungs(tmp_path / "asha_rungs.json")
    assert rungs.judge(GRACE, {"a": 0.8, "b": 0.9}) == set()  # each as good as any before it
    assert Rungs(tmp_path / "other.json").judge(GRACE, {"c": 0.1}) == set()  # what a fresh record would do
    assert Rungs(tmp_path / "asha_rungs.json").judge(GRACE, {"c": 0.1}) == {"c"}  # a later run reads the file
    assert json.loads((tmp_path / "asha_rungs.json").read_text())[str(GRACE)] == {"a": 0.8, "b": 0.9, "c": 0.1}


def test_a_trial_resumed_past_a_rung_keeps_its_decision(tmp_path):
    path = tmp_path / "asha_rungs.json"
    path.write_text(json.dumps({str(GRACE): {"a": 0.9, "b": 0.8, "c": 0.5, "d": 0.1}, "stopped": {"d": GRACE}}))
    # c passed rung 2 with 0.5 against nobody; now behind a and b it would be stopped if judged again.
    # d was stopped there, but its pack died before storing it: resumed, it is stopped again.
    assert Rungs(path).judge(GRACE, {"c": 0.5, "d": 0.1}) == {"d"}
    assert json.loads(path.read_text())[str(GRACE)]["c"] == 0.5
