"""Per-modality encoders (deterministic and variational) and the reconstruction decoder, every
one with the member axis first (prmf/models/layers.py). `rate` is the dropout rate of each member;
`draws` the step's random streams (prmf/models/draws.py), None at evaluation."""
import torch
import torch.nn as nn

from .layers import LSTM, Linear, dropout, dropout_mask


class MLPEncoder(nn.Module):
    """MERBench's utterance encoder (toolkit/models/modules/encoder.py): Dropout -> Linear+ReLU
    layers, named as there (linear_1..3); the published code's variational trunk is the same with two."""

    def __init__(self, n_members, in_size, hidden_size, n_layers=3):
        super().__init__()
        self.layers = n_layers
        for i in range(1, n_layers + 1):
            setattr(self, f"linear_{i}", Linear(n_members, in_size if i == 1 else hidden_size, hidden_size))

    def forward(self, x, lengths, rate, draws):
        mask = dropout_mask(x, rate, draws)
        if mask is None:
            h = torch.relu(self.linear_1(x))
        else:  # dropout's 1/(1-p) after the matmul, on the narrow output instead of the wide input
            scale = 1.0 / (1.0 - rate)
            h = torch.relu(self.linear_1(x * mask, scale if isinstance(scale, float) else scale.to(x.dtype)))
        for i in range(2, self.layers + 1):
            h = torch.relu(getattr(self, f"linear_{i}")(h))
        return h


class LSTMEncoder(nn.Module):
    """MERBench's frame encoder: LSTM, last hidden state -> Dropout -> Linear (no activation).
    MERBench runs the LSTM over zero pre-padding; here it stops at each sample's last real frame
    (packed sequence), so padding never reaches the state (docs/FIDELITY.md)."""

    def __init__(self, n_members, in_size, hidden_size):
        super().__init__()
        self.rnn = LSTM(n_members, in_size, hidden_size)
        self.linear_1 = Linear(n_members, hidden_size, hidden_size)

    def forward(self, x, lengths, rate, draws):
        return self.linear_1(dropout(self.rnn(x, lengths), rate, draws))


class GaussianHeads(nn.Module):
    """mu and logvar heads shared by the variational encoders (logvar starts at 0: variance 1)."""

    def __init__(self, n_members, hidden_size):
        super().__init__()
        self.mu_layer = Linear(n_members, hidden_size, hidden_size)
        self.logvar_layer = Linear(n_members, hidden_size, hidden_size)

    def reset_member(self, members, gen):
        self.mu_layer.reset_member(members, gen)
        self.logvar_layer.reset_member(members, gen)  # drawn, then zeroed (as the published code's nn.init.zeros_)
        with torch.no_grad():
            for m in members:
                self.logvar_layer.weight[m].zero_()
                self.logvar_layer.bias[m].zero_()

    def forward(self, h, draws):
        mu = self.mu_layer(h)
        logvar = self.logvar_layer(h).clamp(-10, 10)
        std = torch.exp(0.5 * logvar)
        z = mu + draws.normal(std) * std if draws is not None else mu
        return z, mu, logvar, std


class VariationalEncoder(nn.Module):
    """x -> (z, mu, logvar, std): a Gaussian per sample instead of a point (P-RMF §3.2). The trunk
    is the published code's two-layer MLP (Dropout -> Linear -> ReLU -> Linear -> ReLU, not MERBench's three)
    for utterance features, or the LSTM encoder for frame features."""

    def __init__(self, n_members, in_size, hidden_size, frames=False):
        super().__init__()
        self.shared = (LSTMEncoder(n_members, in_size, hidden_size) if frames
                       else MLPEncoder(n_members, in_size, hidden_size, n_layers=2))
        self.heads = GaussianHeads(n_members, hidden_size)

    def forward(self, x, lengths, rate, draws):
        return self.heads(self.shared(x, lengths, rate, draws), draws)


class ModalityDecoder(nn.Module):
    """z -> reconstruction of the modality's utterance-level vector (Linear -> ReLU -> Dropout ->
    Linear -> ReLU -> Linear); `recon_mse` gives only its MSE to the target, per member."""

    def __init__(self, n_members, hidden_size, out_size):
        super().__init__()
        self.linear_1 = Linear(n_members, hidden_size, hidden_size)
        self.linear_2 = Linear(n_members, hidden_size, hidden_size)
        self.linear_3 = Linear(n_members, hidden_size, out_size)

    def recon_mse(self, z, target, rate, draws):
        h = dropout(torch.relu(self.linear_1(z)), rate, draws)
        return self.linear_3.recon_mse(torch.relu(self.linear_2(h)), target)
