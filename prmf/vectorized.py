"""Fold-vectorised training: the folds of one trial trained as one batched model.

Why: a P-RMF fold is tiny (an epoch at paper dims is tens of GFLOP), so training the folds one
after another is bound by per-op overhead, small matmuls and per-fold kernel launches. Here every
parameter carries a leading fold dimension [F, ...] and one batched forward/backward (bmm) serves
all running folds, while each fold keeps what makes it a fold: its own batch order (the same
per-fold generator as TrialRunner), AdamW state and learning rate, ReduceLROnPlateau, patience,
best state and randomness (dropout masks are drawn per fold and sample).

`VectorizedRunner` is a drop-in for `prmf.trainer.TrialRunner`: same constructor, `step()`,
`done`, `history`, `folds`, `best_models()`, `finish()`, and a `state_dict()` in TrialRunner's own
format, so a checkpoint of either runner resumes in the other. With dropout off it reproduces
TrialRunner fold by fold up to float noise (tests/test_vectorized.py).

The batched forward below mirrors the nn.Module forwards of prmf/models (parameter names are the
modules' own); only utterance-level features are covered: frame-level (LSTM) trials use
TrialRunner (`supports()`).
"""
import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import modality_dropout_rate
from .models import build_model
from .models.fusion import MISSING_STD, modality_dropout_keep, present_mask
from .models.robust_v2 import builds_proxy_attention
from .trainer import (EVAL_CHUNK, SplitTensors, TrialResult, default_device, load_stopping_state,
                      load_run_state, metrics, run_state, running_score, stopping_state, stratified_folds,
                      update_fold)

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW defaults, as TrialRunner uses them


def supports(cfg, data=None) -> bool:
    """Whether the batched forward covers this trial (utterance-level features only)."""
    return cfg.feat_type == "utt" and (data is None or data.feat_type == "utt")


# ----------------------------------------------------------------------------- batched forward
# Every tensor has the fold dimension first: x [F, B, D], weights [F, out, in].

class BatchedLinear(torch.autograd.Function):
    """scale * x [F, B, in] @ w[F, out, in]^T + b[F, out]: one baddbmm for all folds. Its own backward
    gives the weight gradient in the weight's layout (autograd's baddbmm backward gives it
    transposed, which costs a strided copy of every weight gradient per step); `scale` carries
    the 1/(1-p) of an input dropout, so the wide inputs are not rescaled elementwise."""

    @staticmethod
    def forward(ctx, x, w, b, scale=1.0):
        ctx.save_for_backward(x, w)
        ctx.scale = scale
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2), alpha=scale)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        g = grad if ctx.scale == 1.0 else grad * ctx.scale
        grad_x = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
        return grad_x, torch.bmm(g.transpose(1, 2), x), grad.sum(1), None


class ReconMSE(torch.autograd.Function):
    """mean((h @ w^T + b - x)^2) per fold [F]: ModalityDecoder's last Linear fused with its MSE, so
    the [F, B, D] reconstruction (D up to 5120) is written once and its gradient is one pass."""

    @staticmethod
    def forward(ctx, h, w, b, x):
        diff = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)).sub_(x).flatten(1)  # [F, B*D]
        ctx.save_for_backward(h, w, diff)
        return torch.linalg.vecdot(diff, diff) / diff.shape[1]

    @staticmethod
    def backward(ctx, grad):
        h, w, diff = ctx.saved_tensors
        g = (diff * (2.0 / diff.shape[1]) * grad[:, None]).view(h.shape[0], h.shape[1], -1)  # [F, B, D]
        return torch.bmm(g, w), torch.bmm(g.transpose(1, 2), h), g.sum(1), None


def linear(x, p, name, scale=1.0):
    return BatchedLinear.apply(x, p[name + ".weight"], p[name + ".bias"], scale)


def keep_mask(x, rate):
    """Dropout's keep mask (probability 1 - rate) from 16 random bits per element: half the
    generator work of a float per element, p resolved to 2^-16."""
    bits = torch.empty(x.numel() // 4 + 1, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
    return bits.view(torch.int16)[:x.numel()].view(x.shape) < round((1 - rate) * 65536) - 32768


def dropout(x, rate, train):
    """Inverted dropout (nn.Dropout's distribution); the mask is drawn for every fold at once."""
    if not train or rate == 0:
        return x
    return x * keep_mask(x, rate) * (1.0 / (1.0 - rate))


def layer_norm(x, p, name):
    normed = F.layer_norm(x, x.shape[-1:])
    return torch.addcmul(p[name + ".bias"].unsqueeze(1), normed, p[name + ".weight"].unsqueeze(1))


def mlp_trunk(x, p, names, rate, train):
    """Dropout -> (Linear -> ReLU) per name (dropout's 1/(1-p) applied after the first matmul)."""
    if train and rate > 0:
        h = torch.relu(linear(x * keep_mask(x, rate), p, names[0], 1.0 / (1.0 - rate)))
    else:
        h = torch.relu(linear(x, p, names[0]))
    for name in names[1:]:
        h = torch.relu(linear(h, p, name))
    return h


def mlp_encoder(x, p, name, rate, train):
    """MLPEncoder (MERBench's): Dropout -> three Linear+ReLU layers linear_1..3."""
    return mlp_trunk(x, p, [f"{name}.linear_{i}" for i in (1, 2, 3)], rate, train)


def gaussian_heads(h, p, name, train):
    """_GaussianHeads: (z, mu, logvar, std), z = mu + eps * std while training."""
    mu = linear(h, p, name + ".mu_layer")
    logvar = linear(h, p, name + ".logvar_layer").clamp(-10, 10)
    std = torch.exp(0.5 * logvar)
    z = mu + torch.randn_like(std) * std if train else mu
    return z, mu, logvar, std


def recon_mse(z, x, p, name, rate, train):
    """ModalityDecoder (Linear -> ReLU -> Dropout -> Linear -> ReLU -> Linear) and its MSE to x, per fold."""
    h = dropout(torch.relu(linear(z, p, name + ".decoder.0")), rate, train)
    h = torch.relu(linear(h, p, name + ".decoder.3"))
    return ReconMSE.apply(h, p[name + ".decoder.5.weight"], p[name + ".decoder.5.bias"], x)


def attention_fusion(hiddens, p, rate, train, softmax):
    """AttentionFusion: weights from an MLP over the concatenated hiddens (raw scores in MERBench)."""
    a = mlp_encoder(torch.cat(hiddens, dim=-1), p, "fusion.attention_mlp", rate, train)
    weights = linear(a, p, "fusion.fc_att")
    if softmax:
        weights = F.softmax(weights, dim=-1)
    return (torch.stack(hiddens, dim=2) * weights.unsqueeze(-1)).sum(dim=2), weights


def uncertainty_fusion(mus, stds, present, temperature):
    """UncertaintyWeightedFusion, with the missing-modality mask when `present` is given."""
    u = torch.stack([s.mean(dim=-1) for s in stds], dim=-1)  # [F, B, 3]
    logits = (1.0 / (u + 1e-6)) / temperature
    if present is None:
        weights = F.softmax(logits, dim=-1)
    else:
        any_present = present.any(dim=-1, keepdim=True)
        weights = F.softmax(logits.masked_fill(~present & any_present, float("-inf")), dim=-1) * any_present
    return (torch.stack(mus, dim=2) * weights.unsqueeze(-1)).sum(dim=2), weights


def proxy_attention(proxy, mus, weights, present, p, cfg, train):
    """ProxyCrossModalAttention. per_modality: each MultiheadAttention has a single key, so its
    softmax is exactly 1 and it reduces to out_proj(v_proj(mu)), with attention dropout acting on
    that weight of 1 per head; q and k do not reach the output (their gradient is exactly 0 in the
    module too). joint: real attention over the three modality tokens, absent ones masked."""
    h, heads = cfg.hidden_dim, cfg.num_attention_heads
    rate = cfg.dropout if train else 0.0
    fb = proxy.shape[:2]
    if cfg.proxy_attention == "per_modality":
        outs = []
        for m, mu in enumerate(mus):
            w, b = p[f"proxy_attention.attn.{m}.in_proj_weight"], p[f"proxy_attention.attn.{m}.in_proj_bias"]
            v = torch.baddbmm(b[:, None, 2 * h:], mu, w[:, 2 * h:].transpose(1, 2))
            if rate > 0:
                v = (v.unflatten(-1, (heads, h // heads)) * dropout(v.new_ones(*fb, heads, 1), rate, True)).flatten(-2)
            outs.append(linear(v, p, f"proxy_attention.attn.{m}.out_proj"))
        attended = (torch.stack(outs, dim=2) * weights.unsqueeze(-1)).sum(dim=2)
    else:
        w, b = p["proxy_attention.attn.0.in_proj_weight"], p["proxy_attention.attn.0.in_proj_bias"]
        tokens = torch.stack(mus, dim=2).flatten(1, 2)  # [F, B*3, H]
        q = torch.baddbmm(b[:, None, :h], proxy, w[:, :h].transpose(1, 2)).unflatten(-1, (heads, h // heads))
        k = torch.baddbmm(b[:, None, h:2 * h], tokens, w[:, h:2 * h].transpose(1, 2)).unflatten(1, (-1, 3))
        v = torch.baddbmm(b[:, None, 2 * h:], tokens, w[:, 2 * h:].transpose(1, 2)).unflatten(1, (-1, 3))
        k, v = k.unflatten(-1, (heads, h // heads)), v.unflatten(-1, (heads, h // heads))  # [F, B, 3, heads, hd]
        scores = torch.einsum("fbnd,fbtnd->fbnt", q, k) / math.sqrt(h // heads)
        if present is not None:
            pad = ~present & present.any(dim=-1, keepdim=True)  # all absent: attend to all
            scores = scores.masked_fill(pad[:, :, None, :], float("-inf"))
        attn = dropout(F.softmax(scores, dim=-1), rate, train)
        attended = linear(torch.einsum("fbnt,fbtnd->fbnd", attn, v).flatten(-2), p, "proxy_attention.attn.0.out_proj")
    fused = layer_norm(proxy + attended, p, "proxy_attention.norm")
    ffn = dropout(F.gelu(linear(fused, p, "proxy_attention.ffn.0")), rate, train)
    return fused + dropout(linear(ffn, p, "proxy_attention.ffn.3"), rate, train)


def vae_interloss(mus, logvars, recon_mses, cfg):
    """VAELossComputer.compute per fold: [F]."""
    kl = sum((-0.5 * (1 + lv - mu.pow(2) - lv.exp()).sum(dim=-1)).mean(dim=-1) for mu, lv in zip(mus, logvars)) / 3
    recon = sum(recon_mses) / 3

    def kl2(m1, l1, m2, l2):
        return 0.5 * (l2 - l1 + (l1.exp() + (m1 - m2).pow(2)) / l2.exp() - 1).mean(dim=(-2, -1))

    (ma, mt, mv), (la, lt, lv) = mus, logvars
    cross = (kl2(ma, la, mt, lt) + kl2(ma, la, mv, lv) + kl2(mt, lt, mv, lv)) / 3
    return cfg.kl_weight * kl + cfg.recon_weight * recon + cfg.cross_kl_weight * cross


def mask(hiddens, keep):
    return hiddens if keep is None else [hd * keep[..., m:m + 1] for m, hd in enumerate(hiddens)]


def forward(p, cfg, xs, present, train, p_modality=0.0):
    """(emos_out [F, B, C], vals_out [F, B], interloss [F]) of every fold at once.

    xs: the three inputs [F, B, D]; present: [F, B, 3] bool (all-zero inputs absent), used under
    fidelity 'paper' only; p_modality: this epoch's modality-dropout rate (0 = off).
    """
    rate = cfg.dropout
    fb = xs[0].shape[:2]
    keep = None
    if train and p_modality > 0:
        keep = modality_dropout_keep(fb.numel(), p_modality, xs[0].device).view(*fb, 3)
    zero = xs[0].new_zeros(fb[0])
    if cfg.fidelity != "paper":
        present = None  # the seeds' code and MERBench never mask all-zero inputs
    elif keep is not None:
        present = present & keep

    def heads(fused):
        features = dropout(fused, rate if cfg.model != "attention" else 0.0, train)  # MERBench: no feat_dropout
        return linear(features, p, "fc_out_1"), linear(features, p, "fc_out_2").squeeze(-1)

    if cfg.model != "attention_robust_v2" or not cfg.use_vae:  # attention, attention_robust, forward_original
        hiddens = mask([mlp_encoder(x, p, f"encoders.{m}", rate, train) for m, x in enumerate(xs)],
                       keep if present is None else present)
        fused, weights = attention_fusion(hiddens, p, rate, train, softmax=cfg.model != "attention")
        if cfg.model == "attention_robust_v2" and builds_proxy_attention(cfg):
            fused = proxy_attention(fused, hiddens, weights, present, p, cfg, train)
        return (*heads(fused), zero)
    encoded = [gaussian_heads(mlp_trunk(x, p, [f"encoders.{m}.shared.0", f"encoders.{m}.shared.2"], rate, train),
                              p, f"encoders.{m}.heads", train) for m, x in enumerate(xs)]
    zs, mus, logvars, stds = map(list, zip(*encoded))
    if present is None:  # seeds_code: modality dropout reaches z (the decoders) only
        zs_d, mus_d, stds_d = mask(zs, keep), mus, stds
    else:
        cols = [present[..., m:m + 1] for m in range(3)]
        zs_d = [z * c for z, c in zip(zs, cols)]
        mus_d = [mu * c for mu, c in zip(mus, cols)]
        stds_d = [torch.where(c, s, MISSING_STD) for s, c in zip(stds, cols)]
    proxy, weights = uncertainty_fusion(mus_d, stds_d, present, cfg.fusion_temperature)
    fused = proxy_attention(proxy, mus_d, weights, present, p, cfg, train) if cfg.use_proxy_attention else proxy
    emos_out, vals_out = heads(fused)
    if not train:
        return emos_out, vals_out, zero
    recons = [recon_mse(z, x, p, f"decoders.{m}", rate, train) for m, (z, x) in enumerate(zip(zs_d, xs))]
    return emos_out, vals_out, vae_interloss(mus, logvars, recons, cfg)


# ----------------------------------------------------------------------------- the runner

@dataclass
class VFold:
    """A fold's bookkeeping (TrialRunner's Fold without the module: its tensors live in the stacks)."""
    index: int
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    scheduler: object  # ReduceLROnPlateau over `lr_holder`
    lr_holder: torch.optim.Optimizer  # carries this fold's lr for the scheduler
    generator: torch.Generator  # batch order of this fold
    best_metric: float = -math.inf
    best_epoch: int = 0
    best_val: dict | None = None
    patience_ref: float = -math.inf
    bad_epochs: int = 0
    stopped: bool = False
    epochs_run: int = 0
    diverged_epoch: int = 0

    @property
    def lr(self):
        return self.lr_holder.param_groups[0]["lr"]


class VectorizedRunner:
    """TrialRunner's contract, with the folds' parameters stacked and trained as one model."""

    def __init__(self, cfg, data, seed=0, n_folds=5, device=None):
        if not supports(cfg, data):
            raise ValueError("VectorizedRunner covers utterance-level features only; use TrialRunner")
        self.cfg, self.data, self.seed, self.n_folds = cfg, data, seed, n_folds
        self.device = torch.device(device) if device else default_device()
        self.splits = {name: SplitTensors.from_split(sp, self.device) for name, sp in data.splits.items()}
        self.present = {name: present_mask(sp.inputs) for name, sp in self.splits.items()}
        train = self.splits["train"]
        self.has_val = ~torch.isnan(train.vals)
        self.vals0 = torch.nan_to_num(train.vals)  # NaN-free so masked entries give no NaN gradients
        self.epoch = 0
        self.history = []
        self.train_seconds = 0.0
        torch.manual_seed(seed)  # the same models as TrialRunner: built in fold order from this seed
        self.folds, models = [], []
        for k, (tr, va) in enumerate(stratified_folds(data.splits["train"].emos, n_folds, seed)):
            models.append(build_model(cfg, data.dims, len(data.classes)).to(self.device))
            holder = torch.optim.SGD([torch.zeros(())], lr=cfg.lr)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(holder, mode="max", factor=0.5, patience=10, min_lr=1e-6)
            gen = torch.Generator(device="cpu").manual_seed(seed * 1000 + k)
            self.folds.append(VFold(k, torch.as_tensor(tr, device=self.device), torch.as_tensor(va, device=self.device),
                                    sched, holder, gen))
        self.template = models[0]  # module skeleton for best_models()
        self.uses_modality_dropout = type(self.template).uses_modality_dropout and cfg.use_modality_dropout
        self.names = [n for n, _ in self.template.named_parameters()]  # the modules' order: optimizer indices
        self.params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_()
                       for n in self.names}
        self.exp_avg = {n: torch.zeros_like(t) for n, t in self.params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(t) for n, t in self.params.items()}
        self.steps = torch.zeros(n_folds, len(self.names), device=self.device)  # AdamW's per-param step, float32
        self._m_views = [[self.exp_avg[n][k] for n in self.names] for k in range(n_folds)]  # per fold, for the kernel
        self._v_views = [[self.exp_avg_sq[n][k] for n in self.names] for k in range(n_folds)]
        self._step_views = [list(self.steps[k].unbind()) for k in range(n_folds)]
        self.best = {n: t.detach().clone() for n, t in self.params.items()}
        adamw = torch.optim.AdamW(self.template.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self._param_group = adamw.state_dict()["param_groups"][0]  # for TrialRunner-format checkpoints

    @property
    def done(self):
        return self.epoch >= self.cfg.epochs or all(f.stopped for f in self.folds)

    # --- training

    @torch.no_grad()
    def _adamw(self, members, work_views):
        """AdamW steps of folds `members` [(fold index, position in work)]: torch.optim.AdamW
        (fused=True)'s own kernel on views of the stacks, one call per distinct learning rate."""
        self.steps[[k for k, _ in members]] += 1
        grads = list(zip(*[t.grad.unbind(0) for t in work_views["tensors"]]))  # [position][param]
        by_lr = {}
        for k, pos in members:
            by_lr.setdefault(self.folds[k].lr, []).append((k, pos))
        for lr, group in by_lr.items():
            lists = [[], [], [], [], []]  # params, grads, exp_avgs, exp_avg_sqs, steps of every fold in the group
            for k, pos in group:
                for out, views in zip(lists, (work_views["params"][pos], grads[pos], self._m_views[k], self._v_views[k],
                                              self._step_views[k])):
                    out.extend(views)
            params, grad_list, exp_avgs, exp_avg_sqs, steps = lists
            torch._fused_adamw_(params, grad_list, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=lr,
                                beta1=BETAS[0], beta2=BETAS[1], weight_decay=self.cfg.weight_decay, eps=EPS,
                                maximize=False, grad_scale=None, found_inf=None)

    def _loss(self, p, idx, p_modality):
        """Per-fold training loss [F] on batch indices idx [F, B] (TrialRunner's loss, per fold)."""
        cfg, train = self.cfg, self.splits["train"]
        xs = [x[idx] for x in train.inputs]
        emos_out, vals_out, interloss = forward(p, cfg, xs, self.present["train"][idx], True, p_modality)
        ce = F.cross_entropy(emos_out.flatten(0, 1), train.emos[idx].flatten(), reduction="none").view(idx.shape)
        has_val = self.has_val[idx]
        val_mse = ((vals_out - self.vals0[idx]).pow(2) * has_val).sum(1) / has_val.sum(1).clamp(min=1)
        return interloss + cfg.emo_weight * ce.mean(1) + cfg.val_weight * val_mse  # no valence in a batch: 0, as there

    def _train_epoch(self, run, work):
        """One epoch of the running folds `run`; work[n] holds their parameters [len(run), ...]."""
        cfg, bs = self.cfg, self.cfg.batch_size
        p_mod = modality_dropout_rate(cfg, self.epoch + 1) if self.uses_modality_dropout else 0.0
        self.p_modality = p_mod
        orders = [f.train_idx[torch.randperm(len(f.train_idx), generator=f.generator).to(self.device)] for f in run]
        totals = torch.zeros(len(run), dtype=torch.float64, device=self.device)
        tensors = [work[n] for n in self.names]
        views = {"tensors": tensors, "params": [[t[i] for t in tensors] for i in range(len(run))]}
        for start in range(0, max(len(o) for o in orders), bs):
            chunks = [o[start:start + bs] for o in orders]
            groups = {}  # batch size -> positions: folds differ by a sample or so, so the last batch differs
            for i, c in enumerate(chunks):
                if len(c):
                    groups.setdefault(len(c), []).append(i)
            for size, pos in groups.items():
                idx = torch.stack([chunks[i] for i in pos])
                if len(pos) == len(run):
                    p = work
                else:
                    sel = torch.tensor(pos, device=self.device)
                    p = {n: t.index_select(0, sel) for n, t in work.items()}
                loss = self._loss(p, idx, p_mod)
                loss.sum().backward()
                if cfg.grad_clip > 0:
                    torch._foreach_clamp_min_([t.grad for t in tensors], -cfg.grad_clip)
                    torch._foreach_clamp_max_([t.grad for t in tensors], cfg.grad_clip)
                self._adamw([(run[i].index, i) for i in pos], views)
                for t in tensors:
                    t.grad = None
                totals[pos] += loss.detach().double() * size
        return (totals / torch.tensor([max(len(o), 1) for o in orders], device=self.device)).tolist()

    @torch.no_grad()
    def _predict(self, p, split, idxs):
        """Eval-mode logits [n_k, C] and valence [n_k] per fold for index lists idxs (padded to one batch)."""
        data = self.splits[split]
        n = max(len(i) for i in idxs)
        idx = torch.stack([torch.cat([i, i[:1].expand(n - len(i))]) for i in idxs])  # pad with a real sample
        logits, vals = [], []
        for start in range(0, n, max(1, EVAL_CHUNK // len(idxs))):
            sub = idx[:, start:start + max(1, EVAL_CHUNK // len(idxs))]
            present = self.present[split][sub]
            emos_out, vals_out, _ = forward(p, self.cfg, [x[sub] for x in data.inputs], present, False)
            logits.append(emos_out.float().cpu())
            vals.append(vals_out.float().cpu())
        logits, vals = torch.cat(logits, 1), torch.cat(vals, 1)
        return [(logits[j, :len(i)].numpy(), vals[j, :len(i)].numpy()) for j, i in enumerate(idxs)]

    def _validate(self, run, work, train_losses):
        preds = self._predict(work, "train", [f.val_idx for f in run])
        scores = []
        for pos, (f, (logits, vals_pred), train_loss) in enumerate(zip(run, preds, train_losses)):
            idx = f.val_idx.cpu().numpy()
            m = metrics(logits, vals_pred, self.data.splits["train"].emos[idx], self.data.splits["train"].vals[idx])
            epoch = self.epoch + 1

            @torch.no_grad()
            def save_best(f=f, pos=pos):
                for n in self.names:
                    self.best[n][f.index].copy_(work[n][pos])

            update_fold(f, m, epoch, self.cfg, logits, vals_pred, save_best)
            self.history.append({"fold": f.index, "epoch": epoch, "train_loss": train_loss,
                                 **{f"val_{k}": v for k, v in m.items()}, "lr": f.lr, "stopped": f.stopped,
                                 "modality_dropout_p": self.p_modality})
            scores.append(m["emoval"])
        return scores

    def step(self) -> float:
        """One epoch of every running fold; returns the mean validation emoval over them."""
        t0 = time.perf_counter()
        run = [f for f in self.folds if not f.stopped]
        if len(run) == len(self.folds):
            work = self.params
        else:  # stopped folds leave the batch: train a compact copy of the running ones, then put it back
            sel = torch.tensor([f.index for f in run], device=self.device)
            work = {n: t.detach().index_select(0, sel).requires_grad_() for n, t in self.params.items()}
        scores = self._validate(run, work, self._train_epoch(run, work))
        if work is not self.params:
            with torch.no_grad():
                for n, t in self.params.items():
                    t.index_copy_(0, sel, work[n])
        self.epoch += 1
        self.train_seconds += time.perf_counter() - t0
        return running_score(scores)

    # --- TrialRunner's interface for results and checkpoints

    def fold_state(self, k, stack):
        return {n: stack[n][k].detach() for n in self.names}

    def best_models(self):
        """The fold models at their best epochs, as plain nn.Modules (copies)."""
        out = []
        for f in self.folds:
            m = copy.deepcopy(self.template)
            m.load_state_dict(self.fold_state(f.index, self.best if f.best_epoch else self.params))
            out.append(m.eval())
        return out

    def finish(self, scenarios=None):
        return TrialResult.build(self, scenarios or {})

    def state_dict(self):
        """TrialRunner's checkpoint format (per-fold model, AdamW and scheduler state), so either runner resumes it."""
        folds = []
        for f in self.folds:
            k = f.index
            opt_state = {} if self.steps[k, 0] == 0 else {
                i: {"step": self.steps[k, i].clone(), "exp_avg": self.exp_avg[n][k],
                    "exp_avg_sq": self.exp_avg_sq[n][k]} for i, n in enumerate(self.names)}
            group = {**self._param_group, "lr": f.lr}
            folds.append(stopping_state(f) | {
                "best_state": self.fold_state(k, self.best) if f.best_epoch else None,
                "model": self.fold_state(k, self.params), "optimizer": {"state": opt_state, "param_groups": [group]},
                "scheduler": f.scheduler.state_dict(), "generator": f.generator.get_state()})
        return {**run_state(self), "folds": folds}

    @torch.no_grad()
    def load_state_dict(self, state):
        load_run_state(self, state)
        for f, s in zip(self.folds, state["folds"]):
            k = f.index
            for n in self.names:
                self.params[n][k].copy_(s["model"][n])
                if s["best_state"] is not None:
                    self.best[n][k].copy_(s["best_state"][n])
            opt = s["optimizer"]
            for i, n in enumerate(self.names):
                st = opt["state"].get(i)
                self.exp_avg[n][k].copy_(st["exp_avg"]) if st else self.exp_avg[n][k].zero_()
                self.exp_avg_sq[n][k].copy_(st["exp_avg_sq"]) if st else self.exp_avg_sq[n][k].zero_()
                self.steps[k, i] = float(st["step"]) if st else 0.0
            f.lr_holder.param_groups[0]["lr"] = opt["param_groups"][0]["lr"]
            f.scheduler.load_state_dict(s["scheduler"])
            f.generator.set_state(s["generator"])
            load_stopping_state(f, s)
