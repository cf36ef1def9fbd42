"""MERBench's baselines: `attention` (Baseline v0) and `attention_robust` (Robust v1, the published code's V1),
and what every model shares (FusionModel).

`attention` is MERBench's toolkit/models/attention.py exactly: the raw fc_att scores (no softmax)
weight the modality hiddens and there is no dropout before the output layers. `attention_robust`
adds what the published code's V1 changed: modality dropout on the hiddens, a softmax over the scores and
feat_dropout before the heads. Under fidelity 'paper' both also treat all-zero inputs as missing
(their hiddens zeroed), like every other model in that mode.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .encoders import LSTMEncoder, MLPEncoder
from .fusion import modality_dropout_keep, present_mask
from .draws import Draws
from .layers import Linear, dropout

# The per-member config keys the models read themselves (the engine owns the optimiser, lr, weight
# decay, the heads' loss weights and the modality-dropout schedule): a subset of config.MEMBER_KEYS.
MODEL_KEYS = ("dropout", "kl_weight", "recon_weight", "cross_kl_weight", "fusion_temperature")


class FusionModel(nn.Module):
    """What every model shares: M members (`members`: one config each, default [cfg]), three inputs
    (audio, text, video), the published code's outputs (features, emos_out, vals_out, interloss [M]).

    Inputs are [M, B, D] (utterance) or [M, B, T, D] with lengths [M, B] (frames); a one-member
    model also takes them without the member axis and answers without it. `modality_p` is this
    step's modality-dropout rate per member (float or [M]), given by the engine."""

    uses_modality_dropout = False
    uses_feat_dropout = True

    def __init__(self, cfg, dims, n_classes, members=None):
        super().__init__()
        self.cfg = cfg
        self.frames = cfg.feat_type != "utt"
        self.n_members = len(members or [cfg])
        self.hp = {key: [float(getattr(c, key)) for c in members or [cfg]] for key in MODEL_KEYS}
        for key, values in self.hp.items():  # buffers: they follow the device and a member subset
            self.register_buffer(key, torch.tensor(values, dtype=torch.float64), persistent=False)
        self.fc_out_1 = Linear(self.n_members, cfg.hidden_dim, n_classes)
        self.fc_out_2 = Linear(self.n_members, cfg.hidden_dim, 1)

    def value(self, key):
        """A per-member hyperparameter: the exact float when every member has the same (the fast
        path), else a float64 tensor [M] of the exact values (layers.per_member casts it where it
        meets a tensor, so a member's value rounds as its float would alone)."""
        values = self.hp[key]
        if all(v == values[0] for v in values):
            return values[0]
        return getattr(self, key)

    @torch.no_grad()
    def keep(self, index):
        """Keep only the members at `index` (a stopped member leaves the computation)."""
        index = torch.as_tensor(index, device=self.fc_out_1.weight.device)
        for module in self.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                setattr(module, name, nn.Parameter(p.index_select(0, index)))
            for name, b in list(module.named_buffers(recurse=False)):
                setattr(module, name, b.index_select(0, index))  # a buffer stays one (and non-persistent)
        self.n_members = len(index)
        self.hp = {key: [values[i] for i in index.tolist()] for key, values in self.hp.items()}

    def forward(self, inputs, lengths=None, modality_p=None, draws=None):
        """`draws`: the step's random streams per member (prmf/models/draws.py; the engine gives
        them); in training without them, keys are drawn from torch's global generator."""
        one = inputs[0].dim() == (3 if self.frames else 2)  # no member axis
        if one:
            inputs = [x[None] for x in inputs]
            lengths = None if lengths is None else [n[None] for n in lengths]
        lengths = lengths or [None] * 3
        shape = inputs[0].shape[:2]
        present = present_mask(inputs, self.frames) if self.cfg.fidelity == "paper" else None
        draws = (draws or Draws.from_global(shape[0], inputs[0].device)) if self.training else None
        keep = None
        if draws is not None and self.uses_modality_dropout:
            if modality_p is None or (isinstance(modality_p, float) and modality_p == 0):
                draws.skip()  # the site is taken all the same
            else:
                keep = modality_dropout_keep(shape, modality_p, draws)
        out = self.forward_members(inputs, lengths, present, keep, draws)
        return tuple(o[0] for o in out) if one else out

    def heads(self, fused, draws):
        features = dropout(fused, self.value("dropout") if self.uses_feat_dropout else 0.0, draws)
        return features, self.fc_out_1(features), self.fc_out_2(features).squeeze(-1)


def make_encoders(cfg, dims, n_members):
    """One encoder per modality: MERBench's (MLP for utterance features, LSTM for frames)."""
    cls = MLPEncoder if cfg.feat_type == "utt" else LSTMEncoder
    return nn.ModuleList(cls(n_members, d, cfg.hidden_dim) for d in dims)


def mask_hiddens(hiddens, mask):
    return hiddens if mask is None else [h * mask[..., i:i + 1] for i, h in enumerate(hiddens)]


class AttentionFusion(nn.Module):
    """MERBench: MLPEncoder(3H, H) -> Linear(H, 3) -> scores weight the modality hiddens.
    MERBench uses the raw scores; the published code's V1/V2 put a softmax on them (`softmax=True`)."""

    def __init__(self, n_members, hidden_dim, softmax):
        super().__init__()
        self.softmax = softmax
        self.attention_mlp = MLPEncoder(n_members, hidden_dim * 3, hidden_dim)
        self.fc_att = Linear(n_members, hidden_dim, 3)

    def forward(self, hiddens, rate, draws):
        weights = self.fc_att(self.attention_mlp(torch.cat(hiddens, dim=-1), None, rate, draws))
        if self.softmax:
            weights = F.softmax(weights, dim=-1)
        return (torch.stack(hiddens, dim=-2) * weights.unsqueeze(-1)).sum(dim=-2), weights


class Attention(FusionModel):
    """MERBench's `attention` baseline: encoder per modality, attention fusion (raw scores)."""

    uses_feat_dropout = False
    softmax = False

    def __init__(self, cfg, dims, n_classes, members=None):
        super().__init__(cfg, dims, n_classes, members)
        self.encoders = make_encoders(cfg, dims, self.n_members)
        self.fusion = AttentionFusion(self.n_members, cfg.hidden_dim, self.softmax)

    def forward_members(self, inputs, lengths, present, keep, draws):
        rate = self.value("dropout")
        hiddens = [enc(x, n, rate, draws) for enc, x, n in zip(self.encoders, inputs, lengths)]
        hiddens = mask_hiddens(mask_hiddens(hiddens, present), keep)
        fused, _ = self.fusion(hiddens, rate, draws)
        return (*self.heads(fused, draws), fused.new_zeros(fused.shape[0]))


class AttentionRobust(Attention):
    """`attention_robust` (the published code's V1): modality dropout on the hiddens, softmax, feat_dropout."""

    uses_modality_dropout = True
    uses_feat_dropout = True
    softmax = True
