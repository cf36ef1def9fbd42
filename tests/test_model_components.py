"""The maths of P-RMF's parts (SPEC §2), checked against closed forms and invariants."""
import math

import pytest
import torch

from prmf.config import EXPERIMENTS, experiment_config, make_config, modality_dropout_rate
from prmf.models import build_model
from prmf.models.encoders import VariationalMLPEncoder
from prmf.models.fusion import (DROP_PATTERNS, UncertaintyWeightedFusion, VAELossComputer,
                                kl_gaussians, kl_to_standard_normal, modality_dropout_keep, present_mask)

DIMS = [10, 20, 8]


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g) for d in DIMS]


def test_kl_to_standard_normal_matches_torch_distributions():
    mu, logvar = torch.randn(7, 5), torch.randn(7, 5)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(5), torch.ones(5))
    expected = torch.distributions.kl_divergence(q, p).sum(1).mean()
    assert torch.allclose(kl_to_standard_normal(mu, logvar), expected, atol=1e-5)


def test_cross_modal_kl_matches_closed_form_and_is_zero_for_equal_gaussians():
    mu1, lv1, mu2, lv2 = (torch.randn(4, 6) for _ in range(4))
    q1 = torch.distributions.Normal(mu1, torch.exp(0.5 * lv1))
    q2 = torch.distributions.Normal(mu2, torch.exp(0.5 * lv2))
    assert torch.allclose(kl_gaussians(mu1, lv1, mu2, lv2), torch.distributions.kl_divergence(q1, q2).mean(), atol=1e-5)
    assert kl_gaussians(mu1, lv1, mu1, lv1).abs() < 1e-6


def test_interloss_is_the_weighted_sum_of_its_parts():
    mus = [torch.randn(3, 4) for _ in range(3)]
    lvs = [torch.randn(3, 4) for _ in range(3)]
    xs = [torch.randn(3, 5) for _ in range(3)]
    rs = [torch.randn(3, 5) for _ in range(3)]
    lc = VAELossComputer(0.1, 0.2, 0.3)
    kl, recon, cross = lc.parts(mus, lvs, xs, rs)
    assert torch.allclose(lc.compute(mus, lvs, xs, rs), 0.1 * kl + 0.2 * recon + 0.3 * cross)
    assert torch.allclose(recon, sum(((r - x) ** 2).mean() for x, r in zip(xs, rs)) / 3)


def test_fusion_weights_follow_inverse_uncertainty_and_temperature():
    mus = [torch.full((1, 4), v) for v in (1.0, 2.0, 3.0)]
    stds = [torch.full((1, 4), s) for s in (0.5, 1.0, 2.0)]
    proxy, w = UncertaintyWeightedFusion(temperature=1.0)(mus, stds)
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.5]), 0)
    assert torch.allclose(w[0], expected, atol=1e-5)
    assert torch.allclose(proxy[0], torch.full((4,), float((expected * torch.tensor([1.0, 2.0, 3.0])).sum())), atol=1e-5)
    _, w_hot = UncertaintyWeightedFusion(temperature=0.1)(mus, stds)
    assert w_hot[0, 0] > w[0, 0]  # a lower temperature sharpens towards the most certain modality


def test_missing_modality_gets_negligible_weight():
    mus = [torch.randn(2, 4) for _ in range(3)]
    stds = [torch.ones(2, 4), torch.full((2, 4), 1e6), torch.ones(2, 4)]
    present = torch.tensor([[True, False, True], [True, False, True]])
    proxy, w = UncertaintyWeightedFusion(1.0)(mus, stds, present)
    assert (w[:, 1] < 1e-6).all() and torch.allclose(w.sum(1), torch.ones(2))
    # without the mask the seeds' std=1e6 alone leaves a large weight: the reason the mask exists
    _, w_unmasked = UncertaintyWeightedFusion(1.0)(mus, stds)
    assert (w_unmasked[:, 1] > 0.1).all()


def test_all_zero_input_is_treated_as_missing_by_the_model():
    torch.manual_seed(0)
    model = build_model(experiment_config("Exp4", fidelity="paper"), DIMS, 6).eval()  # masking: paper mode
    x = batch(4)
    x[2][1] = 0
    assert present_mask(x)[1].tolist() == [True, True, False]
    # sample 1's output cannot depend on the video encoder; sample 0's does
    out = model(x)[1]
    with torch.no_grad():
        for p in model.encoders[2].parameters():
            p.add_(torch.randn_like(p))
    out2 = model(x)[1]
    assert torch.allclose(out2[1], out[1], atol=1e-6)
    assert not torch.allclose(out2[0], out[0], atol=1e-4)


def test_logvar_is_clamped_and_initial_variance_is_one():
    enc = VariationalMLPEncoder(5, 8, 0.0)
    z, mu, logvar, std = enc(torch.randn(3, 5))
    assert torch.allclose(logvar, torch.zeros_like(logvar)) and torch.allclose(std, torch.ones_like(std))
    with torch.no_grad():
        enc.heads.logvar_layer.bias.fill_(100.0)
    _, _, logvar, std = enc(torch.randn(3, 5))
    assert logvar.max() == 10 and torch.isfinite(std).all()


def test_eval_is_deterministic_and_training_samples():
    torch.manual_seed(0)
    model = build_model(experiment_config("Exp4"), DIMS, 6)
    x = batch()
    model.eval()
    assert torch.equal(model(x)[1], model(x)[1])
    assert model(x)[3] == 0
    model.train()
    assert not torch.equal(model(x)[1], model(x)[1])


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_gradients_reach_every_parameter_that_should_learn(experiment):
    torch.manual_seed(0)
    cfg = experiment_config(experiment, modality_dropout=0.0)
    model = build_model(cfg, DIMS, 6).train()
    _, emos_out, vals_out, interloss = model(batch(32))
    (emos_out.sum() + vals_out.sum() + interloss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_modality_dropout_is_vectorised_and_uses_the_six_patterns():
    torch.manual_seed(0)
    keep = modality_dropout_keep(20000, 0.3, "cpu")
    dropped = ~keep.all(1)
    assert abs(dropped.float().mean().item() - 0.3) < 0.02
    patterns = {tuple(r.tolist()) for r in keep[dropped]}
    assert patterns == {tuple(r.tolist()) for r in DROP_PATTERNS}
    assert keep.sum(1).min() >= 1  # never all three


def test_progressive_dropout_schedule():
    paper = make_config(fidelity="paper")  # the paper's ramp to E = 150 (tests/test_fidelity.py: both modes)
    assert modality_dropout_rate(paper, 10) == 0.0
    assert modality_dropout_rate(paper, 15) == 0.0
    assert math.isclose(modality_dropout_rate(paper, 15 + 135 // 2), 0.2 * (67 / 135))
    assert modality_dropout_rate(paper, 150) == pytest.approx(0.2)
    code = make_config(modality_dropout_warmup=0)
    assert modality_dropout_rate(code, 1) == 0.2  # the seeds' code without warm-up: the full rate from the start


def test_dropped_modality_has_zero_mu_in_the_proxy():
    torch.manual_seed(0)
    model = build_model(experiment_config("Exp2", modality_dropout=0.0, fidelity="paper"), DIMS, 6).eval()
    x = batch(4)
    x_no_text = [x[0], torch.zeros_like(x[1]), x[2]]
    # Exp2's fused feature is the proxy: with text absent, it is a weighted sum of audio and video mu only
    feats = model(x_no_text)[0]
    mus = [model.encoders[i](x_no_text[i])[1] for i in (0, 2)]
    stds = [model.encoders[i](x_no_text[i])[3] for i in (0, 2)]
    _, w = UncertaintyWeightedFusion(model.cfg.fusion_temperature)(mus, stds)
    assert torch.allclose(feats, w[:, :1] * mus[0] + w[:, 1:] * mus[1], atol=1e-5)


def test_joint_proxy_attention_variant_runs_and_masks():
    torch.manual_seed(0)
    model = build_model(make_config(proxy_attention="joint"), DIMS, 6).eval()
    x = batch(4)
    x[1][:] = 0
    out = model(x)[1]
    assert torch.isfinite(out).all()
    x_all_missing = [torch.zeros_like(t) for t in x]
    assert torch.isfinite(model(x_all_missing)[1]).all()


def test_baselines_are_looked_up_by_merbench_names():
    for name, cls in [("attention", "Attention"), ("attention_robust", "AttentionRobust"),
                      ("attention_robust_v2", "AttentionRobustV2")]:
        assert type(build_model(make_config(model=name), DIMS, 6)).__name__ == cls
    plain = build_model(make_config(model="attention"), DIMS, 6).train()
    assert plain.dropout_keep(8, "cpu") is None  # the baseline has no modality dropout
    robust = build_model(make_config(model="attention_robust", modality_dropout_warmup=0), DIMS, 6).train()
    assert robust.dropout_keep(8, "cpu") is not None
