"""Helpers the test modules share (imported, not fixtures): model input batches, MERBench roots
written one way, the sweep command, and readers of the trackers' files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from sweeps import trackers, wandb_files

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- inputs and data roots

DIMS = [10, 20, 8]  # audio, text, video sizes of the model tests
FEATS = ("a-UTT", "t-UTT", "v-UTT")
EMOS = ("neutral", "angry", "happy", "sad", "worried", "surprise")
LABELS = {"train": {"s1": {"emo": "happy", "val": 2.0}, "s2": {"emo": "sad", "val": -1.0}},
          "test3": {"n1": {"emo": "angry", "val": -10}}}


def batch(n=16, seed=0, dims=DIMS):
    """One input per modality [n, d], seeded."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g) for d in dims]


def write_root(root, labels, features, array):
    """A MERBench root: `labels` {split: {name: {'emo', 'val'}}} in label-6way.npz, and one .npy per
    sample and feature folder, `array(feature index, sample index in its corpus)`."""
    root = Path(root)
    for f in features:
        (root / "features" / f).mkdir(parents=True, exist_ok=True)
    for corpus in labels.values():
        for i, name in enumerate(corpus):
            for k, f in enumerate(features):
                np.save(root / "features" / f / f"{name}.npy", array(k, i))
    np.savez(root / "label-6way.npz", **{f"{k}_corpus": np.array(v, dtype=object) for k, v in labels.items()})
    return root


def make_root(tmp_path, labels, features, dims=(3, 4, 2)):
    """Utterance features whose values say which sample they are (all i + 1)."""
    return write_root(tmp_path / "root", labels, features, lambda k, i: np.full(dims[k], i + 1.0, np.float32))


def merbench_root(path, labels=None, feature=None):
    """A small valid MERBench root (12 train samples, 2 per class), with one thing broken by the caller."""
    labels = labels if labels is not None else \
        {"train": {f"s{i}": {"emo": EMOS[i % 6], "val": float(i % 3 - 1)} for i in range(12)}}
    write_root(path, labels, FEATS, lambda k, i: np.ones(3, np.float32))
    if feature is not None:
        feature(path / "features" / FEATS[1] / "s1.npy")
    return path


def fra_root(tmp_path, names=("a-FRA", "t-FRA", "v-FRA"), dims=(3, 5, 2)):
    """A MERBench root with frame-level [T, D] features of varying T (3 classes x 4 train samples)."""
    rng = np.random.default_rng(0)
    labels = {"train": {f"s{i}": {"emo": ("happy", "sad", "angry")[i % 3], "val": float(i % 5 - 2)} for i in range(12)},
              "test1": {f"t{i}": {"emo": "happy", "val": 1.0} for i in range(3)}}
    return write_root(tmp_path / "fra", labels, names,
                      lambda k, i: rng.normal(size=(int(rng.integers(2, 7)), dims[k])).astype(np.float32))


# ---------------------------------------------------------------- sweeps in subprocesses

TINY = ["--data", "synthetic", "--profile", "tiny", "--set", "hidden_dim=16", "--set", "batch_size=64",
        "--set", "lr=0.003", "--address", "local"]


def sweep_argv(script, *args):
    """The command of a sweep script on the tiny built-in set, in a new local Ray."""
    return [sys.executable, str(REPO / "sweeps" / script), *TINY, *args]


def sweep_env():
    return {**os.environ, "RAY_ADDRESS": ""}


def sweep(script, *args, check=True, **kw):
    """Run a sweep to its end; with `check`, it must exit 0."""
    proc = subprocess.run(sweep_argv(script, *args), capture_output=True, text=True, env=sweep_env(), timeout=600, **kw)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# ---------------------------------------------------------------- the trackers' files

def wandb_runs(folder):
    """{run id: [(name, group, config, tags, [(step, val_emoval)], summary, ended)], one entry per
    offline run folder (a resumed trial has one more) with anything in it, oldest first} of STORAGE/NAME/wandb."""
    out = {}
    for f in sorted(Path(folder).glob("wandb/offline-run-*/*.wandb")):
        run, steps, summary, ended = None, [], {}, False
        for r in wandb_files.records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run = r.run
            elif kind == "history":
                items = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                if "val_emoval" in items:
                    steps.append((items["_step"], items["val_emoval"]))
            elif kind == "summary":
                summary.update({i.key: json.loads(i.value_json) for i in r.summary.update if i.key})
            elif kind == "exit":
                ended = True
        if run is None:  # its process was killed before W&B wrote anything
            continue
        config = {i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"}
        out.setdefault(run.run_id, []).append((run.start_time.ToNanoseconds(), run.display_name, run.run_group, config,
                                               list(run.tags), steps, summary, ended))
    return {k: [r[1:] for r in sorted(v)] for k, v in out.items()}  # in the order they were started


def tb_steps(folder, tag="val_emoval"):
    return [e.step for e in trackers.tb_events(folder) for v in e.summary.value if v.tag == tag]


def tb_values(folder, tag="val_emoval"):
    return {e.step: v.simple_value for e in trackers.tb_events(folder) for v in e.summary.value if v.tag == tag}


def tb_texts(folder, tag="provenance"):
    """The text summaries `tag` of a TensorBoard run folder, oldest first."""
    return [v.tensor.string_val[0].decode() for e in trackers.tb_events(folder) for v in e.summary.value
            if v.tag.startswith(tag + "/")]


def store_curve(store_dir, trial_id):
    """{epoch: the trial's val_emoval}, as the trackers log it, from the store's per-epoch history:
    the mean validation emoval of the folds that ran that epoch (diverged ones left out)."""
    from prmf import store
    epochs = store.read_epochs(store_dir)
    rows = epochs[(epochs.trial_id == trial_id) & np.isfinite(epochs.val_emoval)]
    return rows.groupby("epoch").val_emoval.mean().to_dict()
