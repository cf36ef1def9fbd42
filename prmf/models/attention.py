"""MERBench's baselines: `attention` (attention fusion) and `attention_robust` (+ modality dropout)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .encoders import LSTMEncoder, MLPEncoder
from .fusion import dropout_probability, modality_dropout_keep


class FusionModel(nn.Module):
    """What every model shares: three inputs (audio, text, video), the seeds' outputs
    (features, emos_out, vals_out, interloss) and the epoch counter behind modality dropout."""

    def __init__(self, cfg, dims, n_classes):
        super().__init__()
        self.cfg = cfg
        self.epoch = 1
        self.feat_dropout = nn.Dropout(cfg.dropout)
        self.fc_out_1 = nn.Linear(cfg.hidden_dim, n_classes)
        self.fc_out_2 = nn.Linear(cfg.hidden_dim, 1)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def dropout_keep(self, batch_size, device):
        """[B, 3] keep-mask of modality dropout, or None when it is off (eval, or not this model)."""
        cfg = self.cfg
        if not (self.training and self.uses_modality_dropout and cfg.use_modality_dropout):
            return None
        p = dropout_probability(self.epoch, cfg.modality_dropout, cfg.modality_dropout_warmup, cfg.epochs)
        return modality_dropout_keep(batch_size, p, device) if p > 0 else None

    def heads(self, fused):
        features = self.feat_dropout(fused)
        return features, self.fc_out_1(features), self.fc_out_2(features)

    uses_modality_dropout = False


def make_encoders(cfg, dims, mlp, lstm):
    cls = mlp if cfg.feat_type == "utt" else lstm
    return nn.ModuleList(cls(d, cfg.hidden_dim, cfg.dropout) for d in dims)


class AttentionFusion(nn.Module):
    """MERBench: MLPEncoder(3H, H) -> Linear(H, 3) -> softmax -> weighted sum of the modality hiddens."""

    def __init__(self, hidden_dim, dropout):
        super().__init__()
        self.attention_mlp = MLPEncoder(hidden_dim * 3, hidden_dim, dropout)
        self.fc_att = nn.Linear(hidden_dim, 3)

    def forward(self, hiddens):
        weights = F.softmax(self.fc_att(self.attention_mlp(torch.cat(hiddens, dim=1))), dim=1)
        fused = (torch.stack(hiddens, dim=1) * weights.unsqueeze(-1)).sum(dim=1)
        return fused, weights


class Attention(FusionModel):
    """MERBench's `attention` baseline: encoder per modality, attention fusion."""

    def __init__(self, cfg, dims, n_classes):
        super().__init__(cfg, dims, n_classes)
        self.encoders = make_encoders(cfg, dims, MLPEncoder, LSTMEncoder)
        self.fusion = AttentionFusion(cfg.hidden_dim, cfg.dropout)

    def forward(self, inputs, lengths=None):
        lengths = lengths or [None] * 3
        hiddens = [enc(x, n) for enc, x, n in zip(self.encoders, inputs, lengths)]
        keep = self.dropout_keep(hiddens[0].shape[0], hiddens[0].device)
        if keep is not None:
            hiddens = [h * keep[:, i:i + 1] for i, h in enumerate(hiddens)]
        fused, _ = self.fusion(hiddens)
        return (*self.heads(fused), hiddens[0].new_zeros(()))


class AttentionRobust(Attention):
    """`attention_robust`: the baseline trained with modality dropout (hiddens of dropped modalities zeroed)."""

    uses_modality_dropout = True
