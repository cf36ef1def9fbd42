"""The 5-fold protocol (SPEC §3-4): learning, patience, fold averaging, determinism, resume."""
import io

import numpy as np
import pytest
import torch

from prmf.config import experiment_config, make_config
from prmf.trainer import TrialRunner, metrics, predict, stratified_folds, train_trial

FAST = dict(lr=3e-3, batch_size=64, hidden_dim=32, dropout=0.1)


def test_learns_the_built_in_set_well_above_chance(tiny_data):
    r = train_trial(experiment_config("Exp4", epochs=8, **FAST), tiny_data, seed=0)
    majority = np.bincount(tiny_data.splits["test1"].emos).max() / len(tiny_data.splits["test1"].emos)
    assert r.splits["test1"].metrics["acc"] > majority + 0.2
    assert r.splits["cv"].metrics["acc"] > majority + 0.2


def test_patience_stops_a_fold(tiny_data):
    cfg = make_config(model="attention", epochs=30, patience=3, lr=1e-9, **{k: v for k, v in FAST.items() if k != "lr"})
    runner = TrialRunner(cfg, tiny_data, seed=0)
    while not runner.done:
        runner.step()
    # nothing improves by min_delta after epoch 1, so each fold stops 3 epochs later
    assert runner.epoch == 4
    assert all(f.stopped and f.epochs_run == 4 for f in runner.folds)


def test_best_epoch_is_argmax_of_validation_metric(tiny_data):
    r = train_trial(make_config(model="attention", epochs=6, **FAST), tiny_data, seed=1)
    for k, best in enumerate(r.best_epochs):
        scores = [h["val_emoval"] for h in r.history if h["fold"] == k]
        assert best == int(np.argmax(scores)) + 1
        assert r.splits["cv"].fold_metrics[k]["emoval"] == pytest.approx(max(scores))


def test_cv_is_the_mean_of_fold_metrics_and_tests_average_fold_logits(tiny_data):
    cfg = make_config(model="attention_robust", epochs=3, **FAST)
    runner = TrialRunner(cfg, tiny_data, seed=0)
    while not runner.done:
        runner.step()
    r = runner.finish()
    cv = r.splits["cv"]
    assert cv.metrics["acc"] == pytest.approx(np.mean([m["acc"] for m in cv.fold_metrics]))
    assert sorted(cv.names) == sorted(tiny_data.splits["train"].names)  # every sample predicted once
    preds = [predict(m, runner.splits["test1"]) for m in runner.best_models()]
    assert np.allclose(r.splits["test1"].logits, np.mean([p[0] for p in preds], axis=0), atol=1e-6)
    sp = tiny_data.splits["test1"]
    assert r.splits["test1"].metrics == pytest.approx(metrics(r.splits["test1"].logits, r.splits["test1"].vals_pred,
                                                              sp.emos, sp.vals))


def test_folds_are_seeded_and_stratified(tiny_data):
    emos = tiny_data.splits["train"].emos
    a, b = stratified_folds(emos, 5, 0), stratified_folds(emos, 5, 0)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not np.array_equal(a[0][1], stratified_folds(emos, 5, 1)[0][1])
    for _, va in a:
        assert abs(np.bincount(emos[va], minlength=6) / len(va) - np.bincount(emos, minlength=6) / len(emos)).max() < 0.03


def test_same_seed_gives_same_numbers(tiny_data):
    cfg = experiment_config("Exp4", epochs=2, **FAST)
    a, b = train_trial(cfg, tiny_data, seed=3), train_trial(cfg, tiny_data, seed=3)
    assert np.array_equal(a.splits["test2"].logits, b.splits["test2"].logits)
    assert a.history == b.history


def test_epoch_hook_sees_the_mean_validation_metric_and_can_stop(tiny_data):
    seen = []
    r = train_trial(make_config(model="attention", epochs=10, **FAST), tiny_data, seed=0,
                    on_epoch=lambda e, s: seen.append((e, s)) or e == 2)
    assert [e for e, _ in seen] == [1, 2] and max(r.epochs_run) == 2
    ep1 = [h["val_emoval"] for h in r.history if h["epoch"] == 1]
    assert seen[0][1] == pytest.approx(np.mean(ep1))


def test_checkpoint_resume_continues_bit_for_bit(tiny_data):
    cfg = experiment_config("Exp4", epochs=4, modality_dropout_warmup=1, **FAST)
    straight = TrialRunner(cfg, tiny_data, seed=0)
    while not straight.done:
        straight.step()
    first = TrialRunner(cfg, tiny_data, seed=0)
    first.step(), first.step()
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = TrialRunner(cfg, tiny_data, seed=0)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    while not resumed.done:
        resumed.step()
    assert resumed.history == straight.history
    assert np.array_equal(resumed.finish().splits["test1"].logits, straight.finish().splits["test1"].logits)
