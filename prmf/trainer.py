"""One trial = one config x one seed over all folds (SPEC §3-4).

The folds advance in lockstep, one epoch at a time, so that a sweep can see the mean validation
metric of the still-running folds after every epoch (ASHA plugs in there) and checkpoint the
whole trial between epochs. Data lives on the device as tensors; batches are index
permutations, not a per-sample DataLoader.
"""
import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold

from .models import build_model

EVAL_CHUNK = 4096


def n_params(model) -> int:
    """All trainable parameters, including any that receive no gradient (MERBench counts the same)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def default_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def metrics(logits: np.ndarray, vals_pred: np.ndarray, emos: np.ndarray, vals: np.ndarray) -> dict:
    """acc, weighted F1, valence MSE (over samples that have a valence) and MERBench's emoval;
    all NaN for non-finite logits (a diverged model), whose argmax would be a meaningless class 0."""
    if not np.isfinite(logits).all():
        return dict.fromkeys(("f1", "acc", "val_mse", "emoval"), math.nan)
    pred = logits.argmax(1)
    f1 = f1_score(emos, pred, average="weighted")
    has_val = ~np.isnan(vals)
    val_mse = float(np.mean((vals_pred[has_val] - vals[has_val]) ** 2)) if has_val.any() else math.nan
    emoval = f1 - 0.25 * val_mse if has_val.any() else f1
    return {"f1": float(f1), "acc": float(accuracy_score(emos, pred)), "val_mse": val_mse, "emoval": float(emoval)}


@dataclass
class SplitTensors:
    """One split on the device."""
    inputs: list
    lengths: list | None  # None for utterance-level features
    emos: torch.Tensor
    vals: torch.Tensor  # NaN where there is no valence

    @classmethod
    def from_split(cls, split, device):
        inputs = [torch.as_tensor(x, device=device) for x in split.inputs]
        lengths = None if inputs[0].dim() == 2 else [torch.as_tensor(n, device=device) for n in split.lengths]
        return cls(inputs, lengths, torch.as_tensor(split.emos, device=device),
                   torch.as_tensor(split.vals, device=device))

    def batch(self, idx):
        return [x[idx] for x in self.inputs], None if self.lengths is None else [n[idx] for n in self.lengths]


@torch.no_grad()
def predict(model, data: SplitTensors, idx=None, transform=None):
    """Class logits [N, C] and valence predictions [N] in eval mode, as numpy."""
    model.eval()
    n = len(data.emos) if idx is None else len(idx)
    idx = torch.arange(n, device=data.emos.device) if idx is None else idx
    logits, vals = [], []
    for start in range(0, n, EVAL_CHUNK):
        inputs, lengths = data.batch(idx[start:start + EVAL_CHUNK])
        if transform is not None:
            inputs = transform(inputs)
        _, emos_out, vals_out, _ = model(inputs, lengths)
        logits.append(emos_out.float().cpu())
        vals.append(vals_out.float().squeeze(1).cpu())
    return torch.cat(logits).numpy(), torch.cat(vals).numpy()


@dataclass
class Fold:
    index: int
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    generator: torch.Generator  # batch order of this fold
    best_metric: float = -math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    best_val: dict | None = None  # metrics, logits and valence predictions at the best epoch
    patience_ref: float = -math.inf
    bad_epochs: int = 0
    stopped: bool = False
    epochs_run: int = 0
    diverged_epoch: int = 0  # the epoch its loss or validation went non-finite (0: never)


def stratified_folds(emos: np.ndarray, n_folds: int, seed: int):
    """Seeded, class-stratified folds (MERBench's are unseeded chunks of a shuffle)."""
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in splitter.split(np.zeros(len(emos)), emos)]


STOPPING_FIELDS = ("best_metric", "best_epoch", "best_val", "patience_ref", "bad_epochs", "stopped", "epochs_run",
                   "diverged_epoch")


def stopping_state(fold) -> dict:
    """A fold's early-stopping bookkeeping, for a checkpoint (both runners' format)."""
    return {k: getattr(fold, k) for k in STOPPING_FIELDS}


def load_stopping_state(fold, state):
    for k in STOPPING_FIELDS:
        if k in state:  # diverged_epoch is missing from checkpoints written before it existed
            setattr(fold, k, state[k])


def run_state(runner) -> dict:
    """The trial-level part of a checkpoint: epoch, history, time and the global RNGs."""
    return {"epoch": runner.epoch, "history": runner.history, "train_seconds": runner.train_seconds,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if runner.device.type == "cuda" else None}


def load_run_state(runner, state):
    runner.epoch, runner.history, runner.train_seconds = state["epoch"], state["history"], state["train_seconds"]
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and runner.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def running_score(scores) -> float:
    """The mean validation emoval of the folds that ran this epoch, diverged ones (NaN) left out."""
    finite = [s for s in scores if math.isfinite(s)]
    return float(np.mean(finite)) if finite else math.nan


def update_fold(fold, m, epoch, cfg, logits, vals_pred, save_best):
    """After a fold's validation: LR schedule, best epoch (argmax of emoval; `save_best()` keeps the
    weights) and patience, which counts only gains above min_delta. A fold whose outputs or metrics
    are not finite (its loss blew up: NaN weights) stops at once, marked diverged. Shared by both runners."""
    if not (all(math.isfinite(v) for k, v in m.items() if k != "val_mse") and np.isfinite(logits).all()
            and np.isfinite(vals_pred).all()):
        fold.diverged_epoch, fold.stopped, fold.epochs_run = epoch, True, epoch
        return
    fold.scheduler.step(m["emoval"])
    if m["emoval"] > fold.best_metric:
        fold.best_metric, fold.best_epoch = m["emoval"], epoch
        save_best()
        fold.best_val = {"metrics": m, "logits": torch.from_numpy(logits), "vals": torch.from_numpy(vals_pred)}
    if m["emoval"] > fold.patience_ref + cfg.min_delta:
        fold.patience_ref, fold.bad_epochs = m["emoval"], 0
    else:
        fold.bad_epochs += 1
        fold.stopped = fold.bad_epochs >= cfg.patience
    fold.epochs_run = epoch


class TrialRunner:
    """Trains the folds of one trial epoch by epoch; `state_dict` checkpoints it between epochs."""

    def __init__(self, cfg, data, seed=0, n_folds=5, device=None):
        self.cfg, self.data, self.seed, self.n_folds = cfg, data, seed, n_folds
        self.device = torch.device(device) if device else default_device()
        self.splits = {name: SplitTensors.from_split(sp, self.device) for name, sp in data.splits.items()}
        self.epoch = 0
        self.history = []
        self.train_seconds = 0.0
        torch.manual_seed(seed)
        self.folds = []
        for k, (tr, va) in enumerate(stratified_folds(data.splits["train"].emos, n_folds, seed)):
            model = build_model(cfg, data.dims, len(data.classes)).to(self.device)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=10, min_lr=1e-6)
            gen = torch.Generator(device="cpu").manual_seed(seed * 1000 + k)
            self.folds.append(Fold(k, torch.as_tensor(tr, device=self.device), torch.as_tensor(va, device=self.device),
                                   model, opt, sched, gen))

    @property
    def done(self):
        return self.epoch >= self.cfg.epochs or all(f.stopped for f in self.folds)

    def _train_epoch(self, fold):
        cfg, train = self.cfg, self.splits["train"]
        model = fold.model
        model.train()
        model.set_epoch(self.epoch + 1)
        order = fold.train_idx[torch.randperm(len(fold.train_idx), generator=fold.generator).to(self.device)]
        total, count = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            inputs, lengths = train.batch(idx)
            _, emos_out, vals_out, interloss = model(inputs, lengths)
            emos, vals = train.emos[idx], train.vals[idx]
            has_val = ~torch.isnan(vals)
            loss = interloss + cfg.emo_weight * F.cross_entropy(emos_out, emos)
            if has_val.any():
                loss = loss + cfg.val_weight * F.mse_loss(vals_out.squeeze(1)[has_val], vals[has_val])
            fold.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_value_(model.parameters(), cfg.grad_clip)
            fold.optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
        return total / max(count, 1)

    def _validate(self, fold, train_loss):
        train = self.splits["train"]
        logits, vals_pred = predict(fold.model, train, fold.val_idx)
        idx = fold.val_idx.cpu().numpy()
        m = metrics(logits, vals_pred, self.data.splits["train"].emos[idx], self.data.splits["train"].vals[idx])
        epoch = self.epoch + 1

        def save_best():
            fold.best_state = copy.deepcopy(fold.model.state_dict())

        update_fold(fold, m, epoch, self.cfg, logits, vals_pred, save_best)
        self.history.append({"fold": fold.index, "epoch": epoch, "train_loss": train_loss,
                             **{f"val_{k}": v for k, v in m.items()},
                             "lr": fold.optimizer.param_groups[0]["lr"], "stopped": fold.stopped,
                             "modality_dropout_p": fold.model.dropout_rate()})
        return m["emoval"]

    def step(self) -> float:
        """One epoch of every running fold; returns the mean validation emoval over them."""
        t0 = time.perf_counter()
        running = [f for f in self.folds if not f.stopped]
        scores = [self._validate(f, self._train_epoch(f)) for f in running]
        self.epoch += 1
        self.train_seconds += time.perf_counter() - t0
        return running_score(scores)

    def state_dict(self):
        """Everything needed to continue this trial bit-for-bit after a restart."""
        return {**run_state(self),
                "folds": [stopping_state(f) | {"best_state": f.best_state, "model": f.model.state_dict(),
                                           "optimizer": f.optimizer.state_dict(), "scheduler": f.scheduler.state_dict(),
                                           "generator": f.generator.get_state()}
                          for f in self.folds]}

    def load_state_dict(self, state):
        load_run_state(self, state)
        for f, s in zip(self.folds, state["folds"]):
            f.model.load_state_dict(s["model"])
            f.optimizer.load_state_dict(s["optimizer"])
            f.scheduler.load_state_dict(s["scheduler"])
            f.generator.set_state(s["generator"])
            load_stopping_state(f, s)
            f.best_state = s["best_state"]

    def best_models(self):
        """The fold models at their best epochs (copies; training state untouched)."""
        out = []
        for f in self.folds:
            m = copy.deepcopy(f.model)
            if f.best_state is not None:  # None: diverged before a best epoch (TrialResult leaves it out)
                m.load_state_dict(f.best_state)
            out.append(m.eval())
        return out

    def finish(self, scenarios=None):
        """Score the best epoch of every fold: cv from validation, tests from fold-averaged outputs."""
        return TrialResult.build(self, scenarios or {})


@dataclass
class SplitResult:
    fold_metrics: list  # per fold
    metrics: dict  # aggregate
    names: np.ndarray
    logits: np.ndarray  # aggregate [N, C]
    vals_pred: np.ndarray
    emos: np.ndarray
    vals: np.ndarray
    fold_ids: np.ndarray  # cv: the fold that predicted each sample; tests: -1 (all folds averaged)


@dataclass
class TrialResult:
    splits: dict  # split -> SplitResult (clean inputs)
    scenarios: dict = field(default_factory=dict)  # (split, scenario) -> aggregate metrics
    best_epochs: list = field(default_factory=list)
    epochs_run: list = field(default_factory=list)
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    n_params: int = 0  # trainable parameters of one fold's model (also those that get no gradient)
    diverged_epochs: list = field(default_factory=list)  # per fold, 0 = did not diverge

    @classmethod
    def build(cls, runner: TrialRunner, scenarios: dict):
        data = runner.data.splits
        train = data["train"]
        out = {}
        order = np.concatenate([f.val_idx.cpu().numpy() for f in runner.folds])
        fold_ids = np.concatenate([np.full(len(f.val_idx), f.index) for f in runner.folds])
        # a fold that diverged before its first best epoch has no model: NaN rows, left out of the tests
        n_cls = len(runner.data.classes)
        best_val = [f.best_val or {"metrics": metrics(np.full((1, n_cls), np.nan), None, None, None),
                                   "logits": torch.full((len(f.val_idx), n_cls), math.nan),
                                   "vals": torch.full((len(f.val_idx),), math.nan)} for f in runner.folds]
        fold_metrics = [b["metrics"] for b in best_val]
        out["cv"] = SplitResult(
            fold_metrics, {k: float(np.mean([m[k] for m in fold_metrics])) for k in fold_metrics[0]},
            train.names[order], torch.cat([b["logits"] for b in best_val]).numpy(),
            torch.cat([b["vals"] for b in best_val]).numpy(), train.emos[order], train.vals[order], fold_ids)
        has_model = [f.best_val is not None for f in runner.folds]
        models = runner.best_models()
        scen_out = {}
        for name, sp in data.items():
            if name == "train":
                continue
            nan_pred = (np.full((len(sp.names), n_cls), np.nan, np.float32), np.full(len(sp.names), np.nan, np.float32))
            per_fold = [predict(m, runner.splits[name]) if ok else nan_pred for m, ok in zip(models, has_model)]
            preds = [p for p, ok in zip(per_fold, has_model) if ok] or [nan_pred]
            logits = np.mean([p[0] for p in preds], axis=0)
            vals_pred = np.mean([p[1] for p in preds], axis=0)
            out[name] = SplitResult([metrics(*p, sp.emos, sp.vals) for p in per_fold],
                                    metrics(logits, vals_pred, sp.emos, sp.vals), sp.names, logits, vals_pred,
                                    sp.emos, sp.vals, np.full(len(sp.names), -1))
            for scen, transform in scenarios.items():
                preds = [predict(m, runner.splits[name], transform=transform)
                         for m, ok in zip(models, has_model) if ok] or [nan_pred]
                scen_out[(name, scen)] = metrics(np.mean([p[0] for p in preds], axis=0),
                                                 np.mean([p[1] for p in preds], axis=0), sp.emos, sp.vals)
        return cls(out, scen_out, [f.best_epoch for f in runner.folds], [f.epochs_run for f in runner.folds],
                   list(runner.history), runner.train_seconds, n_params(models[0]),
                   [f.diverged_epoch for f in runner.folds])


def make_runner(cfg, data, seed=0, n_folds=5, device=None, vectorize="auto"):
    """The runner of a trial: folds one after another (TrialRunner) or as one batched model
    (prmf.vectorized.VectorizedRunner: same interface and training, identical up to float noise
    when dropout is off, only its random draws differ; same checkpoint format, so either resumes
    the other's). 'auto' takes the vectorised one wherever it covers the config (utterance-level
    features): it was the faster at every profile measured (benchmarks/RESULTS.md)."""
    from .vectorized import VectorizedRunner, supports
    if vectorize == "auto":
        vectorize = supports(cfg, data)
    return (VectorizedRunner if vectorize else TrialRunner)(cfg, data, seed, n_folds, device)


def train_trial(cfg, data, seed=0, n_folds=5, device=None, on_epoch=None, scenarios=None,
                vectorize="auto") -> TrialResult:
    """Run a whole trial. `on_epoch(epoch, mean_val_emoval)` may return True to stop it early."""
    runner = make_runner(cfg, data, seed, n_folds, device, vectorize)
    while not runner.done:
        score = runner.step()
        if on_epoch is not None and on_epoch(runner.epoch, score):
            break
    return runner.finish(scenarios)
