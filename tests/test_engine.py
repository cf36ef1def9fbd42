"""The one engine (prmf/engine.py): the 5-fold protocol (learning, patience, fold
averaging, determinism, resume), and packs: members trained together equal the same members trained
alone, each with its own initial weights, hyperparameters, schedule and early stop."""
import io

import numpy as np
import pytest
import torch

from prmf.config import make_config, preset_config
from prmf.engine import CheckpointError, Engine, stratified_folds, train, train_trial
from prmf.evaluation import metrics, predict
from prmf.models import build_model

FAST = dict(lr=3e-3, batch_size=64, hidden_dim=32, dropout=0.1)


def test_learns_the_built_in_set_well_above_chance(tiny_data):
    r = train_trial(preset_config("Exp4", epochs=8, **FAST), tiny_data, seed=0)
    majority = np.bincount(tiny_data.splits["test1"].emos).max() / len(tiny_data.splits["test1"].emos)
    assert r.splits["test1"].metrics["acc"] > majority + 0.2
    assert r.splits["cv"].metrics["acc"] > majority + 0.2


def test_patience_stops_a_fold(tiny_data):
    cfg = make_config(model="attention", epochs=30, patience=3, lr=1e-9, **{k: v for k, v in FAST.items() if k != "lr"})
    runner = Engine([(cfg, 0)], tiny_data)
    while not runner.done:
        runner.step()
    # nothing improves by min_delta after epoch 1, so each fold stops 3 epochs later and leaves the batch
    assert runner.epoch == 4 and runner.live == [] and runner.model.fc_out_1.weight.shape[0] == 0
    assert all(f.stopped and f.epochs_run == 4 for f in runner.members)


def test_best_epoch_is_argmax_of_validation_metric(tiny_data):
    r = train_trial(make_config(model="attention", epochs=6, **FAST), tiny_data, seed=1)
    for k, best in enumerate(r.best_epochs):
        scores = [h["val_emoval"] for h in r.history if h["fold"] == k]
        assert best == int(np.argmax(scores)) + 1
        assert r.splits["cv"].fold_metrics[k]["emoval"] == pytest.approx(max(scores))


def test_cv_is_the_mean_of_fold_metrics_and_tests_average_fold_logits(tiny_data):
    cfg = make_config(model="attention_robust", epochs=3, **FAST)
    runner = Engine([(cfg, 0)], tiny_data)
    while not runner.done:
        runner.step()
    r = runner.score()[0]
    cv = r.splits["cv"]
    assert cv.metrics["acc"] == pytest.approx(np.mean([m["acc"] for m in cv.fold_metrics]))
    assert sorted(cv.names) == sorted(tiny_data.splits["train"].names)  # every sample predicted once
    test1 = runner.splits["test1"]
    for k in range(5):  # each fold's best model on its own
        logits, _ = predict(runner.best_model([k]), test1.inputs)
        assert np.allclose(r.splits["test1"].fold_metrics[k]["acc"], metrics(logits[0], _[0], tiny_data.splits["test1"].emos,
                                                                             tiny_data.splits["test1"].vals)["acc"])
    logits, _ = predict(runner.best_model(list(range(5))), test1.inputs)
    assert np.allclose(r.splits["test1"].logits, logits.mean(0), atol=1e-6)
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
    cfg = preset_config("Exp4", epochs=2, **FAST)
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
    cfg = preset_config("Exp4", epochs=4, modality_dropout_warmup=1, **FAST)
    # a pack of two trials, the second with MERBench's loop (Adam with coupled L2, constant lr)
    trials = [(cfg, 0), (cfg.replace(kl_weight=0.05, lr=1e-3, optimizer="adam", lr_schedule="constant"), 1)]
    straight = Engine(trials, tiny_data)
    while not straight.done:
        straight.step()
    first = Engine(trials, tiny_data)
    first.step(), first.step()
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = Engine(trials, tiny_data)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    while not resumed.done:
        resumed.step()
    assert resumed.history == straight.history
    a, b = resumed.score(), straight.score()
    assert all(np.array_equal(a[t].splits["test1"].logits, b[t].splits["test1"].logits) for t in (0, 1))
    other = Engine([(cfg, 2)], tiny_data)
    with pytest.raises(CheckpointError, match="another pack"):
        other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))


# ---------------------------------------------------------------- packs

QUIET = dict(lr=3e-3, batch_size=64, hidden_dim=16, dropout=0.0, modality_dropout=0.0, epochs=4)  # no randomness


@pytest.mark.parametrize("name", ["attention", "Exp1", "Exp4"])
def test_members_trained_together_equal_the_same_members_trained_alone(name, tiny_data, fixed_noise):
    # four trials differing in what packs may differ in (loss weights, temperature, lr, weight
    # decay, optimiser and schedule, seed), in float64 so that float noise cannot grow into a
    # different early stop
    base = preset_config(name, **QUIET, patience=2)
    other_loop = dict(optimizer="adamw", lr_schedule="plateau") if base.optimizer == "adam" else dict(
        optimizer="adam", lr_schedule="constant")
    trials = [(base, 0), (base.replace(kl_weight=0.05, fusion_temperature=0.5, weight_decay=0.01), 1),
              (base.replace(lr=1e-3, recon_weight=0.5, cross_kl_weight=0.1), 0),
              (base.replace(weight_decay=0.01, **other_loop), 1)]
    packed = train(trials, tiny_data, n_folds=3, device="cpu", dtype=torch.float64)
    for t, trial in enumerate(trials):
        alone = train([trial], tiny_data, n_folds=3, device="cpu", dtype=torch.float64)[0]
        together = packed[t]
        assert [h["epoch"] for h in together.history] == [h["epoch"] for h in alone.history]
        assert together.best_epochs == alone.best_epochs and together.epochs_run == alone.epochs_run
        assert np.allclose([h["val_emoval"] for h in together.history], [h["val_emoval"] for h in alone.history],
                           rtol=0, atol=1e-9)
        assert np.allclose(together.splits["test1"].logits, alone.splits["test1"].logits, rtol=0, atol=1e-9)


def test_a_members_start_is_torchs_own_draw_alone_or_in_a_pack():
    cfg = preset_config("Exp4", hidden_dim=16)
    torch.manual_seed(5)
    first = torch.nn.Linear(16, 6)  # the first layer a model builds: fc_out_1
    alone = build_model(cfg, [10, 20, 8], 6, seed_folds=[(5, 0)])
    assert torch.equal(alone.fc_out_1.weight[0], first.weight) and torch.equal(alone.fc_out_1.bias[0], first.bias)
    pack = build_model(cfg, [10, 20, 8], 6, members=[cfg, cfg.replace(kl_weight=0.1), cfg], seed_folds=[(5, 1), (5, 0), (7, 1)])
    fold1 = build_model(cfg, [10, 20, 8], 6, seed_folds=[(5, 1)])
    for (name, p), q in zip(pack.named_parameters(), fold1.parameters()):
        assert torch.equal(p[0], q[0]), name
    assert torch.equal(pack.fc_out_1.weight[1], first.weight)
    assert not torch.equal(pack.fc_out_1.weight[2], pack.fc_out_1.weight[0])


def test_a_pack_refuses_trials_of_different_architectures(tiny_data):
    cfg = preset_config("Exp4", **QUIET)
    with pytest.raises(ValueError, match="share every config key"):
        Engine([(cfg, 0), (cfg.replace(hidden_dim=8), 0)], tiny_data)


def test_pruned_members_leave_the_batch_and_keep_their_best(tiny_data):
    cfg = preset_config("Exp4", **QUIET)
    engine = Engine([(cfg, 0), (cfg.replace(kl_weight=0.1), 0)], tiny_data, n_folds=2)
    engine.step()
    best = {n: t[2:].clone() for n, t in engine.best.items()}
    engine.prune([1])
    assert engine.live == [0, 1] and engine.model.fc_out_1.weight.shape[0] == 2
    engine.step()
    assert all(torch.equal(engine.best[n][2:], best[n]) for n in best)
    assert [m.pruned for m in engine.members] == [False, False, True, True]
    assert {h["trial"] for h in engine.history if h["epoch"] == 2} == {0}


@pytest.mark.parametrize("name", ["attention", "Exp4"])
def test_scoring_on_shared_inputs_equals_every_members_own_forward(name):
    # predict() feeds every member the same samples: one GEMM for all members' first layers, cached
    # per input while scoring, the bias alone for an all-zero (missing) modality
    from prmf.models.layers import shared_input_cache
    cfg = preset_config(name, hidden_dim=16)
    model = build_model(cfg, [10, 20, 8], 6, members=[cfg, cfg.replace(dropout=0.1), cfg], seed_folds=[(0, 0), (0, 1), (1, 0)])
    xs = [torch.randn(50, d) for d in (10, 20, 8)]
    xs[1][5] = 0
    missing = [xs[0], torch.zeros_like(xs[1]), xs[2]]
    with torch.no_grad():
        want = [model.eval()([x.expand(3, *x.shape).contiguous() for x in inputs])[1] for inputs in (xs, missing)]
    with shared_input_cache():
        got = [predict(model, inputs)[0] for inputs in (xs, missing, xs)]
    for g, w in zip(got, want + want[:1]):
        assert np.allclose(g, w.numpy(), atol=1e-5)


def test_stacked_adam_is_torchs_adam_or_adamw_for_every_member():
    # members with their own kind (Adam with coupled L2 / AdamW), lr and weight decay, one step
    # where only some members take part
    from prmf.optim import StackedAdam
    torch.manual_seed(0)
    w, b = torch.randn(4, 5, 3, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    kinds, lrs, wds = ["adamw", "adam", "adamw", "adam"], [1e-2, 1e-2, 3e-3, 1e-2], [1e-4, 1e-1, 1e-4, 0.0]
    refs = [[w[i].detach().clone().requires_grad_(), b[i].detach().clone().requires_grad_()] for i in range(4)]
    torch_opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    opts = [torch_opt[kinds[i]](r, lr=lrs[i], weight_decay=wds[i]) for i, r in enumerate(refs)]
    stacked = StackedAdam([w, b])
    for k in range(5):
        pos = [0, 2] if k == 2 else [0, 1, 2, 3]
        g = [torch.randn(4, 5, 3), torch.randn(4, 5)]
        w.grad, b.grad = g[0].clone(), g[1].clone()
        stacked.step(pos, [(kinds[i], lrs[i], wds[i]) for i in range(4)])
        for i in pos:
            refs[i][0].grad, refs[i][1].grad = g[0][i].clone(), g[1][i].clone()
            opts[i].step()
    for i in range(4):
        assert torch.allclose(w[i], refs[i][0], atol=1e-6) and torch.allclose(b[i], refs[i][1], atol=1e-6)
    assert stacked.steps == [5, 4, 5, 4]
    # member 1 (Adam, weight decay 0.1) would be off by ~1e-2 had it taken AdamW's decoupled step


def test_constant_schedule_never_changes_the_rate():
    from prmf.schedules import SCHEDULES
    const, plateau = SCHEDULES["constant"](1e-3), SCHEDULES["plateau"](1e-3)
    for _ in range(30):  # a flat validation metric: the plateau halves at epochs 12 and 23
        const.step(0.5)
        plateau.step(0.5)
    assert const.lr == 1e-3 and plateau.lr == 2.5e-4


def test_plateau_schedule_is_torchs_reduce_lr_on_plateau():
    from prmf.schedules import Plateau
    rng = np.random.default_rng(0)
    for start in (-0.5, 0.3):  # emoval may be negative: torch's relative threshold then loosens
        holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=3e-4)
        ref = torch.optim.lr_scheduler.ReduceLROnPlateau(holder, mode="max", factor=0.5, patience=10, min_lr=1e-6)
        mine = Plateau(3e-4)
        metric = start
        for epoch in range(300):
            metric += rng.normal(0, 0.01) if epoch < 40 else rng.normal(-0.001, 0.001)  # gains, then a plateau
            ref.step(metric)
            mine.step(metric)
            assert mine.lr == holder.param_groups[0]["lr"], (start, epoch)
        assert mine.lr < 3e-4 / 8 and mine.lr >= 1e-6  # it did reduce, down towards min_lr
