"""AttentionRobustV2 (P-RMF): variational encoders, uncertainty-weighted proxy, proxy cross-modal
attention, VAE auxiliary losses and progressive modality dropout (docs/MODEL.md).

Three fidelities (docs/FIDELITY.md) decide what a dropped modality does on the VAE path.
'published' (default), the published attention_robust_v2.py behind the paper's table: its mu (and, with modality_dropout_z,
its z) is zeroed, its std set to 1e6 where the dropped mu is all zero (lines 244-249), and the
fusion is the plain softmax of UncertaintyWeightedFusion, so the classifier sees the drop; nothing
is masked at evaluation. 'design_plan' (the design plan's code): only z is zeroed, which reaches the decoders
and never the fusion. 'paper', the equations: mu and z zeroed, std 1e6 and the fusion logit masked,
all-zero inputs treated as missing. use_vae=False is the published code's forward_original, which ignores
use_proxy_attention (Exp5 trains Exp1) except under 'paper', where the proxy attention runs on the
attention-fused vector.
"""
import torch

from .attention import AttentionFusion, FusionModel, make_encoders, mask_hiddens
from .encoders import ModalityDecoder, VariationalEncoder
from .fusion import MISSING_STD, ProxyCrossModalAttention, uncertainty_fusion, vae_parts
from .layers import per_member


def utterance_vector(x, lengths):
    """The reconstruction target: the input itself (UTT) or the mean of its valid frames (FRA)."""
    if lengths is None:
        return x
    valid = (torch.arange(x.shape[-2], device=x.device) < lengths[..., None]).unsqueeze(-1)
    return (x * valid).sum(-2) / lengths.clamp(min=1)[..., None]


def builds_proxy_attention(cfg) -> bool:
    """The published code builds the proxy attention only on the VAE path."""
    return cfg.use_proxy_attention and (cfg.use_vae or cfg.fidelity == "paper")


class AttentionRobustV2(FusionModel):
    uses_modality_dropout = True

    def __init__(self, cfg, dims, n_classes, members=None):
        super().__init__(cfg, dims, n_classes, members)
        h, m = cfg.hidden_dim, self.n_members
        if cfg.use_vae:
            self.encoders = torch.nn.ModuleList(VariationalEncoder(m, d, h, self.frames) for d in dims)
            self.decoders = torch.nn.ModuleList(ModalityDecoder(m, h, d) for d in dims)
        else:
            self.encoders = make_encoders(cfg, dims, m)
            self.fusion = AttentionFusion(m, h, softmax=True)
        if builds_proxy_attention(cfg):
            self.proxy_attention = ProxyCrossModalAttention(m, h, cfg.num_attention_heads, cfg.proxy_attention)

    def forward_members(self, inputs, lengths, present, keep, draws):
        cfg, rate = self.cfg, self.value("dropout")
        if present is not None and keep is not None:
            present = present & keep
        if not cfg.use_vae:
            return self.forward_original(inputs, lengths, keep if present is None else present, present, draws)
        encoded = [enc(x, n, rate, draws) for enc, x, n in zip(self.encoders, inputs, lengths)]
        zs, mus, logvars, stds = map(list, zip(*encoded))
        if cfg.fidelity == "published":  # the published file: mu dropped, std 1e6 where the dropped mu is all zero
            mus_d = mask_hiddens(mus, keep)
            zs_d = mask_hiddens(zs, keep) if cfg.modality_dropout_z else zs
            stds_d = [torch.where(mu.abs().sum(-1, keepdim=True) == 0, MISSING_STD, s) for mu, s in zip(mus_d, stds)]
        elif cfg.fidelity == "design_plan":  # the design plan: the dropout mask reaches z (the decoders) only
            zs_d, mus_d, stds_d = mask_hiddens(zs, keep), mus, stds
        else:  # paper
            cols = [present[..., i:i + 1] for i in range(3)]
            zs_d = [z * c for z, c in zip(zs, cols)]
            mus_d = [mu * c for mu, c in zip(mus, cols)]
            stds_d = [torch.where(c, s, MISSING_STD) for s, c in zip(stds, cols)]
        proxy, weights = uncertainty_fusion(mus_d, stds_d, present, self.value("fusion_temperature"))
        fused = self.proxy_attention(proxy, mus_d, weights, present, rate, draws) if cfg.use_proxy_attention else proxy
        features, emos_out, vals_out = self.heads(fused, draws)
        if draws is None:
            return features, emos_out, vals_out, proxy.new_zeros(proxy.shape[0])
        recons = [dec.recon_mse(z, utterance_vector(x, n), rate, draws)
                  for dec, z, x, n in zip(self.decoders, zs_d, inputs, lengths)]
        kl, recon, cross = vae_parts(mus, logvars, recons)
        kl_w, recon_w, cross_w = (per_member(self.value(k), kl) for k in ("kl_weight", "recon_weight", "cross_kl_weight"))
        interloss = kl_w * kl + recon_w * recon + cross_w * cross
        return features, emos_out, vals_out, interloss

    def forward_original(self, inputs, lengths, mask, present, draws):
        """use_vae=False: the published code's attention fusion (softmax) of deterministic hiddens, dropped
        (and, under 'paper', absent) ones zeroed; under 'paper' with use_proxy_attention (Exp5) the
        fused vector is the proxy of the cross-modal attention, weighted by the fusion's weights."""
        rate = self.value("dropout")
        hiddens = mask_hiddens([enc(x, n, rate, draws) for enc, x, n in zip(self.encoders, inputs, lengths)], mask)
        fused, weights = self.fusion(hiddens, rate, draws)
        if builds_proxy_attention(self.cfg):
            fused = self.proxy_attention(fused, hiddens, weights, present, rate, draws)
        return (*self.heads(fused, draws), fused.new_zeros(fused.shape[0]))
