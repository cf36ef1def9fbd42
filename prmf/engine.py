"""The one training engine: every member (config, seed, fold) of a pack trained as one batched model.

A trial is one (config, seed) over its folds (docs/MODEL.md); a pack is one or more trials that share
an architecture (grid points and seeds differ only in loss weights, temperatures, dropout rates,
optimiser, learning rate and its schedule, weight decay: config.MEMBER_KEYS), so their members'
matmuls run as one. Each member keeps what makes it a fold of its trial: its batch order (a
generator seeded by seed and fold), initial weights (models.build_model), Adam/AdamW state and
learning rate, its schedule (constant or ReduceLROnPlateau), patience, best state and its random
streams: every draw of training (dropout masks, modality dropout, the VAE's noise) comes from a
counter-based stream keyed by the member's (seed, fold), the epoch and the batch
(prmf/models/draws.py), so a trial's numbers depend on its config, seed and data only, never on its
pack-mates, its place in the pack or what they do. The engine owns the schedule: epochs, patience,
the learning rate and the modality-dropout rate per member and epoch (models receive it per step).
A member that stops (patience, divergence, pruning) leaves the batch and costs nothing more.
`state_dict()` checkpoints the pack between epochs (format version CHECKPOINT_VERSION). The pack's
`precision` (prmf/precision.py) sets the arithmetic of its forwards (bf16 autocast) or matmuls (TF32);
weights, gradients, optimiser moments and best states stay in the engine's dtype.
"""
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .compat import CHECKPOINT_VERSION, with_later_keys
from .config import pack_key
from .evaluation import SplitTensors, metrics, predict, score
from .models import build_model
from .models.draws import Draws, member_key, step_counter
from .optim import StackedAdam
from .precision import autocast, check as check_precision, matmuls
from .schedules import SCHEDULES, modality_dropout_rate

STOPPING_FIELDS = ("best_metric", "best_epoch", "best_val", "patience_ref", "bad_epochs", "stopped", "epochs_run",
                   "diverged_epoch", "pruned")


class CheckpointError(ValueError):
    """A checkpoint this engine cannot continue from (another version, or another pack)."""


def default_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def stratified_folds(emos: np.ndarray, n_folds: int, seed: int):
    """Seeded, class-stratified folds (MERBench's are unseeded chunks of a shuffle)."""
    from sklearn.model_selection import StratifiedKFold
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in splitter.split(np.zeros(len(emos)), emos)]


@dataclass
class Member:
    index: int  # position in engine.members
    trial: int  # index of its (config, seed) in engine.trials
    cfg: object
    seed: int
    fold: int
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    scheduler: object  # schedules.Plateau or Constant: this member's learning rate and its schedule (cfg.lr_schedule)
    generator: torch.Generator  # batch order
    key: int = 0  # its random streams (draws.member_key of seed and fold)
    best_metric: float = -math.inf
    best_epoch: int = 0
    best_val: dict | None = None  # metrics, logits and valence predictions at the best epoch
    patience_ref: float = -math.inf
    bad_epochs: int = 0
    stopped: bool = False
    epochs_run: int = 0
    diverged_epoch: int = 0  # the epoch its loss or validation went non-finite (0: never)
    pruned: bool = False

    @property
    def lr(self):
        return self.scheduler.lr


def update_member(m, result, epoch, logits, vals_pred, save_best):
    """After a member's validation: LR schedule, best epoch (argmax of emoval; `save_best()` keeps the
    weights) and patience, which counts only gains above min_delta. A member whose outputs or metrics
    are not finite (its loss blew up: NaN weights) stops at once, marked diverged."""
    if not (all(math.isfinite(v) for k, v in result.items() if k != "val_mse") and np.isfinite(logits).all()
            and np.isfinite(vals_pred).all()):
        m.diverged_epoch, m.stopped, m.epochs_run = epoch, True, epoch
        return
    m.scheduler.step(result["emoval"])
    if result["emoval"] > m.best_metric:
        m.best_metric, m.best_epoch = result["emoval"], epoch
        save_best()
        m.best_val = {"metrics": result, "logits": torch.from_numpy(logits.copy()), "vals": torch.from_numpy(vals_pred.copy())}
    if result["emoval"] > m.patience_ref + m.cfg.min_delta:
        m.patience_ref, m.bad_epochs = result["emoval"], 0
    else:
        m.bad_epochs += 1
        m.stopped = m.bad_epochs >= m.cfg.patience
    m.epochs_run = epoch


def _member_values(values, device, dtype=torch.float64):
    """A per-member value: a float when all members have the same (the fast path), else a tensor [M]
    (float64 by default: exact, so a member's draws compare against the same threshold as alone)."""
    if all(v == values[0] for v in values):
        return float(values[0])
    return torch.tensor(values, dtype=dtype, device=device)


class Engine:
    """Trains the members of `trials` [(cfg, seed)] over n_folds folds, epoch by epoch."""

    def __init__(self, trials, data, n_folds=5, device=None, dtype=torch.float32):
        if len({pack_key(cfg) for cfg, _ in trials}) > 1:
            raise ValueError("the trials of a pack must share every config key but config.MEMBER_KEYS")
        self.trials, self.data, self.n_folds = list(trials), data, n_folds
        self.device = torch.device(device) if device else default_device()
        self.precision = trials[0][0].precision  # one per pack (not a member key)
        check_precision(self.precision, self.device)  # a ConfigError (ValueError) before any work
        self.splits = {name: SplitTensors.from_split(sp, self.device, dtype) for name, sp in data.splits.items()}
        train = self.splits["train"]
        self.has_val = ~torch.isnan(train.vals)
        self.vals0 = torch.nan_to_num(train.vals)  # NaN-free, so masked entries give no NaN gradients
        self.epoch, self.history, self.train_seconds = 0, [], 0.0
        self.max_epochs = max(cfg.epochs for cfg, _ in trials)
        self.members, folds_of = [], {}
        for t, (cfg, seed) in enumerate(self.trials):
            folds = folds_of.setdefault(seed, stratified_folds(data.splits["train"].emos, n_folds, seed))
            for k, (tr, va) in enumerate(folds):
                self.members.append(Member(len(self.members), t, cfg, seed, k, torch.as_tensor(tr, device=self.device),
                                           torch.as_tensor(va, device=self.device), SCHEDULES[cfg.lr_schedule](cfg.lr),
                                           torch.Generator().manual_seed(seed * 1000 + k), member_key(seed, k)))
        self.model = build_model(trials[0][0], data.dims, len(data.classes), [m.cfg for m in self.members],
                                 [(m.seed, m.fold) for m in self.members]).to(self.device, dtype)
        self.live = [m.index for m in self.members]  # the members in the model, in its order
        self.optimizer = StackedAdam(self.model.parameters())
        self.best = {n: p.detach().clone() for n, p in self.model.named_parameters()}  # every member's best state

    @property
    def done(self):
        return self.epoch >= self.max_epochs or not self.live

    def running(self, trial):
        return sum(1 for i in self.live if self.members[i].trial == trial)

    # --- training

    def _loss(self, call, idx, modality_p, emo_w, val_w):
        """Per-member training loss [M] on batch indices idx [M, B]."""
        train = self.splits["train"]
        xs, ns = train.batch(idx)
        with autocast(self.precision, self.device):  # forward and loss; the caller's backward runs outside it
            _, emos_out, vals_out, interloss = call(xs, ns, modality_p)
            ce = F.cross_entropy(emos_out.flatten(0, 1), train.emos[idx].flatten(), reduction="none").view(idx.shape)
            has_val = self.has_val[idx]
            val_mse = ((vals_out - self.vals0[idx]).pow(2) * has_val).sum(1) / has_val.sum(1).clamp(min=1)
            return interloss + emo_w * ce.mean(1) + val_w * val_mse  # no valence in a batch: 0

    def _train_epoch(self, live, modality_p, epoch, batches=None):
        """One epoch of `live` (or its first `batches` batches); each member's mean training loss.
        Batch j of the epoch draws from every member's stream at step (epoch, j)."""
        model, bs, grad_clip = self.model, self.trials[0][0].batch_size, self.trials[0][0].grad_clip
        model.train()
        device = self.device
        orders = [m.train_idx[torch.randperm(len(m.train_idx), generator=m.generator).to(device)] for m in live]
        p_all = _member_values(modality_p, device)
        emo_all = _member_values([m.cfg.emo_weight for m in live], device, self.vals0.dtype)
        val_all = _member_values([m.cfg.val_weight for m in live], device, self.vals0.dtype)
        keys = torch.tensor([m.key for m in live], dtype=torch.int64, device=device)
        hyper = [(m.cfg.optimizer, m.lr, m.cfg.weight_decay) for m in live]
        params = list(model.parameters())
        totals = torch.zeros(len(live), dtype=torch.float64, device=device)
        for batch, start in enumerate(range(0, max(len(o) for o in orders), bs)[:batches]):
            chunks = [o[start:start + bs] for o in orders]
            step = step_counter(epoch, batch)
            groups = {}  # batch size -> positions: folds differ by a sample or so, so their last batches differ
            for i, c in enumerate(chunks):
                if len(c):
                    groups.setdefault(len(c), []).append(i)
            for size, pos in groups.items():
                idx = torch.stack([chunks[i] for i in pos])
                if len(pos) == len(live):
                    draws = Draws(keys, step)
                    loss = self._loss(lambda xs, ns, p: model(xs, ns, p, draws), idx, p_all, emo_all, val_all)
                else:  # some members only: the others' parameters and values left out
                    sub = torch.tensor(pos, device=device)
                    sel = {n: t.index_select(0, sub) for n, t in [*model.named_parameters(), *model.named_buffers()]}
                    draws = Draws(keys, step).subset(sub)

                    def call(xs, ns, p, sel=sel, draws=draws):
                        return torch.func.functional_call(model, sel, (xs, ns, p, draws))
                    pick = [modality_p[i] for i in pos]
                    loss = self._loss(call, idx, _member_values(pick, device), _pick(emo_all, sub), _pick(val_all, sub))
                loss.sum().backward()
                if grad_clip > 0:  # MERBench's clip_grad_value_: each gradient element into [-c, c], in one pass
                    for p in params:  # (clip_grad_value_ makes two: clamp_min_, then clamp_max_)
                        p.grad.clamp_(-grad_clip, grad_clip)
                self.optimizer.step(pos, hyper)
                for p in params:
                    p.grad = None
                totals[pos] += loss.detach().double() * size
        return (totals / torch.tensor([max(len(o), 1) for o in orders], device=device)).tolist()

    def _validate(self, live, losses, epoch, modality_p):
        n = max(len(m.val_idx) for m in live)
        idx = torch.stack([torch.cat([m.val_idx, m.val_idx[:1].expand(n - len(m.val_idx))]) for m in live])  # padded
        train = self.splits["train"]
        logits, vals = predict(self.model, train.inputs, train.lengths, idx, self.precision)
        emos, true_vals = self.data.splits["train"].emos, self.data.splits["train"].vals
        params = dict(self.model.named_parameters())
        scores = []
        for pos, m in enumerate(live):
            k = len(m.val_idx)
            rows = m.val_idx.cpu().numpy()
            result = metrics(logits[pos, :k], vals[pos, :k], emos[rows], true_vals[rows])

            @torch.no_grad()
            def save_best(pos=pos, m=m):
                for name, p in params.items():
                    self.best[name][m.index].copy_(p[pos])

            update_member(m, result, epoch, logits[pos, :k], vals[pos, :k], save_best)
            self.history.append({"trial": m.trial, "fold": m.fold, "epoch": epoch, "train_loss": losses[pos],
                                 **{f"val_{k}": v for k, v in result.items()}, "lr": m.lr, "stopped": m.stopped,
                                 "modality_dropout_p": modality_p[pos]})
            scores.append(result["emoval"])
        return scores

    def step(self) -> dict:
        """One epoch of every live member; returns {trial: mean validation emoval of its members
        that ran this epoch} (diverged ones left out; NaN if all diverged)."""
        t0 = time.perf_counter()
        epoch = self.epoch + 1
        live = [self.members[i] for i in self.live]
        modality_p = self._modality_p(live, epoch)
        with matmuls(self.precision, self.device):
            losses = self._train_epoch(live, modality_p, epoch)
            results = self._validate(live, losses, epoch, modality_p)
        self.epoch = epoch
        self._leave([m.index for m in live if m.stopped or m.epochs_run >= m.cfg.epochs])
        self.train_seconds += time.perf_counter() - t0
        scores = {}
        for m, result in zip(live, results):
            scores.setdefault(m.trial, []).append(result)
        return {t: _mean_finite(s) for t, s in scores.items()}

    def _modality_p(self, live, epoch):
        uses = self.model.uses_modality_dropout
        return [modality_dropout_rate(m.cfg, epoch) if uses and m.cfg.use_modality_dropout else 0.0 for m in live]

    def time_steps(self, steps, warmup=1) -> float:
        """Seconds per training step of every member (the mean of `steps` after `warmup` untimed
        ones; no validation): what `--pack auto` measures (sweeps/pack_choice.py). It trains the
        members, so the engine is for measuring only."""
        live = [self.members[i] for i in self.live]
        modality_p = self._modality_p(live, self.max_epochs)  # the rate of most epochs
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        with matmuls(self.precision, self.device):
            self._train_epoch(live, modality_p, self.epoch + 1, warmup)
            sync()
            t0 = time.perf_counter()
            self._train_epoch(live, modality_p, self.epoch + 1, steps)
            sync()
        return (time.perf_counter() - t0) / steps

    def prune(self, trials):
        """Stop every member of these trials now (ASHA); they leave the batch."""
        out = [m.index for m in self.members if m.trial in trials and m.index in self.live]
        for i in out:
            self.members[i].stopped = self.members[i].pruned = True
        self._leave(out)

    def _leave(self, indices):
        if not indices:
            return
        leaving = set(indices)
        stay = [pos for pos, i in enumerate(self.live) if i not in leaving]
        index = torch.tensor(stay, dtype=torch.long, device=self.device)
        self.model.keep(index)
        self.optimizer.keep(index, self.model.parameters())
        self.live = [self.live[pos] for pos in stay]

    # --- results and checkpoints

    def best_model(self, indices):
        """A model of the members `indices` at their best epochs (their initial weights where a member
        never had one: scoring leaves those out)."""
        cfgs = [self.members[i].cfg for i in indices]
        dtype = self.best[next(iter(self.best))].dtype
        model = build_model(self.trials[0][0], self.data.dims, len(self.data.classes), cfgs, init=False).to(self.device, dtype)
        index = torch.tensor(indices, dtype=torch.long, device=self.device)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.best[name].index_select(0, index))
        return model.eval()

    def score(self, scenarios=None, trials=None) -> dict:
        """{trial: TrialResult} of `trials` (default all), scored at their members' best epochs."""
        trials = range(len(self.trials)) if trials is None else trials
        members = [m for m in self.members if m.trial in trials]
        with_best = [m.index for m in members if m.best_val is not None]
        model = self.best_model(with_best) if with_best else None
        with matmuls(self.precision, self.device):
            return score(model, members, self.splits, self.data, self.history, self.train_seconds, trials, scenarios,
                         self.precision)

    def state_dict(self):
        """Everything needed to continue this pack bit for bit after a restart."""
        return {"version": CHECKPOINT_VERSION, "epoch": self.epoch, "history": self.history,
                "train_seconds": self.train_seconds,
                "trials": [(cfg.to_dict(), seed) for cfg, seed in self.trials], "live": list(self.live),
                "members": [{**{k: getattr(m, k) for k in STOPPING_FIELDS},
                             "scheduler": m.scheduler.state_dict(), "generator": m.generator.get_state()}
                            for m in self.members],
                "model": {n: p.detach() for n, p in self.model.named_parameters()},
                "optimizer": self.optimizer.state_dict(), "best": self.best}

    def load_state_dict(self, state):
        if state.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"checkpoint format {state.get('version', 1)}, this engine reads {CHECKPOINT_VERSION}")
        saved = [(with_later_keys(cfg), seed) for cfg, seed in state["trials"]]  # keys added since: old value
        if saved != [(cfg.to_dict(), seed) for cfg, seed in self.trials]:
            raise CheckpointError("the checkpoint is of another pack (other configs or seeds)")
        self.epoch, self.history, self.train_seconds = state["epoch"], state["history"], state["train_seconds"]
        for m, s in zip(self.members, state["members"]):
            for k in STOPPING_FIELDS:
                setattr(m, k, s[k])
            m.scheduler.load_state_dict(s["scheduler"])
            m.generator.set_state(s["generator"])
        self._leave([i for i in self.live if i not in set(state["live"])])
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(state["model"][name])
                self.best[name].copy_(state["best"][name])
        self.optimizer.load_state_dict(state["optimizer"])


def _pick(value, index):
    return value if isinstance(value, float) else value.index_select(0, index)


def _mean_finite(scores):
    finite = [s for s in scores if math.isfinite(s)]
    return float(np.mean(finite)) if finite else math.nan


def train(trials, data, n_folds=5, device=None, on_epoch=None, scenarios=None, dtype=torch.float32) -> dict:
    """Train a pack to its end; {trial index: TrialResult}. `on_epoch(epoch, {trial: score})` may
    return True to stop early."""
    engine = Engine(trials, data, n_folds, device, dtype)
    while not engine.done:
        scores = engine.step()
        if on_epoch is not None and on_epoch(engine.epoch, scores):
            break
    return engine.score(scenarios)


def train_trial(cfg, data, seed=0, n_folds=5, device=None, on_epoch=None, scenarios=None):
    """One trial (config, seed) on its own; `on_epoch(epoch, score)`."""
    hook = None if on_epoch is None else (lambda epoch, scores: on_epoch(epoch, scores[0]))
    return train([(cfg, seed)], data, n_folds, device, hook, scenarios)[0]
