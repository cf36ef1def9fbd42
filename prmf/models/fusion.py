"""P-RMF's fusion parts: uncertainty weights, the proxy's cross-modal attention, the VAE losses,
and modality dropout, member axis first. Modalities are always in the order (audio, text, video)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import LayerNorm, Linear, MultiheadAttention, dropout, per_member

MISSING_STD = 1e6  # std given to a dropped or absent modality, as in the seeds

# Keep-masks of the 6 drop patterns of the seeds: a, t, v, a+t, a+v, t+v.
DROP_PATTERNS = torch.tensor([[0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.bool)


def present_mask(inputs, frames=False) -> torch.Tensor:
    """[..., B, 3] bool: False where a modality's input is all zeros (MERBench's 'missing' encoding);
    inputs [..., B, D], or [..., B, T, D] with frames=True."""
    dims = (-2, -1) if frames else (-1,)
    return torch.stack([x.abs().sum(dims) > 0 for x in inputs], dim=-1)


def modality_dropout_keep(shape, p, draws) -> torch.Tensor:
    """[M, B, 3] bool keep-mask for shape (M, B): each sample, with probability p (float, or float64
    [M]; resolved to 2^-32), loses one of the 6 patterns (chosen uniformly, up to 2^-32)."""
    u, v = draws.uniform32(shape)
    if isinstance(p, float):
        drop = u < math.floor(p * 2 ** 32)
    else:
        drop = u < torch.floor(p.double() * 2 ** 32).long().view(-1, *[1] * (len(shape) - 1))
    pattern = DROP_PATTERNS.to(u.device)[v % 6]
    return torch.where(drop[..., None], pattern, torch.ones_like(pattern))


def uncertainty_fusion(mus, stds, present=None, temperature=1.0):
    """w = softmax((1/(u_m+1e-6))/tau) with u_m the mean std of modality m; proxy = sum_m w_m mu_m.

    present=None is the published code's UncertaintyWeightedFusion: a dropped modality (std MISSING_STD) has a
    logit of about 0, so it keeps e^0/sum (0.1253 at tau 0.8 when the other stds are 1.0, 0.0394
    at 0.5, about 0 at 0.1). With `present` (fidelity 'paper') an absent modality's logit is masked
    to -inf, so its weight is exactly 0; nothing present gives a zero proxy. tau: float or [M]."""
    u = torch.stack([s.mean(dim=-1) for s in stds], dim=-1)  # [..., B, 3]
    logits = (1.0 / (u + 1e-6)) / per_member(temperature, u)
    if present is None:
        weights = F.softmax(logits, dim=-1)
    else:
        any_present = present.any(dim=-1, keepdim=True)
        weights = F.softmax(logits.masked_fill(~present & any_present, float("-inf")), dim=-1) * any_present
    return (torch.stack(mus, dim=-2) * weights.unsqueeze(-1)).sum(dim=-2), weights


class ProxyCrossModalAttention(nn.Module):
    """The proxy queries each modality's mu; results weighted by w; LayerNorm residual + GELU FFN.

    kind='per_modality' is the published code's design: one MultiheadAttention per modality, each with a
    single key, so its softmax is identically 1 and it reduces to a learned projection of mu_m.
    kind='joint' lets the proxy attend over the three modality tokens at once, with absent
    modalities masked out, so the attention itself chooses between modalities.
    """

    def __init__(self, n_members, hidden_dim, num_heads=4, kind="per_modality"):
        super().__init__()
        self.kind = kind
        self.attn = nn.ModuleList(MultiheadAttention(n_members, hidden_dim, num_heads)
                                  for _ in range(3 if kind == "per_modality" else 1))
        self.norm = LayerNorm(n_members, hidden_dim)
        self.ffn_1 = Linear(n_members, hidden_dim, hidden_dim * 2)
        self.ffn_2 = Linear(n_members, hidden_dim * 2, hidden_dim)

    def forward(self, proxy, mus, weights, present, rate, draws):
        if self.kind == "per_modality":
            outs = [attn.single_key(mu, rate, draws) for attn, mu in zip(self.attn, mus)]
            attended = (torch.stack(outs, dim=2) * weights.unsqueeze(-1)).sum(dim=2)
        else:
            pad = None if present is None else ~present & present.any(dim=-1, keepdim=True)  # all absent: attend to all
            attended = self.attn[0](proxy, torch.stack(mus, dim=2), pad, rate, draws)
        fused = self.norm(proxy + attended)
        ffn = dropout(F.gelu(self.ffn_1(fused)), rate, draws)
        return fused + dropout(self.ffn_2(ffn), rate, draws)


def kl_to_standard_normal(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over dimensions, averaged over the batch: [M]."""
    return (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)).mean(dim=-1)


def kl_gaussians(mu1, lv1, mu2, lv2):
    """Elementwise-mean KL(N1 || N2) between diagonal Gaussians (the published code's cross-modal term): [M]."""
    return 0.5 * (lv2 - lv1 + (lv1.exp() + (mu1 - mu2).pow(2)) / lv2.exp() - 1).mean(dim=(-2, -1))


def vae_parts(mus, logvars, recon_mses):
    """(L_KL, L_recon, L_crossKL), each a mean over the three modalities, per member."""
    kl = sum(kl_to_standard_normal(m, lv) for m, lv in zip(mus, logvars)) / 3
    (ma, mt, mv), (la, lt, lv) = mus, logvars
    cross = (kl_gaussians(ma, la, mt, lt) + kl_gaussians(ma, la, mv, lv) + kl_gaussians(mt, lt, mv, lv)) / 3
    return kl, sum(recon_mses) / 3, cross
