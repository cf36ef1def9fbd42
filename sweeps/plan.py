"""The plan of a sweep: its trials (one config x one seed, as TrialSpec dicts that travel to the
workers), the packs they are trained in (trials that share config.pack_key, one batched model
each), and ASHA's horizon. Nothing here starts Ray or trains.

Words: a *trial* is one (config, seed) over its folds; a *pack* is the trials trained together as
one batched model (one Tune trial); a *member* is one (trial, fold) of a pack's model (prmf/engine.py).
"""
import hashlib
import json
import math
from pathlib import Path
from typing import TypedDict

import torch

from prmf import provenance, records, store
from prmf.config import make_config, pack_key
from sweeps.definition import SweepError, Sweep

AUTO_PACK_MAX = 27  # the largest pack --pack auto considers: the paper's grid in one batched model
PACK_FIELDS = ("store", "folds", "checkpoint_every", "milestones", "cpus", "robustness")  # the same for a pack's trials
MEMBER_NOTE = ("loss weights", "temperatures", "dropout", "optimiser", "lr and its schedule", "weight decay", "seed")


def asha_horizon(sweep: Sweep):
    """(epochs, patience, grace period, note) of the sweep; ASHA has one max_t and one grace period
    for all trials, so with ASHA on, points may not differ in epochs (or in patience when the grace
    period comes from it). A grace period longer than the epochs is clamped to them (and said)."""
    run = sweep.run
    cfgs = [p.cfg for p in sweep.points] or [sweep.search.base_cfg]  # Optuna: no points up front
    epochs = {c.epochs for c in cfgs}
    patience = {c.patience for c in cfgs}
    if sweep.asha and (len(epochs) > 1 or (len(patience) > 1 and run.grace_period is None)):
        key = "epochs" if len(epochs) > 1 else "patience"
        raise SweepError(f"the points differ in {key} ({', '.join(map(str, sorted(epochs if key == 'epochs' else patience)))}), "
                         f"but ASHA prunes all trials on one schedule: run one sweep per {key} value, or turn "
                         f"pruning off{' (--no-asha)' if sweep.kind == 'grid' else ''}"
                         f"{'' if key == 'epochs' else ', or give --grace-period'}")
    grace = run.grace_period or min(patience)
    note = ""
    if grace > max(epochs):
        note = f" (the {'--grace-period' if run.grace_period else 'patience'} {grace} clamped to the {max(epochs)} epochs)"
        grace = max(epochs)
    return max(epochs), min(patience), grace, note


class TrialSpec(TypedDict, total=False):
    """What a worker needs to train and store one trial: a plain dict (it travels through Tune's
    param space, JSON records and tracker params), so this is its one type."""
    trial_id: str  # EXPERIMENT-sSEED-HASH (prmf.records.trial_id): its results file's name
    experiment: str  # the point's label (a preset, or a grid point's key=value list)
    identical: list  # other presets with this effective config, stored from the same run
    seed: int
    cfg: dict  # prmf.config.TrialConfig.to_dict()
    sweep: str  # the sweep's name
    store: str  # the sweep folder
    folds: int
    checkpoint_every: int
    milestones: list  # ASHA's rungs (epochs); empty: no pruning
    cpus: float  # per pack: torch's threads
    robustness: bool  # score the robustness scenarios
    commit: str  # the code's git commit (prmf.provenance)
    mlflow: dict  # trackers.prepare's settings, when --mlflow is given
    wandb: dict  # likewise, with --wandb
    tensorboard: dict  # likewise, whenever tensorboardX is installed
    search_values: dict  # a search's proposed values for this point


def trial_specs(sweep: Sweep, name: str, root: Path, milestones, data=None) -> list[TrialSpec]:
    """One TrialSpec per (point, seed)."""
    run = sweep.run
    specs = []
    for p in sweep.points:
        for seed in range(run.seeds):
            tid = records.trial_id(p.tag or p.label, p.cfg, seed, data)
            old = records.trial_id(p.tag or p.label, p.cfg, seed)  # before the data set was in the id
            if store.is_stored(root, old):
                tid = old  # a sweep started before: its trials keep their ids, nothing is trained twice
            specs.append({"trial_id": tid, "experiment": p.label, "identical": list(p.identical), "seed": seed,
                          "cfg": p.cfg.to_dict(), "sweep": name, "store": str(root), "folds": run.folds,
                          "checkpoint_every": run.checkpoint_every, "milestones": milestones,
                          "cpus": run.cpus_per_trial, "robustness": True, "commit": provenance.git_commit()})
    return specs


def largest_pack(specs, data, slots, gpus_per_trial, memory) -> int:
    """The largest pack worth considering: as many trials as half the memory of one trial slot holds
    (weights, gradients, AdamW moments and best states of every fold), the trials spread over the
    free slots, at most AUTO_PACK_MAX. `memory`: the cluster's memory in bytes (Ray's resource).
    Whether packing pays at all is measured (sweeps/pack_choice.py)."""
    from prmf.models import build_model, n_params
    cfg = make_config(specs[0]["cfg"])
    per_trial = n_params(build_model(cfg, data.dims, len(data.classes), init=False)) * 4 * 5 * specs[0]["folds"]
    if gpus_per_trial:
        gpu = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 16 * 2 ** 30
        budget = gpus_per_trial * gpu / 2
    else:
        budget = memory / max(1, slots) / 2
    return int(max(1, min(AUTO_PACK_MAX, budget // per_trial, math.ceil(len(specs) / max(1, slots)))))


def make_packs(specs, size, root):
    """[(pack id, [trial specs])]: trials that may share a batched model (same config.pack_key) in
    packs of at most `size` trials (an int, or a function of a group of such trials), balanced;
    the packs of a sweep's first run (packs.json) are kept on resume."""
    saved = root / "packs.json"
    stored = json.loads(saved.read_text()) if saved.exists() else {}
    by_id = {s["trial_id"]: s for s in specs}
    packs = [(pid, [by_id[t] for t in tids if t in by_id]) for pid, tids in stored.items()]
    packs = [(pid, trials) for pid, trials in packs if trials]
    placed = {t for tids in stored.values() for t in tids}
    groups = {}
    for s in specs:
        if s["trial_id"] not in placed:
            groups.setdefault(pack_key(make_config(s["cfg"])), []).append(s)
    for group in groups.values():
        n = size(group) if callable(size) else size
        k = math.ceil(len(group) / n)
        for chunk in (group[i::k] for i in range(k)):  # k packs of near-equal size
            tids = [s["trial_id"] for s in chunk]
            pid = tids[0] if len(tids) == 1 else "pack-" + hashlib.sha1(",".join(tids).encode()).hexdigest()[:8]
            packs.append((pid, chunk))
    ids = {pid: [s["trial_id"] for s in trials] for pid, trials in packs}
    if ids != stored:
        store.atomic_write(saved, lambda tmp: Path(tmp).write_text(json.dumps({**stored, **ids}, indent=1)))
    return packs


def pack_config(pid, trials) -> dict:
    """A pack as the trainable receives it: its id, its trials' specs and what they share."""
    return {"id": pid, "trials": trials, **{k: trials[0][k] for k in PACK_FIELDS}}


def pack_file(root, pid) -> Path:
    return Path(root) / "pack-specs" / f"{pid}.json"


def write_packs(root, packs):
    """Each pack's specs into a file of the sweep folder that its worker reads (load_pack): Tune
    receives only the pack ids, so its set-up and experiment state grow with the sweep, not its
    square. Written in place, not through a temporary file: the driver writes them before Tune
    starts any worker, and a driver killed meanwhile writes them all again when run again."""
    pack_file(root, "x").parent.mkdir(parents=True, exist_ok=True)
    for pid, trials in packs:
        pack_file(root, pid).write_text(json.dumps(pack_config(pid, trials)))


def load_pack(root, pid) -> dict:
    """The pack config write_packs wrote for `pid`."""
    return json.loads(pack_file(root, pid).read_text())


def solo_pack(spec) -> dict:
    """A pack of one trial (a point proposed by a search while the sweep runs)."""
    return pack_config(spec["trial_id"], [spec])


def pack_id(config) -> str:
    """The id of the pack a Tune trial's config holds."""
    return config["pack"] if "pack" in config else config["trial"]["trial_id"]
