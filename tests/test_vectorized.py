"""The fold-vectorised runner (prmf.vectorized) against the sequential TrialRunner.

With every source of randomness off or identical (dropout 0, modality dropout 0, the VAE's
reparameterisation noise replaced by one fixed pattern in both paths) the two must agree fold by
fold up to float noise: histories, best epochs, early stops, parameters, test logits. With
randomness on they draw different masks, so only their accuracy is compared.
"""
import io

import numpy as np
import pytest
import torch

from prmf.config import experiment_config, make_config
from prmf.models import build_model
from prmf.trainer import TrialRunner, make_runner, train_trial
from prmf.vectorized import VectorizedRunner, dropout, forward, keep_mask, supports

DIMS = [10, 20, 8]
QUIET = dict(lr=3e-3, batch_size=64, hidden_dim=32, dropout=0.0, modality_dropout=0.0)  # no randomness

CONFIGS = {
    "attention": make_config(model="attention", **QUIET),
    "attention_robust": make_config(model="attention_robust", **QUIET),
    **{e: experiment_config(e, **QUIET) for e in ("Exp1", "Exp2", "Exp3", "Exp4", "Exp5")},
    "Exp4-joint": experiment_config("Exp4", proxy_attention="joint", **QUIET),
    "Exp5-joint": experiment_config("Exp5", proxy_attention="joint", **QUIET),
}


@pytest.fixture
def fixed_noise(monkeypatch):
    """The VAE's eps ~ N(0, I) replaced by one fixed pattern over (sample, unit), in both paths."""
    def pattern(t, **_):
        rows, cols = t.shape[-2:]
        eps = torch.sin(0.37 * torch.arange(rows * cols, dtype=t.dtype, device=t.device))
        return eps.view(rows, cols).expand(t.shape)
    monkeypatch.setattr(torch, "randn_like", pattern)


def stacked(models):
    names = [n for n, _ in models[0].named_parameters()]
    return {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n in names}


def inputs(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, d, generator=g) for d in DIMS]
    xs[2][1] = 0  # a sample without video
    xs[0][3] = xs[1][3] = 0  # one with video only
    return xs


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("train", [False, True])
def test_batched_forward_matches_the_modules(name, train, fixed_noise):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    models = [build_model(cfg, DIMS, 6).train(train) for _ in range(3)]
    xs = [inputs(seed=k) for k in range(3)]  # each fold its own batch
    batched = [torch.stack([x[m] for x in xs]) for m in range(3)]
    present = torch.stack([torch.stack([x.abs().sum(1) > 0 for x in fold], 1) for fold in xs])
    with torch.no_grad():
        emos, vals, inter = forward(stacked(models), cfg, batched, present, train)
        for k, m in enumerate(models):
            _, e, v, i = m(xs[k])
            assert torch.allclose(emos[k], e, atol=1e-5), name
            assert torch.allclose(vals[k], v.squeeze(1), atol=1e-5), name
            assert torch.allclose(inter[k], i, atol=1e-5), name


def run(cls, cfg, data, seed=0, **kw):
    runner = cls(cfg, data, seed=seed, **kw)
    while not runner.done:
        runner.step()
    return runner


def compared(name, p, skip_rows):
    """`p` without the rows `skip_rows[name]` (a slice) names: rows that receive no gradient."""
    rows = skip_rows.get(name)
    if rows is None:
        return p
    keep = torch.ones(p.shape[0], dtype=torch.bool)
    keep[rows] = False
    return p[keep]


def assert_same_training(seq, vec, atol=1e-4, skip_rows=None):
    skip_rows = skip_rows or {}
    assert len(seq.history) == len(vec.history)
    for a, b in zip(seq.history, vec.history):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], abs=atol, nan_ok=True), (key, a, b)
            else:
                assert a[key] == b[key], (key, a, b)
    assert [f.best_epoch for f in seq.folds] == [f.best_epoch for f in vec.folds]
    assert [f.epochs_run for f in seq.folds] == [f.epochs_run for f in vec.folds]
    for fs, fv, mv in zip(seq.folds, vec.folds, vec.best_models()):
        assert torch.allclose(fs.best_val["logits"], fv.best_val["logits"], atol=atol, rtol=atol)
        for n, p in fs.model.named_parameters():
            assert torch.allclose(compared(n, p, skip_rows), compared(n, vec.params[n][fs.index], skip_rows),
                                  atol=atol, rtol=atol), n
        for n, p in fs.best_state.items():
            assert torch.allclose(compared(n, p, skip_rows), compared(n, mv.state_dict()[n], skip_rows),
                                  atol=atol, rtol=atol), n


def no_gradient_rows(name, cfg):
    """Parameter rows whose gradient is float noise, left out of the comparison: Adam divides that
    noise by its own square root, so it becomes learning-rate-sized steps that differ with the CPU
    and the order of float operations, yet never reaches an output.

    - joint proxy attention: the key projection's bias adds one constant to every score of a head
      (softmax ignores it); the whole in_proj_bias is left out.
    - per-modality proxy attention: each attention has one key, so its softmax is identically 1 and
      the query and key rows (the first 2*hidden_dim) of in_proj_weight/in_proj_bias get no gradient;
      the value rows are compared.
    """
    if "joint" in name:
        return {"proxy_attention.attn.0.in_proj_bias": slice(None)}
    if cfg.model == "attention_robust_v2" and cfg.use_proxy_attention:
        qk = slice(0, 2 * cfg.hidden_dim)
        return {f"proxy_attention.attn.{m}.{w}": qk for m in range(3) for w in ("in_proj_weight", "in_proj_bias")}
    return {}


@pytest.mark.parametrize("name", ["Exp4", "Exp1", "attention_robust", "Exp4-joint"])
def test_matches_sequential_fold_by_fold(name, tiny_data, fixed_noise):
    cfg = CONFIGS[name].replace(epochs=4, grad_clip=0.5 if name == "Exp1" else -1.0)
    seq, vec = run(TrialRunner, cfg, tiny_data), run(VectorizedRunner, cfg, tiny_data)
    assert_same_training(seq, vec, skip_rows=no_gradient_rows(name, cfg))
    drop_audio = {"-a": lambda xs: [torch.zeros_like(xs[0]), xs[1], xs[2]]}
    rs, rv = seq.finish(drop_audio), vec.finish(drop_audio)
    for split in rs.splits:
        assert np.allclose(rs.splits[split].logits, rv.splits[split].logits, atol=1e-4), split
        assert rs.splits[split].metrics == pytest.approx(rv.splits[split].metrics, abs=1e-4, nan_ok=True)
    for key, m in rs.scenarios.items():
        assert m == pytest.approx(rv.scenarios[key], abs=1e-4, nan_ok=True), key
    assert rs.best_epochs == rv.best_epochs and rs.epochs_run == rv.epochs_run


def test_a_fold_stopped_by_patience_stops_updating_while_the_others_go_on(tiny_data, fixed_noise):
    # folds stop after epochs 3, 6, 6, 6, 4. (Exp4 at lr 1e-2 stops them too, but one fold there is chaotic:
    # TrialRunner itself moves its logits by 1e-4 when its initial weights are scaled by 1 + 1e-7.)
    cfg = CONFIGS["Exp2"].replace(lr=5e-3, epochs=6, patience=1)
    seq = run(TrialRunner, cfg, tiny_data)
    vec = VectorizedRunner(cfg, tiny_data, seed=0)
    frozen = {}
    while not vec.done:
        vec.step()
        for f in vec.folds:
            if f.stopped and f.index not in frozen:
                frozen[f.index] = {n: t[f.index].detach().clone() for n, t in vec.params.items()}
    runs = [f.epochs_run for f in vec.folds]
    assert min(runs) < max(runs) == vec.epoch  # one fold stopped early, another ran on
    for k, state in frozen.items():
        assert all(torch.equal(state[n], vec.params[n][k]) for n in state), f"fold {k} changed after it stopped"
        assert vec.folds[k].epochs_run == max(h["epoch"] for h in vec.history if h["fold"] == k)
    assert_same_training(seq, vec)


def save_load(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_checkpoint_resume_continues_bit_for_bit(tiny_data):
    cfg = experiment_config("Exp4", epochs=5, patience=2, modality_dropout_warmup=1, lr=1e-2, batch_size=64,
                            hidden_dim=32, dropout=0.1)  # randomness on; some folds stop
    straight = run(VectorizedRunner, cfg, tiny_data)
    first = VectorizedRunner(cfg, tiny_data, seed=0)
    first.step(), first.step()
    state = save_load(first.state_dict())  # before the next runner reseeds torch's generator
    resumed = VectorizedRunner(cfg, tiny_data, seed=0)
    resumed.load_state_dict(state)
    while not resumed.done:
        resumed.step()
    assert resumed.history == straight.history
    assert np.array_equal(resumed.finish().splits["test1"].logits, straight.finish().splits["test1"].logits)


@pytest.mark.parametrize("first_cls,then_cls", [(TrialRunner, VectorizedRunner), (VectorizedRunner, TrialRunner)])
def test_checkpoints_resume_in_the_other_runner(first_cls, then_cls, tiny_data, fixed_noise):
    cfg = CONFIGS["Exp3"].replace(epochs=4)
    straight = run(TrialRunner, cfg, tiny_data)
    first = first_cls(cfg, tiny_data, seed=0)
    first.step(), first.step()
    state = save_load(first.state_dict())
    resumed = then_cls(cfg, tiny_data, seed=0)
    resumed.load_state_dict(state)
    while not resumed.done:
        resumed.step()
    for a, b in zip(straight.history, resumed.history):
        assert a["val_emoval"] == pytest.approx(b["val_emoval"], abs=1e-4) and a["lr"] == b["lr"]
    assert np.allclose(straight.finish().splits["test1"].logits, resumed.finish().splits["test1"].logits, atol=1e-4)


def test_with_randomness_on_both_runners_learn_alike(tiny_data):
    """Dropout, modality dropout and VAE noise on: different draws, the same accuracy (mean of 3 seeds)."""
    cfg = experiment_config("Exp4", epochs=8, modality_dropout_warmup=2, lr=3e-3, batch_size=64, hidden_dim=32,
                            dropout=0.2)
    acc = {cls: [train_trial(cfg, tiny_data, seed=s, vectorize=cls is VectorizedRunner) for s in range(3)]
           for cls in (TrialRunner, VectorizedRunner)}
    seq, vec = acc[TrialRunner], acc[VectorizedRunner]
    assert seq[0].history != vec[0].history  # the draws do differ
    for split in ("cv", "test1", "test2"):
        a = np.mean([r.splits[split].metrics["acc"] for r in seq])
        b = np.mean([r.splits[split].metrics["acc"] for r in vec])
        assert abs(a - b) < 0.05, (split, a, b)
    majority = np.bincount(tiny_data.splits["test1"].emos).max() / len(tiny_data.splits["test1"].emos)
    assert np.mean([r.splits["test1"].metrics["acc"] for r in vec]) > majority + 0.2


def test_dropout_masks_differ_per_fold_and_keep_the_rate():
    torch.manual_seed(0)
    x = torch.ones(5, 64, 512)
    y = dropout(x, 0.4, True)
    assert torch.equal(y.unique(), torch.tensor([0.0, 1 / 0.6]))
    assert abs((y > 0).float().mean().item() - 0.6) < 0.01
    assert all(not torch.equal(y[0], y[k]) for k in range(1, 5))
    assert abs(keep_mask(torch.empty(10 ** 6), 0.25).float().mean().item() - 0.75) < 0.003
    assert torch.equal(dropout(x, 0.4, False), x)


def test_make_runner_picks_the_vectorised_runner_where_it_covers_the_config(tiny_data):
    cfg = make_config(model="attention", epochs=1, hidden_dim=16)
    assert isinstance(make_runner(cfg, tiny_data, 0, 5, "cpu"), VectorizedRunner)
    assert isinstance(make_runner(cfg, tiny_data, 0, 5, "cpu", vectorize=False), TrialRunner)
    frm = cfg.replace(feat_type="frm_unalign")
    assert not supports(frm) and isinstance(make_runner(frm, tiny_data, 0, 5, "cpu"), TrialRunner)
    with pytest.raises(ValueError):
        VectorizedRunner(frm, tiny_data)
