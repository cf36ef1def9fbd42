"""The maths of P-RMF's parts (the paper's equations), checked against closed forms and invariants."""
import math

import pytest
import torch

from prmf.config import PRESETS, make_config, preset_config
from prmf.schedules import modality_dropout_rate
from prmf.models import build_model
from prmf.models.encoders import VariationalEncoder
from prmf.models.draws import Draws
from prmf.models.fusion import (DROP_PATTERNS, kl_gaussians, kl_to_standard_normal, modality_dropout_keep, present_mask,
                                uncertainty_fusion, vae_parts)
from prmf.models.layers import init_member

from helpers import DIMS, batch



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


def test_vae_losses_are_means_over_the_modalities_per_member():
    mus = [torch.randn(2, 3, 4) for _ in range(3)]  # 2 members
    lvs = [torch.randn(2, 3, 4) for _ in range(3)]
    recons = [torch.rand(2) for _ in range(3)]
    kl, recon, cross = vae_parts(mus, lvs, recons)
    assert kl.shape == recon.shape == cross.shape == (2,)
    for m in range(2):
        assert torch.allclose(kl[m], sum(kl_to_standard_normal(mu[m], lv[m]) for mu, lv in zip(mus, lvs)) / 3)
        pairs = [(0, 1), (0, 2), (1, 2)]
        assert torch.allclose(cross[m], sum(kl_gaussians(mus[i][m], lvs[i][m], mus[j][m], lvs[j][m]) for i, j in pairs) / 3)
    assert torch.allclose(recon, sum(recons) / 3)


def test_interloss_is_the_weighted_sum_of_its_parts_with_each_members_weights(fixed_noise):
    # two members with the same weights but other loss weights: the interloss is linear in them
    cfgs = [preset_config("Exp2", dropout=0.0, modality_dropout=0.0, kl_weight=w[0], recon_weight=w[1],
                              cross_kl_weight=w[2]) for w in ((1, 0, 0), (0, 1, 0), (0, 0, 1), (0.1, 0.2, 0.3))]
    model = build_model(cfgs[0], DIMS, 6, members=cfgs, seed_folds=[(0, 0)] * 4).train()
    x = [t.expand(4, *t.shape) for t in batch(8)]
    kl, recon, cross, mixed = model(x)[3]
    assert torch.allclose(mixed, 0.1 * kl + 0.2 * recon + 0.3 * cross, atol=1e-6)


def test_fusion_weights_follow_inverse_uncertainty_and_temperature():
    mus = [torch.full((1, 4), v) for v in (1.0, 2.0, 3.0)]
    stds = [torch.full((1, 4), s) for s in (0.5, 1.0, 2.0)]
    proxy, w = uncertainty_fusion(mus, stds, None, 1.0)
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.5]), 0)
    assert torch.allclose(w[0], expected, atol=1e-5)
    assert torch.allclose(proxy[0], torch.full((4,), float((expected * torch.tensor([1.0, 2.0, 3.0])).sum())), atol=1e-5)
    _, w_hot = uncertainty_fusion(mus, stds, None, 0.1)
    assert w_hot[0, 0] > w[0, 0]  # a lower temperature sharpens towards the most certain modality


def test_missing_modality_gets_negligible_weight():
    mus = [torch.randn(2, 4) for _ in range(3)]
    stds = [torch.ones(2, 4), torch.full((2, 4), 1e6), torch.ones(2, 4)]
    present = torch.tensor([[True, False, True], [True, False, True]])
    proxy, w = uncertainty_fusion(mus, stds, present, 1.0)
    assert (w[:, 1] < 1e-6).all() and torch.allclose(w.sum(1), torch.ones(2))
    # without the mask (the published file: std 1e6 alone) a large weight is left when the stds are near 1
    _, w_unmasked = uncertainty_fusion(mus, stds, None, 1.0)
    assert (w_unmasked[:, 1] > 0.1).all()


def test_all_zero_input_is_treated_as_missing_by_the_model():
    torch.manual_seed(0)
    model = build_model(preset_config("Exp4", fidelity="paper"), DIMS, 6).eval()  # masking: paper mode
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
    enc = VariationalEncoder(1, 5, 8)
    init_member(enc, [0], None)
    z, mu, logvar, std = enc(torch.randn(1, 3, 5), None, 0.0, Draws.from_global(1, "cpu"))
    assert torch.allclose(logvar, torch.zeros_like(logvar)) and torch.allclose(std, torch.ones_like(std))
    with torch.no_grad():
        enc.heads.logvar_layer.bias.fill_(100.0)
    _, _, logvar, std = enc(torch.randn(1, 3, 5), None, 0.0, Draws.from_global(1, "cpu"))
    assert logvar.max() == 10 and torch.isfinite(std).all()


def test_eval_is_deterministic_and_training_samples():
    torch.manual_seed(0)
    model = build_model(preset_config("Exp4"), DIMS, 6)
    x = batch()
    model.eval()
    assert torch.equal(model(x)[1], model(x)[1])
    assert model(x)[3] == 0
    model.train()
    assert not torch.equal(model(x)[1], model(x)[1])


@pytest.mark.parametrize("experiment", sorted(PRESETS))
def test_gradients_reach_every_parameter_that_should_learn(experiment):
    torch.manual_seed(0)
    cfg = preset_config(experiment, modality_dropout=0.0)
    model = build_model(cfg, DIMS, 6).train()
    _, emos_out, vals_out, interloss = model(batch(32))
    (emos_out.sum() + vals_out.sum() + interloss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_modality_dropout_is_vectorised_and_uses_the_six_patterns():
    torch.manual_seed(0)
    keep = modality_dropout_keep((3, 20000), torch.tensor([0.3, 0.0, 0.6], dtype=torch.float64), Draws.from_global(3, "cpu"))  # each member its own rate
    dropped = ~keep.all(-1)
    assert abs(dropped[0].float().mean().item() - 0.3) < 0.02 and not dropped[1].any()
    assert abs(dropped[2].float().mean().item() - 0.6) < 0.02
    patterns = {tuple(r.tolist()) for r in keep[dropped]}
    assert patterns == {tuple(r.tolist()) for r in DROP_PATTERNS}
    assert keep.sum(-1).min() >= 1  # never all three


def test_progressive_dropout_schedule():
    paper = make_config(fidelity="paper")  # the paper's ramp to E = 150 (tests/test_fidelity.py: both modes)
    assert modality_dropout_rate(paper, 10) == 0.0
    assert modality_dropout_rate(paper, 15) == 0.0
    assert math.isclose(modality_dropout_rate(paper, 15 + 135 // 2), 0.2 * (67 / 135))
    assert modality_dropout_rate(paper, 150) == pytest.approx(0.2)
    code = make_config(modality_dropout_warmup=0)
    assert modality_dropout_rate(code, 1) == 0.2  # the published code without warm-up: the full rate from the start


def test_dropped_modality_has_zero_mu_in_the_proxy():
    torch.manual_seed(0)
    model = build_model(preset_config("Exp2", modality_dropout=0.0, fidelity="paper"), DIMS, 6).eval()
    x = batch(4)
    x_no_text = [x[0], torch.zeros_like(x[1]), x[2]]
    # Exp2's fused feature is the proxy: with text absent, it is a weighted sum of audio and video mu only
    feats = model(x_no_text)[0]
    mus = [model.encoders[i](x_no_text[i][None], None, 0.0, None)[1][0] for i in (0, 2)]
    stds = [model.encoders[i](x_no_text[i][None], None, 0.0, None)[3][0] for i in (0, 2)]
    _, w = uncertainty_fusion(mus, stds, None, model.cfg.fusion_temperature)
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
    for name, drops in [("attention", False), ("attention_robust", True)]:  # the baseline has no modality dropout
        model = build_model(make_config(model=name, dropout=0.0), DIMS, 6).train()
        outs = []
        for p in (0.0, 0.9):
            torch.manual_seed(0)
            outs.append(model(batch(), modality_p=p)[1])
        assert torch.equal(*outs) != drops, name


def test_the_member_lstm_is_torchs_lstm_on_packed_sequences():
    # each member's last real hidden state equals nn.LSTM's on the packed sequence, with its weights
    from torch.nn.utils.rnn import pack_padded_sequence

    from prmf.models.layers import LSTM
    torch.manual_seed(0)
    lstm = LSTM(2, 5, 7)
    for m in range(2):
        lstm.reset_member([m], None)
    x, lengths = torch.randn(2, 4, 6, 5), torch.tensor([[6, 2, 4, 1], [3, 6, 6, 5]])
    got = lstm(x, lengths)
    for m in range(2):
        ref = torch.nn.LSTM(5, 7, batch_first=True)
        with torch.no_grad():
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                getattr(ref, name).copy_(getattr(lstm, name)[m])
        _, (h, _) = ref(pack_padded_sequence(x[m], lengths[m], batch_first=True, enforce_sorted=False))
        assert torch.allclose(got[m], h[0], atol=1e-6)
