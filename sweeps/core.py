"""The sweep core shared by `ablation.py` and `grid.py`: trials as Ray Tune trials.

A Tune trial is one (config, seed); its folds train inside it and it reports, every epoch, the
mean validation emoval of its running folds. ASHA (time_attr = epoch) may stop a trial at a
rung; each fold still stops by its own patience. Results go into the store under
STORAGE/NAME/ when a trial ends: by the worker when it finishes, by the driver (from the
checkpoint at the stop epoch) when ASHA stops it. Resume = run the same command again: a fresh
Tuner runs the trials without a store file, each from its last checkpoint; ASHA's rung records
come back from the sweep's folder (sweeps/asha.py); a replayed trial rewrites its own file only.
"""
import argparse
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import torch  # noqa: E402

from cluster.address import resolve_address  # noqa: E402
from prmf import provenance, records, store  # noqa: E402
from prmf.config import ConfigError, for_data, make_config, parse_sets  # noqa: E402
from prmf.data import DataError, check_folds, load_data  # noqa: E402
from prmf.robustness import scenarios as robustness_scenarios  # noqa: E402
from prmf.trainer import make_runner  # noqa: E402
from sweeps import lock, ray_local, trackers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORAGE = REPO / "runs"
ASHA_REDUCTION = 3
QUICK = dict(epochs=15, batch_size=64, lr=1e-3)  # demo settings: minutes on 2 cores


class SweepError(Exception):
    """A bad sweep input; one line, printed by the CLI."""


@dataclass
class Point:
    """One row of the sweep: an experiment label and its config (seeds multiply it)."""
    label: str
    cfg: object
    tag: str = ""  # trial-id prefix (the experiment name, or 'grid')
    identical: tuple = ()  # other presets with this effective config: trained once, rows stored for each


@dataclass
class Sweep:
    kind: str  # 'ablation' or 'grid'
    points: list
    args: argparse.Namespace
    asha: bool = False
    settings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)  # printed at start (e.g. rows that cannot differ yet)
    search: object = None  # sweeps/search.OptunaSearch: points proposed while the sweep runs


def add_common_args(ap: argparse.ArgumentParser):
    ap.add_argument("--data", default="synthetic", help="a MERBench dataset root, or 'synthetic' (default) for the built-in set")
    ap.add_argument("--features", help="audio,text,video feature folder names (default: the paper's three)")
    ap.add_argument("--profile", default="small", choices=["tiny", "small", "paper"],
                    help="feature sizes of the built-in set (default small; 'paper' = 1024/5120/768)")
    ap.add_argument("--dataset-name", help="the data set's name in results and NPZ names (default: the root "
                    "folder's, in MERBench's spelling, e.g. mer2023 -> MER2023; MER2023-synthetic-PROFILE)")
    ap.add_argument("--folds", type=int, default=5, help="cross-validation folds per trial (default 5)")
    ap.add_argument("--seeds", type=int, default=1, help="repeat every point with seeds 0..N-1 (default 1)")
    ap.add_argument("--epochs", type=int, help="epochs per fold (default 150, the paper's; --quick: 15)")
    ap.add_argument("--patience", type=int, help="a fold stops after this many epochs without improvement; "
                    "also the epochs before ASHA first prunes (default 40)")
    ap.add_argument("--grace-period", type=int, help="epochs before ASHA first prunes a trial (default: the patience, "
                    "at most the epochs)")
    ap.add_argument("--quick", action="store_true",
                    help=f"demo settings: {', '.join(f'{k}={v}' for k, v in QUICK.items())} (printed at start; "
                    f"--epochs etc. still override them)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value in every point")
    ap.add_argument("--num-gpus", type=float, default=0, help="GPUs the sweep may use in total (default 0: CPU)")
    ap.add_argument("--gpus-per-trial", type=float, help="GPU share of one trial, fractional allowed "
                    "(default: from the model size, 0.25 for small models, 0.5 for paper-size inputs)")
    ap.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs per trial (default 1)")
    ap.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS if set, else a new local Ray)")
    ap.add_argument("--storage", help=f"shared directory for results and Tune state (default {DEFAULT_STORAGE})")
    ap.add_argument("--name", help="the sweep's name, its folder under --storage (default: from the sweep and data)")
    ap.add_argument("--restart", action="store_true", help="delete an existing sweep of this name and start over")
    ap.add_argument("--checkpoint-every", type=int, default=10,
                    help="epochs between a trial's checkpoints (also at ASHA rungs and the end; default 10)")
    ap.add_argument("--max-failures", type=int, default=3, help="retries of a trial whose worker died (default 3)")
    ap.add_argument("--dashboard", action="store_true", help="start Ray's dashboard on 127.0.0.1 (local Ray only; "
                    "needs pip install 'ray[default]')")
    trackers.add_args(ap)  # --mlflow, --wandb
    return ap


def config_changes(args, fixed=None) -> dict:
    """Config values every point of the sweep gets: --quick, then `fixed`, --set, --epochs, --patience."""
    changes = {**(QUICK if args.quick else {}), **(fixed or {}), **parse_sets(args.set)}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.patience is not None:
        changes["patience"] = args.patience
    return changes


def main(build_parser, make_sweep, argv=None) -> int:
    """The CLI of a sweep script: parse, build the points (config errors are one line), run."""
    args = build_parser().parse_args(argv)
    try:
        sweep = make_sweep(args)
    except (ConfigError, SweepError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.quick:  # the values in use, --epochs and --set included
        used = {k: getattr(sweep.points[0].cfg, k) for k in QUICK}
        print(f"quick settings: {', '.join(f'{k}={v:g}' for k, v in used.items())} "
              f"(drop --quick for each preset's own settings, e.g. Exp4: epochs=150, batch_size=32, lr=0.0003)", file=sys.stderr)
    return run(sweep)


def _asha_milestones(grace, max_t):
    out, t = [], grace
    while t < max_t:
        out.append(int(t))
        t *= ASHA_REDUCTION
    return out


# ---------------------------------------------------------------- the trial (runs on a worker)

def _node_info():
    import ray
    return {"node_ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id()}


def _write_result(runner, spec, data, status, wall_time_s, node):
    cfg = make_config(spec["cfg"])
    result = runner.finish(robustness_scenarios() if spec["robustness"] else None)
    results, epochs, predictions = records.tables(
        result, tid=spec["trial_id"], sweep=spec["sweep"], experiment=spec["experiment"], cfg=cfg, seed=spec["seed"],
        dataset=data, status=status, wall_time_s=wall_time_s, extra=node, identical=spec.get("identical", ()),
        commit=spec.get("commit", "unknown"))
    store.write_trial(spec["store"], spec["trial_id"], results, epochs, predictions)
    trackers.log_result(spec, status)  # MLflow: final metrics, NPZ artifacts, run closed


def _save_checkpoint(path, runner, wall_time_s):
    store.atomic_write(Path(path), lambda tmp: torch.save({"runner": runner.state_dict(), "wall_time_s": wall_time_s}, tmp))


def _load_checkpoint(path, runner):
    state = torch.load(path, map_location=runner.device, weights_only=True)
    runner.load_state_dict(state["runner"])
    return state["wall_time_s"]


def run_trial(config, data=None):
    """Tune function trainable: one (config, seed) over its folds, checkpointed between epochs.

    The checkpoint is this trial's own file in the sweep's storage (atomic), so a retried trial
    (FailureConfig), a resumed sweep and the driver finishing an ASHA-stopped trial all find it.
    """
    from ray import tune

    spec = config["trial"]
    torch.set_num_threads(max(1, int(spec["cpus"])))
    if (Path(spec["store"]) / "results" / f"{spec['trial_id']}.parquet").exists():
        tune.report({"epoch": 0, "val_emoval": float("nan"), "already_done": True})  # never train it again
        return
    runner = make_runner(make_config(spec["cfg"]), data, spec["seed"], spec["folds"])
    ckpt = Path(spec["checkpoint"])
    wall0 = _load_checkpoint(ckpt, runner) if ckpt.exists() else 0.0
    node = _node_info()
    tracker = trackers.start(spec)  # MLflow run of this trial (a resumed trial reopens its own)
    t0 = time.time()
    milestones = set(spec["milestones"])
    while not runner.done:
        score = runner.step()
        wall = wall0 + time.time() - t0
        metrics = {"epoch": runner.epoch, "val_emoval": score,
                   "folds_running": sum(not f.stopped for f in runner.folds), **node}
        tracker.epoch(metrics)
        if runner.done:
            _write_result(runner, spec, data, "finished", wall, node)
            ckpt.unlink(missing_ok=True)
        elif runner.epoch % spec["checkpoint_every"] == 0 or runner.epoch in milestones:
            _save_checkpoint(ckpt, runner, wall)  # before the report: ASHA may stop the trial there
        tune.report(metrics)


def finish_stopped_trial(spec, data, node):
    """A trial ASHA stopped: score its folds' best epochs from the checkpoint at the stop epoch."""
    runner = make_runner(make_config(spec["cfg"]), data, spec["seed"], spec["folds"], device="cpu")
    wall = _load_checkpoint(spec["checkpoint"], runner)
    _write_result(runner, spec, data, "pruned", wall, node)
    Path(spec["checkpoint"]).unlink(missing_ok=True)
    Path(spec["checkpoint"] + ".pruned").unlink(missing_ok=True)


# ---------------------------------------------------------------- the driver

def _default_gpus_per_trial(data):
    return 0.5 if sum(data.dims) > 2048 else 0.25


def _check_storage(root: Path):
    try:
        store.check_writable(root, "storage")
    except store.StoreError as e:
        raise SweepError(str(e)) from None


def _check_ray_start(args):
    """What ray.init would only find out slowly or with a traceback: a dashboard without its
    packages, an address where nothing listens (Ray retries it for many minutes)."""
    address = resolve_address(args.address)
    if args.dashboard and address in (None, "local"):
        try:
            import ray.dashboard.optional_deps  # noqa: F401  Ray's own list of the dashboard's packages
        except ImportError as e:
            raise SweepError(f"--dashboard needs Ray's dashboard packages ({e.name} is missing): "
                             f"pip install 'ray[default]'") from None
    if address in (None, "local", "auto"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise SweepError(f"cannot reach Ray at {hostport} ({e.strerror or e}); is a Ray head running there "
                         f"(ray start --head --port {port})?") from None


def _clean_stale_temp(root: Path, started: float):
    """Temporary files a killed writer left in the sweep folder (a checkpoint's `.NAME.pt.XXX.tmp` is
    megabytes). A sweep folder has one driver at a time, and this runs before it starts any worker,
    so every temp file older than this driver (`started`) belongs to a dead writer."""
    if not root.is_dir():
        return 0
    n = 0
    for path in list(root.rglob(".*.tmp")) + list(root.glob(".pred-*")):
        try:
            if path.lstat().st_mtime >= started:
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n


class _ResumeHint(logging.Filter):
    """Ray Tune ends an interrupted run with 'Resume experiment with: Tuner.restore(...)'; here resuming
    is running the same command again, so its hint is dropped (and ours printed)."""
    interrupted = False

    def filter(self, record):
        if "Tuner.restore" in record.getMessage():
            self.interrupted = True
            return False
        return True


_RESUME_HINT = _ResumeHint()


def _check_settings(root: Path, settings: dict, restart: bool):
    """An existing sweep of this name must have been started with the same settings."""
    path = root / "sweep.json"
    if path.exists() and not restart:
        old = json.loads(path.read_text())
        diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        if diff:
            k = diff[0]
            raise SweepError(f"sweep {root.name!r} at {root.parent} was started with other settings "
                             f"({k}: {json.dumps(old.get(k))} -> {json.dumps(settings.get(k))}"
                             f"{f' and {len(diff) - 1} more' if len(diff) > 1 else ''}); "
                             f"use --name NEW for a new sweep or --restart to start over")


def _save_settings(root: Path, settings: dict):
    store.atomic_write(root / "sweep.json", lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=1, sort_keys=True)))


def _init_ray(args, num_gpus, root):
    import logging
    import ray
    address = resolve_address(args.address) or "local"
    try:
        if address == "local":  # loopback only, token auth, PIDs kept (sweeps/ray_local.py)
            ray_local.start(root, max(1, os.cpu_count() or 1), torch.cuda.device_count() if num_gpus else 0,
                            args.dashboard)
        else:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SweepError(f"cannot join Ray at {address!r}: {str(e).splitlines()[0]}") from None
    have = ray.cluster_resources().get("GPU", 0)
    if num_gpus > have:
        ray.shutdown()
        raise SweepError(f"--num-gpus {num_gpus:g} is more than the cluster has ({have:g} GPUs at {address})")


def _check_cuda_on_workers(gpus_per_trial):
    """GPUs asked for, but a torch without CUDA where the trials run (a venv built on a GPU-less
    login node) would train every trial on CPUs: one probe task on a GPU refuses that up front.
    PRMF_SKIP_CUDA_CHECK=1 skips it, as in slurm/launch_ray.sh."""
    import ray
    if os.environ.get("PRMF_SKIP_CUDA_CHECK") == "1":
        return

    @ray.remote(num_cpus=0, num_gpus=gpus_per_trial)
    def probe():
        import torch
        return torch.cuda.is_available(), torch.__version__, socket.gethostname()

    ok, version, host = ray.get(probe.remote(), timeout=300)
    if not ok:
        ray.shutdown()
        raise SweepError(f"GPUs were asked for (--num-gpus), but torch {version} on {host} has no CUDA: build the "
                         f"nodes' venv with a CUDA torch (make venv CUDA=12.4), or set PRMF_SKIP_CUDA_CHECK=1")


class Progress:
    """A live line (trials done/running/pending, best so far, ETA), and the driver's part of ASHA:
    a trial stopped at a rung without results is scored from its checkpoint and stored as pruned."""

    def __init__(self, name, specs, epochs, asha_milestones, data, already_done):
        from ray.tune import Callback

        outer = self

        class _Callback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                outer.epochs[trial.config["trial"]["trial_id"]] = result.get("epoch", 0)
                score = result.get("val_emoval")
                if score is not None and not math.isnan(score) and score > outer.best[1]:
                    outer.best = (trial.config["trial"]["experiment"], score)
                outer.show(trials)

            def on_trial_complete(self, iteration, trials, trial, **info):
                outer.complete(trial)
                outer.show(trials, force=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.errors.append(trial.config["trial"]["trial_id"])
                outer.show(trials, force=True)

        self.callback = _Callback()
        self.name, self.specs, self.total_epochs = name, specs, epochs
        self.milestones, self.data = set(asha_milestones), data
        self.epochs = {tid: epochs for tid in already_done}
        self.done_before = set(already_done)
        self.best = ("", -math.inf)
        self.errors, self.pruned = [], []
        self.t0, self.last = time.time(), 0.0
        self.tty = sys.stderr.isatty()

    def complete(self, trial):
        spec = trial.config["trial"]
        done = Path(spec["store"]) / "results" / f"{spec['trial_id']}.parquet"
        result = trial.last_result or {}
        if not done.exists() and result.get("epoch") in self.milestones and Path(spec["checkpoint"]).exists():
            node = {k: result.get(k) for k in ("node_ip", "hostname", "node_id")}
            marker = Path(spec["checkpoint"] + ".pruned")  # the decision survives a driver killed right now
            store.atomic_write(marker, lambda tmp: Path(tmp).write_text(json.dumps(node)))
            finish_stopped_trial(spec, self.data, node)
            self.pruned.append(spec["trial_id"])
        self.epochs[spec["trial_id"]] = self.total_epochs  # counts as done for the ETA

    def show(self, trials, force=False):
        now = time.time()
        if not force and now - self.last < (1 if self.tty else 15):
            return
        self.last = now
        states = [t.status for t in trials]
        n = len(self.specs)
        done = len(self.done_before) + states.count("TERMINATED")
        frac = sum(min(e, self.total_epochs) for e in self.epochs.values()) / max(1, n * self.total_epochs)
        eta = (now - self.t0) * (1 - frac) / frac if frac > 0.02 else math.nan
        best = f"best {self.best[0]} {self.best[1]:.4f}" if self.best[0] else "best -"
        line = (f"[{self.name}] done {done}/{n} ({len(self.pruned)} pruned) running {states.count('RUNNING')} "
                f"pending {states.count('PENDING')} errors {len(self.errors)} | {best} (val emoval) | "
                f"ETA {'-' if math.isnan(eta) else time.strftime('%H:%M:%S', time.gmtime(eta))}")
        print(("\r" + line + "\033[K") if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)


def asha_horizon(sweep: Sweep):
    """(epochs, patience, grace period, note) of the sweep; ASHA has one max_t and one grace period
    for all trials, so with ASHA on, points may not differ in epochs (or in patience when the grace
    period comes from it). A grace period longer than the epochs is clamped to them (and said)."""
    args = sweep.args
    cfgs = [p.cfg for p in sweep.points] or [sweep.search.base_cfg]  # Optuna: no points up front
    epochs = {c.epochs for c in cfgs}
    patience = {c.patience for c in cfgs}
    if sweep.asha and (len(epochs) > 1 or (len(patience) > 1 and args.grace_period is None)):
        key = "epochs" if len(epochs) > 1 else "patience"
        raise SweepError(f"the points differ in {key} ({', '.join(map(str, sorted(epochs if key == 'epochs' else patience)))}), "
                         f"but ASHA prunes all trials on one schedule: run one sweep per {key} value, or turn "
                         f"pruning off{' (--no-asha)' if sweep.kind == 'grid' else ''}"
                         f"{'' if key == 'epochs' else ', or give --grace-period'}")
    grace = args.grace_period or min(patience)
    note = ""
    if grace > max(epochs):
        note = f" (the {'--grace-period' if args.grace_period else 'patience'} {grace} clamped to the {max(epochs)} epochs)"
        grace = max(epochs)
    return max(epochs), min(patience), grace, note


def trial_specs(sweep: Sweep, name: str, root: Path, milestones, data=None):
    args = sweep.args
    cpus = args.cpus_per_trial
    specs = []
    for p in sweep.points:
        for seed in range(args.seeds):
            tid = records.trial_id(p.tag or p.label, p.cfg, seed, data)
            old = records.trial_id(p.tag or p.label, p.cfg, seed)  # before the data set was in the id
            if (root / "results" / f"{old}.parquet").exists() or (root / "checkpoints" / f"{old}.pt").exists():
                tid = old  # a sweep started before: its trials keep their ids, nothing is trained twice
            specs.append({"trial_id": tid, "experiment": p.label, "identical": list(p.identical), "seed": seed,
                          "cfg": p.cfg.to_dict(),
                          "sweep": name, "store": str(root), "checkpoint": str(root / "checkpoints" / f"{tid}.pt"),
                          "folds": args.folds, "checkpoint_every": args.checkpoint_every,
                          "milestones": milestones, "cpus": cpus, "robustness": True,
                          "commit": provenance.git_commit()})
    return specs


def run(sweep: Sweep) -> int:
    """Run (or resume) a sweep; returns the process exit code."""
    args = sweep.args
    try:
        return _run(sweep)
    except (SweepError, ConfigError, DataError, trackers.TrackerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to resume sweep {args.name!r}", file=sys.stderr)
        return 130


def _run(sweep: Sweep) -> int:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from sweeps.asha import PersistentASHA

    args = sweep.args
    started = time.time()
    if args.folds < 2 or args.seeds < 1 or args.checkpoint_every < 1 or args.cpus_per_trial <= 0 or \
            (args.grace_period is not None and args.grace_period < 1):
        raise SweepError("--folds must be >= 2, --seeds >= 1, --checkpoint-every >= 1, --grace-period >= 1, "
                         "--cpus-per-trial > 0")
    if args.num_gpus < 0 or (args.gpus_per_trial is not None and not 0 < args.gpus_per_trial <= max(1, args.num_gpus)):
        raise SweepError(f"--gpus-per-trial must be in (0, {max(1, args.num_gpus):g}] and --num-gpus >= 0")
    epochs, patience, grace, grace_note = asha_horizon(sweep)
    _check_ray_start(args)
    features = args.features.split(",") if args.features else None
    data = load_data(args.data, features, args.profile, name=args.dataset_name)
    check_folds(data, args.folds)
    for p in sweep.points:  # -FRA folders: frame-level encoders
        p.cfg = for_data(p.cfg, data.feat_type)
    data_tag = "synthetic-" + args.profile if args.data == "synthetic" else Path(args.data).name
    args.name = args.name or f"{sweep.kind}-{data_tag}"
    root = (Path(args.storage) if args.storage else DEFAULT_STORAGE).resolve() / args.name
    _check_storage(root.parent)
    try:
        lock.acquire(root)  # one driver per sweep, held until this process exits
    except lock.LockedError as e:
        raise SweepError(str(e)) from None
    ray_local.end_leftovers(root)  # this driver holds the lock: the last one is dead
    settings = {"kind": sweep.kind, "data": args.data, "features": list(data.features), "profile": args.profile,
                "folds": args.folds, "seeds": args.seeds, "asha": sweep.asha, "points": [p.label for p in sweep.points],
                **{f"{p.label}.{k}": v for p in sweep.points for k, v in p.cfg.to_dict().items()}, **sweep.settings}
    _check_settings(root, settings, args.restart)
    if args.restart:
        for p in root.iterdir():  # all but the lock this driver holds
            if p.name != lock.LOCK_FILE:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    cleaned = _clean_stale_temp(root, started)
    if cleaned:
        print(f"removed {cleaned} temporary file(s) left by killed writers in {root}", file=sys.stderr)

    milestones = _asha_milestones(grace, epochs) if sweep.asha else []
    specs = trial_specs(sweep, args.name, root, milestones, data)
    tracking = trackers.prepare(args, args.name, data, root)  # {'mlflow': {...}} or {}
    search_ctx = dict(sweep=sweep, name=args.name, root=root, milestones=milestones, tracking=tracking, data=data)
    if sweep.search:  # Optuna: the points proposed so far (recorded in the sweep folder)
        specs = sweep.search.recorded(search_ctx)
    for s in specs:
        s.update(tracking)
    done = store.completed_trials(root)
    for s in specs:  # ASHA stopped it, but the driver died before storing it
        if Path(s["checkpoint"] + ".pruned").exists() and s["trial_id"] not in done:
            finish_stopped_trial(s, data, json.loads(Path(s["checkpoint"] + ".pruned").read_text()))
    done = store.completed_trials(root)
    pending = [s for s in specs if s["trial_id"] not in done]
    gpus_per_trial = (args.gpus_per_trial or _default_gpus_per_trial(data)) if args.num_gpus else 0
    for note in sweep.notes:  # after the up-front checks: a refused sweep prints its error alone
        print(f"note: {note}", file=sys.stderr)
    print(f"sweep {args.name}: {len(specs)} trials ({len(sweep.points)} points x {args.seeds} seeds x {args.folds} folds), "
          f"{len(specs) - len(pending)} already done; {epochs} epochs, patience {patience}, "
          f"{f'ASHA grace {grace}{grace_note}' if sweep.asha else 'no pruning'}; "
          f"{gpus_per_trial:g} GPU + {args.cpus_per_trial:g} CPU per trial; store {root}", file=sys.stderr)
    if sweep.search.todo(done) if sweep.search else pending:
        logging.getLogger("ray.tune.tune").addFilter(_RESUME_HINT)  # once, however many sweeps run
        _save_settings(root, settings)  # before Ray starts: a second driver checks against it
        provenance.write_run(root, provenance.collect(), {s["trial_id"]: {k: s[k] for k in ("experiment", "seed", "cfg")}
                                                         for s in specs})
        _init_ray(args, args.num_gpus, root)
        if gpus_per_trial:
            _check_cuda_on_workers(gpus_per_trial)
        progress = Progress(args.name, [None] * sweep.search.n if sweep.search else specs, epochs, milestones, data, done)
        trainable = tune.with_resources(tune.with_parameters(run_trial, data=data),
                                        {"cpu": args.cpus_per_trial, "gpu": gpus_per_trial})
        scheduler = (PersistentASHA(root / "asha_rungs.json", time_attr="epoch", max_t=epochs, grace_period=grace,
                                    reduction_factor=ASHA_REDUCTION) if sweep.asha else FIFOScheduler())
        max_concurrent = int(args.num_gpus // gpus_per_trial) if gpus_per_trial else 0
        run_index = len(list((root / "tune").glob("run-*"))) if (root / "tune").exists() else 0
        tuner = tune.Tuner(
            trainable,
            param_space={} if sweep.search else {"trial": tune.grid_search(pending)},
            tune_config=tune.TuneConfig(metric="val_emoval", mode="max", scheduler=scheduler, reuse_actors=True,
                                        **{"max_concurrent_trials": max_concurrent or None,
                                           **(sweep.search.tune_config(search_ctx, done, pending) if sweep.search else {})}),
            run_config=tune.RunConfig(name=f"run-{run_index:03d}", storage_path=str(root / "tune"), verbose=0,
                                      callbacks=[progress.callback, *trackers.callbacks(args, args.name)],
                                      failure_config=tune.FailureConfig(max_failures=args.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        _RESUME_HINT.interrupted = False
        tuner.fit()
        if progress.tty:
            print(file=sys.stderr)
        if _RESUME_HINT.interrupted:  # Ctrl-C or SIGUSR1: Tune stopped its trials and returned
            raise KeyboardInterrupt
    results = store.read_results(root) if store.is_store(root) else None  # None: no trial finished yet
    done = store.completed_trials(root)
    specs = sweep.search.recorded(search_ctx) if sweep.search else specs
    trackers.sync(specs, done)  # MLflow: stored trials whose run was never closed (or never made)
    missing = sweep.search.missing(search_ctx, done) if sweep.search else [s["trial_id"] for s in specs if s["trial_id"] not in done]
    summary(results)
    if missing:
        print(f"error: {len(missing)} trial(s) did not finish ({', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}); "
              f"run the same command again to retry them", file=sys.stderr)
        return 1
    print(f"results: {root}  (python analysis/best_results.py --result-dir {root})", file=sys.stderr)
    return 0


def summary(results):
    """ACC per experiment and split, mean ± std over folds (and seeds) of the per-fold clean rows of
    the trials that ran to their end; a line says so when the data are generated."""
    if results is None or results.empty:
        return
    stopped = results["status"].isin(records.NOT_COUNTED)
    folds = results[~stopped & ~results.is_aggregate & (results.scenario == "clean")]
    if not folds.empty:
        stats = folds.groupby(["experiment", "split"])["acc"].agg(["mean", "std"]).fillna(0.0)
        table = stats.apply(lambda r: f"{r['mean']:.4f} ± {r['std']:.4f}", axis=1).unstack("split")
        print("ACC, mean ± std over folds:\n" + table.fillna("–").to_string(), file=sys.stderr)
    if stopped.any():
        print(f"({results[stopped].trial_id.nunique()} pruned/failed/diverged trials left out)", file=sys.stderr)
    names = sorted(results["dataset"].dropna().unique()) if "dataset" in results else []
    if any("synthetic" in n for n in names):
        print(f"data: {', '.join(names)} is generated; these numbers show the pipeline works, "
              f"not the paper's claims", file=sys.stderr)
