"""ASHA's rung records outlive the Tuner that made them (real Ray Tune, a trainable with fixed scores)."""
import json
import sys

import pytest
import ray
import ray.cloudpickle
from ray import tune

from sweeps.asha import PersistentASHA

EPOCHS, GRACE = 6, 2  # rungs at epoch 2 only (the next, 6, is max_t)


def fixed_score(config):
    for epoch in range(1, EPOCHS + 1):
        tune.report({"epoch": epoch, "val_emoval": config["trial"]["score"]})


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run(tmp_path, name, trials, rung_file):
    """One Tuner over `trials` one at a time; returns {sweep trial id: last epoch reported}."""
    scheduler = PersistentASHA(rung_file, time_attr="epoch", max_t=EPOCHS, grace_period=GRACE, reduction_factor=3)
    tuner = tune.Tuner(
        tune.with_resources(fixed_score, {"cpu": 1}),
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(metric="val_emoval", mode="max", scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(name=name, storage_path=str(tmp_path / "tune"), verbose=0))
    return {r.config["trial"]["trial_id"]: r.metrics["epoch"] for r in tuner.fit()}


def test_a_resumed_sweep_prunes_against_the_scores_of_the_run_before(local_ray, tmp_path):
    rungs = tmp_path / "asha_rungs.json"
    good = [{"trial_id": "a", "score": 0.8}, {"trial_id": "b", "score": 0.9}]  # each as good as any before it
    assert run(tmp_path, "first", good, rungs) == {"a": EPOCHS, "b": EPOCHS}
    assert json.loads(rungs.read_text())[str(GRACE)] == {"a": 0.8, "b": 0.9}

    hopeless = [{"trial_id": "c", "score": 0.1}]
    assert run(tmp_path, "fresh", hopeless, tmp_path / "none.json") == {"c": EPOCHS}  # what Ray alone would do
    assert run(tmp_path, "resumed", hopeless, rungs) == {"c": GRACE}
    assert json.loads(rungs.read_text())[str(GRACE)] == {"a": 0.8, "b": 0.9, "c": 0.1}


def test_a_trial_resumed_past_a_rung_is_not_judged_there_again(local_ray, tmp_path):
    rungs = tmp_path / "asha_rungs.json"
    rungs.write_text(json.dumps({str(GRACE): {"a": 0.9, "b": 0.8, "c": 0.5}}))
    # c passed rung 2 with 0.5 against nobody; now behind a and b, it would be stopped if judged again
    assert run(tmp_path, "resumed", [{"trial_id": "c", "score": 0.5}], rungs) == {"c": EPOCHS}
    assert json.loads(rungs.read_text())[str(GRACE)]["c"] == 0.5
