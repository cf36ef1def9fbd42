"""Per-modality encoders (deterministic and variational) and the reconstruction decoder."""
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence


class MLPEncoder(nn.Module):
    """MERBench's utterance encoder (toolkit/models/modules/encoder.py): Dropout -> three
    Linear+ReLU layers, named as there (linear_1..3)."""

    def __init__(self, in_size, hidden_size, dropout):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.linear_1 = nn.Linear(in_size, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)
        self.linear_3 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x, lengths=None):
        h = torch.relu(self.linear_1(self.drop(x)))
        return torch.relu(self.linear_3(torch.relu(self.linear_2(h))))


class LSTMEncoder(nn.Module):
    """MERBench's frame encoder: LSTM, last hidden state -> Dropout -> Linear (no activation).
    MERBench runs the LSTM over zero pre-padding; here it stops at each sample's last real frame
    (packed sequence), so padding never reaches the state (docs/FIDELITY.md)."""

    def __init__(self, in_size, hidden_size, dropout):
        super().__init__()
        self.rnn = nn.LSTM(in_size, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.linear_1 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.linear_1(self.dropout(h[-1]))


class _GaussianHeads(nn.Module):
    """mu and logvar heads shared by the variational encoders (logvar starts at 0: variance 1)."""

    def __init__(self, hidden_size):
        super().__init__()
        self.mu_layer = nn.Linear(hidden_size, hidden_size)
        self.logvar_layer = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.logvar_layer.weight)
        nn.init.zeros_(self.logvar_layer.bias)

    def forward(self, h):
        mu = self.mu_layer(h)
        logvar = self.logvar_layer(h).clamp(-10, 10)
        std = torch.exp(0.5 * logvar)
        z = mu + torch.randn_like(std) * std if self.training else mu
        return z, mu, logvar, std


class VariationalMLPEncoder(nn.Module):
    """x -> (z, mu, logvar, std): a Gaussian per sample instead of a point (P-RMF §3.2). The
    seeds' trunk: Dropout -> Linear -> ReLU -> Linear -> ReLU (two layers, not MERBench's three)."""

    def __init__(self, in_size, hidden_size, dropout):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.shared = nn.Sequential(nn.Linear(in_size, hidden_size), nn.ReLU(),
                                    nn.Linear(hidden_size, hidden_size), nn.ReLU())
        self.heads = _GaussianHeads(hidden_size)

    def forward(self, x, lengths=None):
        return self.heads(self.shared(self.drop(x)))


class VariationalLSTMEncoder(nn.Module):
    """The same Gaussian heads on an LSTM front end, for frame-level features."""

    def __init__(self, in_size, hidden_size, dropout):
        super().__init__()
        self.shared = LSTMEncoder(in_size, hidden_size, dropout)
        self.heads = _GaussianHeads(hidden_size)

    def forward(self, x, lengths):
        return self.heads(self.shared(x, lengths))


class ModalityDecoder(nn.Module):
    """z -> reconstruction of the modality's (utterance-level) input vector."""

    def __init__(self, hidden_size, out_size, dropout):
        super().__init__()
        self.decoder = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden_size, hidden_size), nn.ReLU(),
                                     nn.Linear(hidden_size, out_size))

    def forward(self, z):
        return self.decoder(z)
