"""A trial's numbers depend on its config, seed and data only: the same history and results alone, in
packs of 2, 4 and 9 at every position, beside pack-mates that differ in every member key, stop,
diverge or are pruned first, and after a resume from any checkpoint, also one where pack-mates were
stored before the kill. Every source of randomness is on: feature dropout at the presets' 0.4,
modality dropout after a one-epoch warm-up, the VAE's noise. Float64, so that the comparisons hold
to 1e-9 on any CPU (float32 is measured in benchmarks/RESULTS.md)."""
import io

import numpy as np
import pytest
import torch

from prmf import store
from prmf.config import preset_config
from prmf.engine import Engine, train
from prmf.models.draws import Draws, member_key
from sweeps import pack_runner

from test_pack_runner import Killed, MemoryReporter, make_pack

BASE = dict(hidden_dim=8, batch_size=128, epochs=3, modality_dropout_warmup=1)  # dropout 0.4; modality dropout 0.2 from epoch 2
FOLDS = 2


def mates(cfg):
    """Eight trials that differ from cfg (and each other) in every member key, and in seed."""
    swaps = dict(optimizer={"adamw": "adam", "adam": "adamw"}[cfg.optimizer],
                 lr_schedule={"plateau": "constant", "constant": "plateau"}[cfg.lr_schedule])
    return [(cfg.replace(kl_weight=0.01 * i, recon_weight=0.05 * i, cross_kl_weight=0.02 * i, fusion_temperature=0.5 + 0.1 * i,
                         dropout=0.05 * i, use_modality_dropout=i % 2 == 0, modality_dropout=0.1 + 0.05 * i,
                         modality_dropout_warmup=i % 3, modality_dropout_ramp=("warmup", "last_epoch")[i % 2],
                         modality_dropout_ramp_end=4 + i, lr=1e-3 * i, weight_decay=1e-3 * i, min_delta=1e-4 * i,
                         emo_weight=0.5 + 0.1 * i, val_weight=0.5 + 0.2 * i, **(swaps if i % 2 else {})), i)
            for i in range(1, 9)]


def run(trials):
    return train(trials, TINY, n_folds=FOLDS, device="cpu", dtype=torch.float64)


def same(a, b):
    """Two TrialResults of one trial: the same epochs, best epochs and, to 1e-9, every validation
    score and test logit."""
    assert [(h["fold"], h["epoch"]) for h in a.history] == [(h["fold"], h["epoch"]) for h in b.history]
    assert a.best_epochs == b.best_epochs and a.epochs_run == b.epochs_run
    for key in ("train_loss", "val_emoval", "val_acc", "modality_dropout_p"):
        assert np.allclose([h[key] for h in a.history], [h[key] for h in b.history], rtol=0, atol=1e-9), key
    for split in ("cv", "test1", "test2", "test3"):
        assert np.allclose(a.splits[split].logits, b.splits[split].logits, rtol=0, atol=1e-9), split


@pytest.fixture(scope="module", autouse=True)
def tiny(tiny_data):
    global TINY
    TINY = tiny_data


@pytest.mark.parametrize("name", ["attention_robust", "Exp4"])
def test_a_trial_trains_to_the_same_numbers_alone_and_at_every_place_of_packs_of_2_4_and_9(name):
    cfg = preset_config(name, **BASE)
    trials = [(cfg, 0)] + mates(cfg)
    alone = [run([t])[0] for t in trials]
    assert alone[0].history != run([(cfg, 1)])[0].history  # the seed is what moves the numbers
    for order in ([8, 0], [3, 0, 8, 5], list(range(9))):  # the pack of 9 puts each trial at its own place
        packed = run([trials[i] for i in order])
        for pos, i in enumerate(order):
            same(packed[pos], alone[i])


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the diverging pack-mate's scores
def test_a_trial_keeps_its_numbers_when_pack_mates_stop_diverge_or_are_pruned_first():
    cfg = preset_config("Exp4", **{**BASE, "epochs": 4}, patience=2)
    stops = cfg.replace(min_delta=10.0, kl_weight=0.02)  # no gain counts: stops after epoch 3
    diverges = cfg.replace(lr=1e6, kl_weight=0.03)
    pruned = cfg.replace(kl_weight=0.04)
    engine = Engine([(stops, 1), (cfg, 0), (diverges, 2), (pruned, 3)], TINY, n_folds=FOLDS, device="cpu", dtype=torch.float64)
    engine.step()
    engine.prune([3])
    while not engine.done:
        engine.step()
    ended = engine.score()
    assert any(m.diverged_epoch for m in engine.members if m.trial == 2)
    same(ended[1], run([(cfg, 0)])[0])
    assert ended[3].epochs_run == [1] * FOLDS and ended[0].epochs_run == [3] * FOLDS


def checkpoint(engine):
    buf = io.BytesIO()
    torch.save(engine.state_dict(), buf)
    return buf.getvalue()


def test_a_resume_from_any_checkpoint_with_stored_pack_mates_left_out_keeps_every_number():
    cfg = preset_config("Exp4", **BASE)
    trials = [(cfg, 0), (cfg.replace(kl_weight=0.05, dropout=0.2), 1), (cfg.replace(lr=1e-3), 2)]
    straight = run(trials)
    for epoch in (1, 2):  # every checkpoint a 3-epoch pack takes
        first = Engine(trials, TINY, n_folds=FOLDS, device="cpu", dtype=torch.float64)
        for _ in range(epoch):
            first.step()
        resumed = Engine(trials, TINY, n_folds=FOLDS, device="cpu", dtype=torch.float64)
        resumed.load_state_dict(torch.load(io.BytesIO(checkpoint(first)), weights_only=True))
        resumed.prune([1])  # stored before the kill: out of the batch, as pack_runner leaves it
        while not resumed.done:
            resumed.step()
        ended = resumed.score(trials=[0, 2])
        same(ended[0], straight[0])
        same(ended[2], straight[2])


def test_draws_are_the_members_own_whatever_the_pack_and_site_order():
    keys = torch.tensor([member_key(0, 0), member_key(7, 1), member_key(0, 1)])
    alone = Draws(keys[1:2], 5)
    together = Draws(keys, 5)
    x = torch.zeros(3, 4, 9)
    mask_alone, mask_together = alone.keep_mask(x[:1], 0.4), together.keep_mask(x, 0.4)
    assert torch.equal(mask_alone[0], mask_together[1]) and not torch.equal(mask_together[0], mask_together[2])
    assert torch.equal(alone.normal(x[:1])[0], together.normal(x)[1])  # the next site, the same for both
    picked = Draws(keys, 5).subset(torch.tensor([1]))
    assert torch.equal(picked.keep_mask(x[:1], 0.4), mask_alone)
    assert not torch.equal(Draws(keys[1:2], 6).keep_mask(x[:1], 0.4), mask_alone)  # another step, other draws
    many = Draws(keys[:1], 0)
    assert abs(many.keep_mask(torch.zeros(1, 200000), 0.4).double().mean().item() - 0.6) < 0.005
    z = many.normal(torch.zeros(1, 200000, dtype=torch.float64))
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01


def test_a_pack_killed_between_two_trials_stores_resumes_to_the_uninterrupted_numbers(tmp_path):
    # the first trial stops early (min_delta: no gain counts) and is stored at epoch 3, the pack is
    # killed after epoch 3 with its checkpoint from epoch 2, taken before that store: the resumed
    # pack leaves the stored trial out and the other ends as it would have
    cfg = preset_config("Exp4", **{**BASE, "patience": 2, "epochs": 5})
    points = [("early", cfg.replace(min_delta=10.0)), ("late", cfg.replace(kl_weight=0.02))]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    pack_runner.run(make_pack(straight, points, checkpoint_every=2), TINY, MemoryReporter())
    first = MemoryReporter(stop_after=3)
    pack = make_pack(killed, points, checkpoint_every=2)
    early = pack["trials"][0]["trial_id"]
    with pytest.raises(Killed):
        pack_runner.run(pack, TINY, first)
    assert set(store.read_results(killed).trial_id) == {early}  # stored before the kill
    pack_runner.run(make_pack(killed, points, checkpoint_every=2), TINY, MemoryReporter(checkpoint=first.checkpoint))
    a, b = (store.read_results(d).sort_values(store.RESULT_KEY).reset_index(drop=True) for d in (straight, killed))
    assert not b.duplicated(store.RESULT_KEY).any() and len(a) == len(b)
    cols = ["acc", "f1", "emoval", "val_mse", "best_epoch", "epochs_run"]
    assert np.allclose(a[cols].to_numpy(float), b[cols].to_numpy(float), rtol=0, atol=1e-6, equal_nan=True)
    assert (a.trial_id == b.trial_id).all() and (a.split == b.split).all()
