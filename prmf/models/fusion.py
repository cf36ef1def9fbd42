"""P-RMF's fusion parts: uncertainty weights, the proxy's cross-modal attention, the VAE losses,
and modality dropout. Modalities are always in the order (audio, text, video)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

MISSING_STD = 1e6  # std given to a dropped or absent modality, as in the seeds

# Keep-masks of the 6 drop patterns of the seeds: a, t, v, a+t, a+v, t+v.
DROP_PATTERNS = torch.tensor([[0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.bool)


def present_mask(inputs) -> torch.Tensor:
    """[B, 3] bool: False where a modality's input is all zeros (MERBench's 'missing' encoding)."""
    return torch.stack([x.flatten(1).abs().sum(1) > 0 for x in inputs], dim=1)


def modality_dropout_keep(batch_size, p, device) -> torch.Tensor:
    """[B, 3] bool keep-mask: each sample, with probability p, loses one of the 6 patterns."""
    drop = torch.rand(batch_size, device=device) < p
    pattern = DROP_PATTERNS.to(device)[torch.randint(0, 6, (batch_size,), device=device)]
    return torch.where(drop[:, None], pattern, torch.ones_like(pattern))


class UncertaintyWeightedFusion(nn.Module):
    """w = softmax((1/(u_m+1e-6))/tau) with u_m the mean std of modality m; proxy = sum_m w_m mu_m.

    A missing modality (std set to MISSING_STD) would keep a weight of e^0/sum at the softmax
    (about 0.16 at initialisation), so its logit is masked to -inf to make the collapse exact.
    """

    def __init__(self, temperature=1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, mus, stds, present=None):
        u = torch.stack([s.mean(dim=-1) for s in stds], dim=1)  # [B, 3]
        logits = (1.0 / (u + 1e-6)) / self.temperature
        if present is not None:
            any_present = present.any(dim=1, keepdim=True)
            logits = logits.masked_fill(~present & any_present, float("-inf"))
        weights = F.softmax(logits, dim=1)
        if present is not None:
            weights = weights * any_present  # nothing present: a zero proxy
        proxy = (torch.stack(mus, dim=1) * weights.unsqueeze(-1)).sum(dim=1)
        return proxy, weights


class ProxyCrossModalAttention(nn.Module):
    """The proxy queries each modality's mu; results weighted by w; LayerNorm residual + GELU FFN.

    kind='per_modality' is the seeds' design: one MultiheadAttention per modality, each with a
    single key, so its softmax is identically 1 and it reduces to a learned projection of mu_m.
    kind='joint' lets the proxy attend over the three modality tokens at once, with absent
    modalities masked out, so the attention itself chooses between modalities.
    """

    def __init__(self, hidden_dim, num_heads=4, dropout=0.1, kind="per_modality"):
        super().__init__()
        self.kind = kind
        n_attn = 3 if kind == "per_modality" else 1
        self.attn = nn.ModuleList(nn.MultiheadAttention(hidden_dim, num_heads, dropout=dropout, batch_first=True)
                                  for _ in range(n_attn))
        self.norm = nn.LayerNorm(hidden_dim)
        self.ffn = nn.Sequential(nn.Linear(hidden_dim, hidden_dim * 2), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim * 2, hidden_dim), nn.Dropout(dropout))

    def forward(self, proxy, mus, weights, present=None):
        q = proxy.unsqueeze(1)
        if self.kind == "per_modality":
            outs = [attn(q, m.unsqueeze(1), m.unsqueeze(1), need_weights=False)[0].squeeze(1)
                    for attn, m in zip(self.attn, mus)]
            attended = (torch.stack(outs, dim=1) * weights.unsqueeze(-1)).sum(dim=1)
        else:
            tokens = torch.stack(mus, dim=1)  # [B, 3, H]
            pad = None
            if present is not None:
                pad = ~present & present.any(dim=1, keepdim=True)  # all absent: attend to all
            attended = self.attn[0](q, tokens, tokens, key_padding_mask=pad, need_weights=False)[0].squeeze(1)
        fused = self.norm(proxy + attended)
        return fused + self.ffn(fused)


def kl_to_standard_normal(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over dimensions, averaged over the batch."""
    return (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)).mean()


def kl_gaussians(mu1, lv1, mu2, lv2):
    """Elementwise-mean KL(N1 || N2) between diagonal Gaussians (the seeds' cross-modal term)."""
    return 0.5 * (lv2 - lv1 + (lv1.exp() + (mu1 - mu2).pow(2)) / lv2.exp() - 1).mean()


class VAELossComputer:
    """interloss = kl_w * L_KL + recon_w * L_recon + cross_kl_w * L_crossKL (means over modalities)."""

    def __init__(self, kl_weight=0.01, recon_weight=0.1, cross_kl_weight=0.01):
        self.kl_weight, self.recon_weight, self.cross_kl_weight = kl_weight, recon_weight, cross_kl_weight

    def parts(self, mus, logvars, originals, reconstructions):
        kl = sum(kl_to_standard_normal(m, lv) for m, lv in zip(mus, logvars)) / 3
        recon = sum(F.mse_loss(r, o) for o, r in zip(originals, reconstructions)) / 3
        (ma, mt, mv), (la, lt, lv) = mus, logvars
        cross = (kl_gaussians(ma, la, mt, lt) + kl_gaussians(ma, la, mv, lv) + kl_gaussians(mt, lt, mv, lv)) / 3
        return kl, recon, cross

    def compute(self, mus, logvars, originals, reconstructions):
        kl, recon, cross = self.parts(mus, logvars, originals, reconstructions)
        return self.kl_weight * kl + self.recon_weight * recon + self.cross_kl_weight * cross
