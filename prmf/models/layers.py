"""Layers with a member axis first: every parameter is [M, ...] and every input [M, B, ...].

A member is one (config, seed, fold) of a batched model; M = 1 is one model. One baddbmm serves
all members, so 135 small models fill a machine like one large one, while each member keeps its
own weights, initial draw, random streams (draws.py) and per-member hyperparameters (a float when all members
share it, else a tensor [M]). `init_member` draws a member's weights exactly as torch's own
nn.Linear / nn.MultiheadAttention / nn.LSTM would, from a given generator, so a seed gives the
same start whether the member trains alone or in a pack.
"""
import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from ..torch_private import lstm_last_hidden


_SHARED = None  # {input key: (input, output)} of the layers fed the same samples for every member, while scoring


@contextmanager
def shared_input_cache():
    """While scoring with fixed weights: a layer whose input is the same for every member (an
    expanded [N, D] tensor) computes it once per input tensor, so robustness scenarios that keep
    a modality's input reuse its first-layer outputs instead of recomputing them."""
    global _SHARED
    _SHARED = {}
    try:
        yield
    finally:
        _SHARED = None


def per_member(rate, x):
    """A per-member value (float, or tensor [M]) shaped to broadcast against x [M, ...], in x's type."""
    return rate if isinstance(rate, float) else rate.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)


def _autocast(*tensors):
    """The tensors in autocast's dtype while it is on (a custom Function's forward runs under it,
    but its backward outside it, so the forward saves what it computed with), else as they are."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) for t in tensors)


class _Linear(torch.autograd.Function):
    """scale * (x [M, B, in] @ w[M, out, in]^T) + b[M, out]. Its own backward gives the weight
    gradient in the weight's layout (autograd's bmm backward gives it transposed: a strided copy
    of every weight gradient per step) and skips the input gradient of a leaf input. `scale`
    carries an input dropout's 1/(1-p), so the wide inputs are not rescaled elementwise. Under
    autocast it computes in autocast's dtype, forward and backward, and returns each gradient in its
    input's dtype (fp32 for the weights)."""

    @staticmethod
    def forward(ctx, x, w, b, scale):
        ctx.dtypes = x.dtype, w.dtype, b.dtype
        x, w, b = _autocast(x, w, b)
        ctx.save_for_backward(x, w)
        ctx.scale = scale
        if isinstance(scale, float):
            return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2), alpha=scale)
        return torch.bmm(x, w.transpose(1, 2)).mul_(scale.view(-1, 1, 1)).add_(b.unsqueeze(1))

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        scale, (dx, dw, db) = ctx.scale, ctx.dtypes
        g = grad if isinstance(scale, float) and scale == 1.0 else grad * per_member(scale, grad)
        g = g.to(w.dtype)  # the forward's dtype (an fp32 per-member scale [M] would promote a bf16 gradient)
        grad_x = torch.bmm(g, w).to(dx) if ctx.needs_input_grad[0] else None
        return grad_x, torch.bmm(g.transpose(1, 2), x).to(dw), grad.sum(1).to(db), None


class _ReconMSE(torch.autograd.Function):
    """mean((h @ w^T + b - x)^2) per member [M]: a decoder's last Linear fused with its MSE, so the
    [M, B, D] reconstruction (D up to 5120) is written once and its gradient is one pass. Under
    autocast the reconstruction is computed in autocast's dtype, its difference to x and the mean
    square in x's (fp32: a bf16 sum over B*D elements would lose the loss's precision)."""

    @staticmethod
    def forward(ctx, h, w, b, x):
        ctx.dtypes = h.dtype, w.dtype, b.dtype
        h, w, b = _autocast(h, w, b)
        diff = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)).to(x.dtype).sub_(x).flatten(1)  # [M, B*D]
        ctx.save_for_backward(h, w, diff)
        with torch.autocast(x.device.type, enabled=False):  # autocast would run vecdot in bf16
            return torch.linalg.vecdot(diff, diff) / diff.shape[1]

    @staticmethod
    def backward(ctx, grad):
        h, w, diff = ctx.saved_tensors
        dh, dw, db = ctx.dtypes
        g = (diff * (2.0 / diff.shape[1]) * grad[:, None]).view(h.shape[0], h.shape[1], -1)  # [M, B, D]
        gw = g.to(w.dtype)  # the matmuls in the forward's dtype, the bias's sum from the fp32 difference
        return torch.bmm(gw, w).to(dh), torch.bmm(gw.transpose(1, 2), h).to(dw), g.sum(1).to(db), None


def dropout_mask(x, rate, draws):
    """Dropout's keep mask of x from every member's own stream (prmf/models/draws.py), or None where
    nothing is dropped: evaluation (draws None), or a rate of 0 for every member, which still takes
    its site so that the draws after it keep their numbers."""
    if draws is None:
        return None
    if isinstance(rate, float) and rate == 0:
        draws.skip()
        return None
    return draws.keep_mask(x, rate)


def dropout(x, rate, draws):
    """Inverted dropout (nn.Dropout's distribution), every member's mask from its own stream."""
    mask = dropout_mask(x, rate, draws)
    return x if mask is None else x * mask * per_member(1.0 / (1.0 - rate), x)


def init_member(module, members, gen):
    """Draw one member's weights into the member slots `members` (none: draw and discard), in the
    order torch's own modules draw them at construction."""
    if hasattr(module, "reset_member"):
        module.reset_member(members, gen)
        return
    for child in module.children():
        init_member(child, members, gen)


def _fill(param, members, value):
    with torch.no_grad():
        for m in members:
            param[m].copy_(value)


class Linear(nn.Module):
    """nn.Linear per member: weight [M, out, in], bias [M, out]."""

    def __init__(self, n_members, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_members, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(n_members, out_features))

    def reset_member(self, members, gen):
        w = torch.empty(self.weight.shape[1:])
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)  # nn.Linear.reset_parameters
        bound = 1 / math.sqrt(w.shape[1])
        _fill(self.weight, members, w)
        _fill(self.bias, members, torch.empty(w.shape[0]).uniform_(-bound, bound, generator=gen))

    def forward(self, x, scale=1.0):
        if x.dim() == 3 and x.stride(0) == 0 and not torch.is_grad_enabled():
            return self._shared(x[0])
        return _Linear.apply(x, self.weight, self.bias, scale)

    def _shared(self, x):
        """[M, N, out] for one input [N, in] of every member: one GEMM against all members' weights
        side by side (all-zero input, a missing modality: the bias alone)."""
        key = (id(self), x.data_ptr(), tuple(x.shape), tuple(x.stride()))
        if _SHARED is not None and key in _SHARED:
            return _SHARED[key][1]
        n_members, out_features = self.weight.shape[:2]
        if not x.any():
            out = self.bias.unsqueeze(1).expand(n_members, len(x), out_features)
        else:
            out = torch.addmm(self.bias.flatten(), x, self.weight.flatten(0, 1).T).view(len(x), n_members, -1).transpose(0, 1)
        if _SHARED is not None:
            _SHARED[key] = (x, out)  # x kept alive: its address cannot be reused by another input meanwhile
        return out

    def recon_mse(self, h, target):
        """This layer's output compared with `target` by MSE, per member [M] (fused)."""
        return _ReconMSE.apply(h, self.weight, self.bias, target)


class LayerNorm(nn.Module):
    def __init__(self, n_members, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_members, dim))
        self.bias = nn.Parameter(torch.zeros(n_members, dim))

    def reset_member(self, members, gen):
        _fill(self.weight, members, torch.ones(self.weight.shape[1:]))
        _fill(self.bias, members, torch.zeros(self.bias.shape[1:]))

    def forward(self, x):
        return torch.addcmul(self.bias.unsqueeze(1), F.layer_norm(x, x.shape[-1:]), self.weight.unsqueeze(1))


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention per member (batch first, one query per sample), its parameters named
    as there. `single_key`: with one key per query the softmax is identically 1, so the output is
    out_proj(v_proj(value)) with attention dropout acting on that weight of 1 per head; q and k
    cannot reach it (their gradient is exactly 0 in torch's module too)."""

    def __init__(self, n_members, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.zeros(n_members, 3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(n_members, 3 * dim))
        self.out_proj = Linear(n_members, dim, dim)

    def reset_member(self, members, gen):
        self.out_proj.reset_member(members, gen)  # drawn at construction, then _reset_parameters:
        w = torch.empty(self.in_proj_weight.shape[1:])
        nn.init.xavier_uniform_(w, generator=gen)
        _fill(self.in_proj_weight, members, w)
        _fill(self.in_proj_bias, members, torch.zeros(w.shape[0]))
        _fill(self.out_proj.bias, members, torch.zeros(w.shape[1]))

    def _proj(self, x, part):
        h = self.in_proj_weight.shape[2]
        return _Linear.apply(x, self.in_proj_weight[:, part * h:(part + 1) * h], self.in_proj_bias[:, part * h:(part + 1) * h], 1.0)

    def single_key(self, value, rate, draws):
        v = self._proj(value, 2)
        if draws is not None:
            heads = self.num_heads
            weight = dropout(v.new_ones(*v.shape[:2], heads, 1), rate, draws)  # the softmax's 1, dropped out
            v = (v.unflatten(-1, (heads, -1)) * weight).flatten(-2)
        return self.out_proj(v)

    def forward(self, query, tokens, pad, rate, draws):
        """query [M, B, H] over tokens [M, B, T, H]; pad [M, B, T] True = ignore (or None)."""
        heads = self.num_heads
        q = self._proj(query, 0).unflatten(-1, (heads, -1))  # [M, B, heads, hd]
        flat = tokens.flatten(1, 2)
        k = self._proj(flat, 1).unflatten(1, tokens.shape[1:3]).unflatten(-1, (heads, -1))  # [M, B, T, heads, hd]
        v = self._proj(flat, 2).unflatten(1, tokens.shape[1:3]).unflatten(-1, (heads, -1))
        scores = torch.einsum("mbnd,mbtnd->mbnt", q, k) / math.sqrt(q.shape[-1])
        if pad is not None:
            scores = scores.masked_fill(pad[:, :, None, :], float("-inf"))
        attn = dropout(F.softmax(scores, dim=-1), rate, draws)
        return self.out_proj(torch.einsum("mbnt,mbtnd->mbnd", attn, v).flatten(-2))


class LSTM(nn.Module):
    """One-layer batch-first nn.LSTM per member (weights [M, 4H, ...]); the members run one after
    another over their own packed sequences, so padding never reaches the state. It calls the
    kernel behind nn.LSTM (prmf/torch_private.py) with each member's weights, which no public call takes
    without a module per member; tests/test_model_components.py pins it to nn.LSTM."""

    def __init__(self, n_members, in_size, hidden_size):
        super().__init__()
        self.weight_ih_l0 = nn.Parameter(torch.zeros(n_members, 4 * hidden_size, in_size))
        self.weight_hh_l0 = nn.Parameter(torch.zeros(n_members, 4 * hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.zeros(n_members, 4 * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.zeros(n_members, 4 * hidden_size))

    def reset_member(self, members, gen):
        bound = 1 / math.sqrt(self.weight_hh_l0.shape[2])  # nn.LSTM.reset_parameters, in its order
        for p in (self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0):
            _fill(p, members, torch.empty(p.shape[1:]).uniform_(-bound, bound, generator=gen))

    def forward(self, x, lengths):
        """The last real frame's hidden state [M, B, H] of x [M, B, T, D] with lengths [M, B]."""
        out = []
        for m in range(x.shape[0]):
            packed = pack_padded_sequence(x[m], lengths[m].clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
            h0 = x.new_zeros(1, x.shape[1], self.weight_hh_l0.shape[2])
            weights = [self.weight_ih_l0[m], self.weight_hh_l0[m], self.bias_ih_l0[m], self.bias_hh_l0[m]]
            h = lstm_last_hidden(packed, h0, weights, self.training)
            out.append(h[0].index_select(0, packed.unsorted_indices))
        return torch.stack(out)
