"""Scoring: metrics, batched prediction of many members at once, and a trial's final result.

A trial is one (config, seed) over its folds (docs/MODEL.md): cv comes from each fold's validation
outputs at its best epoch; a test split from the fold-averaged outputs of the folds' best models,
clean and under every robustness scenario. All members of a pack are scored in one pass per
(split, scenario) under torch.inference_mode.
"""
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .precision import autocast

EVAL_CHUNK = 8192  # member-samples per forward when predicting


def metrics(logits: np.ndarray, vals_pred: np.ndarray, emos: np.ndarray, vals: np.ndarray) -> dict:
    """acc, weighted F1, valence MSE (over samples that have a valence) and MERBench's emoval;
    all NaN for non-finite logits (a diverged model), whose argmax would be a meaningless class 0."""
    from sklearn.metrics import accuracy_score, f1_score
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
    """One split on the device: inputs [N, D] (or [N, T, D] with lengths [N]), labels."""
    inputs: list
    lengths: list | None  # None for utterance-level features
    emos: torch.Tensor
    vals: torch.Tensor  # NaN where there is no valence

    @classmethod
    def from_split(cls, split, device, dtype=torch.float32):
        def tensor(a, dtype=None):  # one copy to the device, also from a read-only memory map
            return torch.tensor(np.asarray(a), device=device, dtype=dtype)
        inputs = [tensor(x, dtype) for x in split.inputs]
        lengths = None if inputs[0].dim() == 2 else [tensor(n) for n in split.lengths]
        return cls(inputs, lengths, tensor(split.emos), tensor(split.vals, dtype))

    def batch(self, idx):
        """Inputs and lengths of the samples idx ([M, B] or [B])."""
        return [x[idx] for x in self.inputs], None if self.lengths is None else [n[idx] for n in self.lengths]


@torch.inference_mode()
def predict(model, inputs, lengths=None, idx=None, precision="fp32"):
    """Eval-mode logits [M, n, C] and valence [M, n] of every member of `model`: on the samples
    idx [M, n] (each member its own), or on all N samples of `inputs` (the same for every member),
    in fp32 whatever the `precision` of the forward."""
    model.eval()
    n_members = model.n_members
    n = inputs[0].shape[0] if idx is None else idx.shape[1]
    step = max(1, EVAL_CHUNK // n_members)
    logits, vals = [], []
    for start in range(0, n, step):
        if idx is None:
            sl = slice(start, start + step)
            xs = [x[sl].expand(n_members, *x[sl].shape) for x in inputs]
            ns = None if lengths is None else [v[sl].expand(n_members, -1) for v in lengths]
        else:
            sub = idx[:, start:start + step]
            xs, ns = [x[sub] for x in inputs], None if lengths is None else [v[sub] for v in lengths]
        with autocast(precision, inputs[0].device):
            _, emos_out, vals_out, _ = model(xs, ns)
        logits.append(emos_out.float())
        vals.append(vals_out.float())
    return torch.cat(logits, 1).cpu().numpy(), torch.cat(vals, 1).cpu().numpy()


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
    random_streams: str = "member"  # every draw from the member's own stream (prmf/models/draws.py)


def _nan_metrics():
    return dict.fromkeys(("f1", "acc", "val_mse", "emoval"), math.nan)


def score(model, members, splits, data, history, train_seconds, trials, scenarios=None, precision="fp32") -> dict:
    """TrialResult of each trial index in `trials`, from its members' best epochs: `members` (of
    those trials; engine.Member) with a best epoch have their best weights in `model`, in order
    (None: no member has one), which predicts every test split (`splits`: SplitTensors) and
    scenario at once, in `precision`. `history`: the pack's per-epoch rows; `train_seconds`: its
    training time."""
    from .models import n_params
    from .models.layers import shared_input_cache
    scenarios = scenarios or {}
    with_model = [m for m in members if m.best_val is not None]  # diverged before a best epoch: none
    preds = {}  # (split, scenario) -> (logits [M', N, C], vals [M', N]) of the members with a model
    with shared_input_cache():
        for name, split in splits.items():
            if name == "train" or model is None:
                continue
            preds[(name, "clean")] = predict(model, split.inputs, split.lengths, precision=precision)
            for scen, transform in scenarios.items():
                preds[(name, scen)] = predict(model, transform(split.inputs), split.lengths, precision=precision)
    row = {m.index: i for i, m in enumerate(with_model)}
    n_cls = len(data.classes)
    out = {}
    for t in trials:
        folds = sorted((m for m in members if m.trial == t), key=lambda m: m.fold)
        out[t] = _trial_result(data, history, train_seconds, folds, preds, row, n_cls)
        out[t].n_params = n_params(model) if model is not None else 0
    return out


def _trial_result(data, history, train_seconds, folds, preds, row, n_cls):
    train = data.splits["train"]
    best_val = [f.best_val or {"metrics": _nan_metrics(), "logits": np.full((len(f.val_idx), n_cls), np.nan, np.float32),
                               "vals": np.full(len(f.val_idx), np.nan, np.float32)} for f in folds]
    order = np.concatenate([f.val_idx.cpu().numpy() for f in folds])
    fold_metrics = [b["metrics"] for b in best_val]
    splits = {"cv": SplitResult(
        fold_metrics, {k: float(np.mean([m[k] for m in fold_metrics])) for k in fold_metrics[0]}, train.names[order],
        np.concatenate([b["logits"] for b in best_val]), np.concatenate([b["vals"] for b in best_val]),
        train.emos[order], train.vals[order], np.concatenate([np.full(len(f.val_idx), f.fold) for f in folds]))}
    scen = {}
    for (name, scenario), (logits, vals) in preds.items():
        sp = data.splits[name]
        rows = [row[f.index] for f in folds if f.index in row]
        mean_logits = logits[rows].mean(0) if rows else np.full((len(sp.names), n_cls), np.nan, np.float32)
        mean_vals = vals[rows].mean(0) if rows else np.full(len(sp.names), np.nan, np.float32)
        agg = metrics(mean_logits, mean_vals, sp.emos, sp.vals)
        if scenario == "clean":
            per_fold = [metrics(logits[row[f.index]], vals[row[f.index]], sp.emos, sp.vals) if f.index in row
                        else _nan_metrics() for f in folds]
            splits[name] = SplitResult(per_fold, agg, sp.names, mean_logits, mean_vals, sp.emos, sp.vals,
                                       np.full(len(sp.names), -1))
        else:
            scen[(name, scenario)] = agg
    history = [h for h in history if (h["trial"], h["fold"]) in {(f.trial, f.fold) for f in folds}]
    return TrialResult(splits, scen, [f.best_epoch for f in folds], [f.epochs_run for f in folds],
                       [{k: v for k, v in h.items() if k != "trial"} for h in history], train_seconds,
                       0, [f.diverged_epoch for f in folds])
