"""AttentionRobustV2 (P-RMF): variational encoders, uncertainty-weighted proxy, proxy cross-modal
attention, VAE auxiliary losses and progressive modality dropout (SPEC §2).

Two fidelities (docs/FIDELITY.md). 'seeds_code', the code behind the published table: modality
dropout zeroes only z, which reaches the decoders and never the fusion (mu and std pass
untouched); all-zero inputs are not masked; use_vae=False is the seeds' forward_original, which
ignores use_proxy_attention (Exp5 trains Exp1). 'paper', the equations: a dropped or all-zero
modality has mu and z zeroed and std set to 1e6, so its fusion weight collapses; use_vae=False
with use_proxy_attention runs the proxy attention on the attention-fused vector.
"""
import torch

from .attention import AttentionFusion, FusionModel, make_encoders, mask_hiddens
from .encoders import (LSTMEncoder, MLPEncoder, ModalityDecoder, VariationalLSTMEncoder,
                       VariationalMLPEncoder)
from .fusion import MISSING_STD, ProxyCrossModalAttention, UncertaintyWeightedFusion, VAELossComputer


def utterance_vector(x, lengths):
    """The reconstruction target: the input itself (UTT) or the mean of its valid frames (FRA)."""
    if x.dim() == 2:
        return x
    valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1)
    return (x * valid).sum(1) / lengths.clamp(min=1)[:, None]


def builds_proxy_attention(cfg) -> bool:
    """The seeds' code builds the proxy attention only on the VAE path."""
    return cfg.use_proxy_attention and (cfg.use_vae or cfg.fidelity == "paper")


class AttentionRobustV2(FusionModel):
    uses_modality_dropout = True

    def __init__(self, cfg, dims, n_classes):
        super().__init__(cfg, dims, n_classes)
        h = cfg.hidden_dim
        if cfg.use_vae:
            self.encoders = make_encoders(cfg, dims, VariationalMLPEncoder, VariationalLSTMEncoder)
            self.decoders = torch.nn.ModuleList(ModalityDecoder(h, d, cfg.dropout) for d in dims)
            self.uncertainty_fusion = UncertaintyWeightedFusion(cfg.fusion_temperature)
            self.loss_computer = VAELossComputer(cfg.kl_weight, cfg.recon_weight, cfg.cross_kl_weight)
        else:
            self.encoders = make_encoders(cfg, dims, MLPEncoder, LSTMEncoder)
            self.fusion = AttentionFusion(h, cfg.dropout, softmax=True)
        if builds_proxy_attention(cfg):
            self.proxy_attention = ProxyCrossModalAttention(h, cfg.num_attention_heads, cfg.dropout,
                                                            cfg.proxy_attention)

    def forward(self, inputs, lengths=None):
        lengths = lengths or [None] * 3
        keep = self.dropout_keep(inputs[0].shape[0], inputs[0].device)
        present = self.present(inputs)
        if present is not None and keep is not None:
            present = present & keep
        if not self.cfg.use_vae:
            return self.forward_original(inputs, lengths, keep if present is None else present)
        encoded = [enc(x, n) for enc, x, n in zip(self.encoders, inputs, lengths)]
        zs, mus, logvars, stds = map(list, zip(*encoded))
        if present is None:  # seeds_code: the dropout mask reaches z (the decoders) only
            zs_d = mask_hiddens(zs, keep)
            mus_d, stds_d = mus, stds
        else:
            cols = [present[:, i:i + 1] for i in range(3)]
            mus_d = [mu * c for mu, c in zip(mus, cols)]
            zs_d = [z * c for z, c in zip(zs, cols)]
            stds_d = [torch.where(c, s, torch.full_like(s, MISSING_STD)) for s, c in zip(stds, cols)]
        proxy, weights = self.uncertainty_fusion(mus_d, stds_d, present)
        fused = self.proxy_attention(proxy, mus_d, weights, present) if self.cfg.use_proxy_attention else proxy
        features, emos_out, vals_out = self.heads(fused)
        if self.training:
            targets = [utterance_vector(x, n) for x, n in zip(inputs, lengths)]
            recons = [dec(z) for dec, z in zip(self.decoders, zs_d)]
            interloss = self.loss_computer.compute(mus, logvars, targets, recons)
        else:
            interloss = proxy.new_zeros(())
        return features, emos_out, vals_out, interloss

    def forward_original(self, inputs, lengths, mask):
        """use_vae=False: the seeds' attention fusion (softmax) of deterministic hiddens, dropped
        (and, under 'paper', absent) ones zeroed; under 'paper' with use_proxy_attention (Exp5) the
        fused vector is the proxy of the cross-modal attention, weighted by the fusion's weights."""
        hiddens = mask_hiddens([enc(x, n) for enc, x, n in zip(self.encoders, inputs, lengths)], mask)
        fused, weights = self.fusion(hiddens)
        if builds_proxy_attention(self.cfg):
            fused = self.proxy_attention(fused, hiddens, weights, None if self.cfg.fidelity != "paper" else mask)
        return (*self.heads(fused), fused.new_zeros(()))
