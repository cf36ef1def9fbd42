"""MERBench's baselines: `attention` (Baseline v0) and `attention_robust` (Robust v1, the seeds' V1).

`attention` is MERBench's toolkit/models/attention.py exactly: the raw fc_att scores (no softmax)
weight the modality hiddens and there is no dropout before the output layers. `attention_robust`
adds what the seeds' V1 changed: modality dropout on the hiddens, a softmax over the scores and
feat_dropout before the heads. Under fidelity 'paper' both also treat all-zero inputs as missing
(their hiddens zeroed), like every other model in that mode.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import modality_dropout_rate
from .encoders import LSTMEncoder, MLPEncoder
from .fusion import modality_dropout_keep, present_mask


class FusionModel(nn.Module):
    """What every model shares: three inputs (audio, text, video), the seeds' outputs
    (features, emos_out, vals_out, interloss) and the epoch counter behind modality dropout."""

    uses_modality_dropout = False
    uses_feat_dropout = True

    def __init__(self, cfg, dims, n_classes):
        super().__init__()
        self.cfg = cfg
        self.epoch = 1
        self.feat_dropout = nn.Dropout(cfg.dropout if self.uses_feat_dropout else 0.0)
        self.fc_out_1 = nn.Linear(cfg.hidden_dim, n_classes)
        self.fc_out_2 = nn.Linear(cfg.hidden_dim, 1)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def dropout_rate(self):
        """This epoch's modality-dropout rate (0 for models without it)."""
        cfg = self.cfg
        return modality_dropout_rate(cfg, self.epoch) if self.uses_modality_dropout and cfg.use_modality_dropout else 0.0

    def dropout_keep(self, batch_size, device):
        """[B, 3] keep-mask of modality dropout, or None when it is off (eval, or rate 0)."""
        p = self.dropout_rate() if self.training else 0.0
        return modality_dropout_keep(batch_size, p, device) if p > 0 else None

    def present(self, inputs):
        """[B, 3] modalities treated as present, or None: all-zero inputs are missing under
        fidelity 'paper' only (the seeds' code and MERBench never mask them)."""
        return present_mask(inputs) if self.cfg.fidelity == "paper" else None

    def heads(self, fused):
        features = self.feat_dropout(fused)
        return features, self.fc_out_1(features), self.fc_out_2(features)


def make_encoders(cfg, dims, mlp, lstm):
    cls = mlp if cfg.feat_type == "utt" else lstm
    return nn.ModuleList(cls(d, cfg.hidden_dim, cfg.dropout) for d in dims)


def mask_hiddens(hiddens, keep):
    return hiddens if keep is None else [h * keep[:, i:i + 1] for i, h in enumerate(hiddens)]


class AttentionFusion(nn.Module):
    """MERBench: MLPEncoder(3H, H) -> Linear(H, 3) -> scores weight the modality hiddens.
    MERBench uses the raw scores; the seeds' V1/V2 put a softmax on them (`softmax=True`)."""

    def __init__(self, hidden_dim, dropout, softmax):
        super().__init__()
        self.softmax = softmax
        self.attention_mlp = MLPEncoder(hidden_dim * 3, hidden_dim, dropout)
        self.fc_att = nn.Linear(hidden_dim, 3)

    def forward(self, hiddens):
        weights = self.fc_att(self.attention_mlp(torch.cat(hiddens, dim=1)))
        if self.softmax:
            weights = F.softmax(weights, dim=1)
        fused = (torch.stack(hiddens, dim=1) * weights.unsqueeze(-1)).sum(dim=1)
        return fused, weights


class Attention(FusionModel):
    """MERBench's `attention` baseline: encoder per modality, attention fusion (raw scores)."""

    uses_feat_dropout = False
    softmax = False

    def __init__(self, cfg, dims, n_classes):
        super().__init__(cfg, dims, n_classes)
        self.encoders = make_encoders(cfg, dims, MLPEncoder, LSTMEncoder)
        self.fusion = AttentionFusion(cfg.hidden_dim, cfg.dropout, self.softmax)

    def forward(self, inputs, lengths=None):
        lengths = lengths or [None] * 3
        hiddens = [enc(x, n) for enc, x, n in zip(self.encoders, inputs, lengths)]
        hiddens = mask_hiddens(hiddens, self.present(inputs))
        hiddens = mask_hiddens(hiddens, self.dropout_keep(hiddens[0].shape[0], hiddens[0].device))
        fused, _ = self.fusion(hiddens)
        return (*self.heads(fused), hiddens[0].new_zeros(()))


class AttentionRobust(Attention):
    """`attention_robust` (the seeds' V1): modality dropout on the hiddens, softmax, feat_dropout."""

    uses_modality_dropout = True
    uses_feat_dropout = True
    softmax = True
