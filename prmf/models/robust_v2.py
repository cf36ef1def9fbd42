"""AttentionRobustV2 (P-RMF): variational encoders, uncertainty-weighted proxy, proxy cross-modal
attention, VAE auxiliary losses and progressive modality dropout (SPEC §2)."""
import torch

from .attention import AttentionFusion, FusionModel, make_encoders
from .encoders import (LSTMEncoder, MLPEncoder, ModalityDecoder, VariationalLSTMEncoder,
                       VariationalMLPEncoder)
from .fusion import (MISSING_STD, ProxyCrossModalAttention, UncertaintyWeightedFusion,
                     VAELossComputer, present_mask)


def utterance_vector(x, lengths):
    """The reconstruction target: the input itself (UTT) or the mean of its valid frames (FRA)."""
    if x.dim() == 2:
        return x
    valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1)
    return (x * valid).sum(1) / lengths.clamp(min=1)[:, None]


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
            self.fusion = AttentionFusion(h, cfg.dropout)
        if cfg.use_proxy_attention:
            self.proxy_attention = ProxyCrossModalAttention(h, cfg.num_attention_heads, cfg.dropout,
                                                            cfg.proxy_attention)

    def present(self, inputs):
        """Modalities present in the input and not dropped by modality dropout: [B, 3] bool."""
        present = present_mask(inputs)
        keep = self.dropout_keep(present.shape[0], present.device)
        return present if keep is None else present & keep

    def forward(self, inputs, lengths=None):
        lengths = lengths or [None] * 3
        present = self.present(inputs)
        if not self.cfg.use_vae:
            return self.forward_original(inputs, lengths, present)
        encoded = [enc(x, n) for enc, x, n in zip(self.encoders, inputs, lengths)]
        zs, mus, logvars, stds = map(list, zip(*encoded))
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

    def forward_original(self, inputs, lengths, present):
        """use_vae=False: MERBench attention fusion of deterministic hiddens (absent ones zeroed);
        with use_proxy_attention (Exp5) the fused vector is the proxy of the cross-modal attention,
        weighted by the attention fusion's weights."""
        hiddens = [enc(x, n) * present[:, i:i + 1] for i, (enc, x, n) in enumerate(zip(self.encoders, inputs, lengths))]
        fused, weights = self.fusion(hiddens)
        if self.cfg.use_proxy_attention:
            fused = self.proxy_attention(fused, hiddens, weights, present)
        return (*self.heads(fused), fused.new_zeros(()))
