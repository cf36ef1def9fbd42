"""The sweep core shared by `ablation.py` and `grid.py`: packs of trials as Ray Tune trials.

A trial is one (config, seed) over its folds. Trials that share an architecture (grid points and
seeds differ only in config.MEMBER_KEYS) are packed (`--pack`), and a pack is one Tune trial: one
batched model of all its trials' folds (prmf/engine.py). It reports every epoch; at ASHA's rungs
it prunes its own trials by ASHA's rule (sweeps/asha.py); each fold still stops by its own
patience. A trial's results go into the store under STORAGE/NAME/ as soon as it ends (finished or
pruned), by the worker. Resume = run the same command again: the same packs (packs.json) run in a
fresh Tuner, each from its last checkpoint, leaving out the trials already stored.
"""
import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # trials sharing cores: spinning threads cost 2-7x (benchmarks/RESULTS.md)

import torch  # noqa: E402

from cluster.address import grpc_problem, resolve_address  # noqa: E402
from prmf import provenance, records, store  # noqa: E402
from prmf.config import ConfigError, for_data, make_config, pack_key, parse_sets  # noqa: E402
from prmf.data import DataError, check_folds, load_data  # noqa: E402
from prmf.robustness import scenarios as robustness_scenarios  # noqa: E402
from sweeps import asha, checkpoints, lock, ray_local, trackers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORAGE = REPO / "runs"
QUICK = dict(epochs=15, batch_size=64, lr=1e-3)  # demo settings: minutes on 2 cores
AUTO_PACK_MAX = 27  # trials per pack on a GPU: the paper's grid in one batched model
AUTO_PACK_MAX_CPU = 9  # on CPUs the step is memory-bound: packs of 9 were the fastest measured (benchmarks/RESULTS.md)


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
class RunSettings:
    """Where and how a sweep runs (data, folds, seeds, resources, storage), as plain data: the
    CLI's flags once parsed, so nothing below reads the argparse namespace."""
    data: str = "synthetic"
    features: list | None = None
    profile: str = "small"
    dataset_name: str | None = None
    folds: int = 5
    seeds: int = 1
    grace_period: int | None = None
    num_gpus: float = 0
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 1
    pack: str = "auto"
    address: str | None = None
    storage: str | None = None
    name: str | None = None
    restart: bool = False
    checkpoint_every: int = 10
    max_failures: int = 3
    dashboard: bool = False

    @classmethod
    def from_args(cls, args):
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        values["features"] = args.features.split(",") if args.features else None
        return cls(**values)

    def check(self):
        if self.folds < 2 or self.seeds < 1 or self.checkpoint_every < 1 or self.cpus_per_trial <= 0 or \
                (self.grace_period is not None and self.grace_period < 1):
            raise SweepError("--folds must be >= 2, --seeds >= 1, --checkpoint-every >= 1, --grace-period >= 1, "
                             "--cpus-per-trial > 0")
        if self.num_gpus < 0 or (self.gpus_per_trial is not None and not 0 < self.gpus_per_trial <= max(1, self.num_gpus)):
            raise SweepError(f"--gpus-per-trial must be in (0, {max(1, self.num_gpus):g}] and --num-gpus >= 0")
        _pack_size(self.pack)


@dataclass
class Sweep:
    kind: str  # 'ablation' or 'grid'
    points: list
    args: argparse.Namespace  # the CLI's flags (trackers and searches read their own)
    asha: bool = False
    settings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)  # printed at start (e.g. rows that cannot differ yet)
    search: object = None  # sweeps/search.OptunaSearch: points proposed while the sweep runs
    run: RunSettings = None

    def __post_init__(self):
        self.run = self.run or RunSettings.from_args(self.args)


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
    ap.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs per Tune trial, i.e. per pack (default 1)")
    ap.add_argument("--pack", default="auto", help="trials trained together as one batched model: auto (default: "
                    "as many as memory allows, spread over the free slots, at most %d on a GPU, %d on CPUs), N, or 1 "
                    "(none); only trials that differ in loss weights, temperatures, dropout, lr, weight decay or seed "
                    "pack" % (AUTO_PACK_MAX, AUTO_PACK_MAX_CPU))
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


# ---------------------------------------------------------------- the trial (runs on a worker)

def _node_info():
    import ray
    return {"node_ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id()}


def _write_results(engine, pack, trials, status, wall_time_s, node):
    """Score `trials` (indices into the pack) at their best epochs and store each as one trial."""
    specs = pack["trials"]
    results = engine.finish(robustness_scenarios() if pack["robustness"] else None, trials)
    for t in trials:
        spec = specs[t]
        cfg = make_config(spec["cfg"])
        rows, epochs, predictions = records.tables(
            results[t], tid=spec["trial_id"], sweep=spec["sweep"], experiment=spec["experiment"], cfg=cfg,
            seed=spec["seed"], dataset=engine.data, status=status, wall_time_s=wall_time_s,
            extra={**node, "pack": pack["id"]}, identical=spec.get("identical", ()), commit=spec.get("commit", "unknown"))
        store.write_trial(spec["store"], spec["trial_id"], rows, epochs, predictions)
        trackers.log_result(spec, status)  # MLflow: final metrics, NPZ artifacts, run closed


def solo_pack(spec) -> dict:
    """A pack of one trial (a point proposed by a search while the sweep runs)."""
    return {"id": spec["trial_id"], "trials": [spec], **{k: spec[k] for k in PACK_FIELDS}}


PACK_FIELDS = ("store", "folds", "checkpoint_every", "milestones", "cpus", "robustness")


def run_pack(config, data=None):
    """Tune function trainable: a pack of trials trained as one batched model, checkpointed
    through Tune between epochs (sweeps/checkpoints.py), pruned trial by trial at ASHA's rungs,
    each trial stored when it ends; trials stored before are left out of the batch."""
    from ray import tune

    from prmf.engine import Engine

    pack = config.get("pack") or solo_pack(config["trial"])
    specs = pack["trials"]
    torch.set_num_threads(max(1, int(pack["cpus"])))
    done = [t for t, s in enumerate(specs) if (Path(s["store"]) / "results" / f"{s['trial_id']}.parquet").exists()]
    if len(done) == len(specs):
        tune.report({"epoch": 0, "val_emoval": float("nan"), "already_done": True})  # never train it again
        return
    engine = Engine([(make_config(s["cfg"]), s["seed"]) for s in specs], data, pack["folds"])
    wall0 = checkpoints.restore(engine, pack["store"], pack["id"])
    engine.prune(done)  # stored before (finished or pruned): out of the batch
    written = set(done)
    node = _node_info()
    runs = {t: trackers.start(s) for t, s in enumerate(specs) if t not in written}  # MLflow run per trial
    rungs, milestones = asha.Rungs(Path(pack["store"]) / "asha_rungs.json"), set(pack["milestones"])
    t0 = time.time()
    while not engine.done:
        scores = engine.step()
        wall = wall0 + time.time() - t0
        for t, score in scores.items():
            runs[t].epoch({"epoch": engine.epoch, "val_emoval": score, "folds_running": engine.running(t), **node})
        if engine.epoch in milestones:
            stop = rungs.judge(engine.epoch, {specs[t]["trial_id"]: s for t, s in scores.items()})
            pruned = [t for t in scores if specs[t]["trial_id"] in stop and engine.running(t)]
            if pruned:
                _write_results(engine, pack, pruned, "pruned", wall, node)
                engine.prune(pruned)
                written.update(pruned)
        ended = [t for t in range(len(specs)) if t not in written and not engine.running(t)]
        if ended:
            _write_results(engine, pack, ended, "finished", wall, node)
            written.update(ended)
        finite = [s for s in scores.values() if math.isfinite(s)]
        metrics = {"epoch": engine.epoch, "val_emoval": max(finite) if finite else float("nan"),
                   "trials_running": sum(1 for t in range(len(specs)) if engine.running(t)), **node}
        save = not engine.done and (engine.epoch % pack["checkpoint_every"] == 0 or engine.epoch in milestones)
        checkpoints.report(metrics, engine if save else None, wall, pack["id"])  # Tune keeps the checkpoint


# ---------------------------------------------------------------- the driver

def _default_gpus_per_trial(data):
    return 0.5 if sum(data.dims) > 2048 else 0.25


def _check_storage(root: Path):
    try:
        store.check_writable(root, "storage")
    except store.StoreError as e:
        raise SweepError(str(e)) from None


def _check_ray_start(run):
    """What ray.init would only find out slowly or with a traceback, decided before anything is
    written: a dashboard without its packages, more GPUs than a local Ray would get, an address
    where nothing listens or something else than Ray does (Ray retries either for many minutes)."""
    address = resolve_address(run.address)
    if run.dashboard and address in (None, "local"):
        try:
            import ray.dashboard.optional_deps  # noqa: F401  Ray's own list of the dashboard's packages
        except ImportError as e:
            raise SweepError(f"--dashboard needs Ray's dashboard packages ({e.name} is missing): "
                             f"pip install 'ray[default]'") from None
    if address in (None, "local") and run.num_gpus > torch.cuda.device_count():  # the local Ray gets only these
        raise SweepError(f"--num-gpus {run.num_gpus:g} is more than this machine has ({torch.cuda.device_count()} GPUs)")
    if address in (None, "local", "auto"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        problem = grpc_problem(host.strip("[]"), int(port), tls=os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"))
    except OSError as e:
        raise SweepError(f"cannot reach Ray at {hostport} ({e.strerror or e}); is a Ray head running there "
                         f"(ray start --head --port {port})?") from None
    if problem:
        raise SweepError(f"{hostport} is not a Ray GCS ({problem}); give the address that ray start --head prints "
                         f"(its default port is 6379)")


def _restart(root: Path):
    """--restart: say what goes (stored trials, files), then delete all but the lock this driver holds."""
    doomed = sorted(p for p in root.iterdir() if p.name != lock.LOCK_FILE)
    if not doomed:
        return
    trials = sorted(store.completed_trials(root))
    files = sum(1 for p in doomed for f in ([p] if not p.is_dir() or p.is_symlink() else p.rglob("*")) if not f.is_dir())
    named = f" ({', '.join(trials[:5])}{f' and {len(trials) - 5} more' if len(trials) > 5 else ''})" if trials else ""
    print(f"--restart: deleting sweep {root.name!r} at {root}: {len(trials)} stored trial{'s' if len(trials) != 1 else ''}"
          f"{named}, {files} files in {', '.join(p.name + ('/' if p.is_dir() and not p.is_symlink() else '') for p in doomed)}",
          file=sys.stderr)
    for p in doomed:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


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


class _WorkerDied(logging.Filter):
    """Tune logs a trial whose worker died (killed, OOM, node lost) with Ray's whole traceback, then
    retries it; the progress callback says it in one line instead (`reason`, taken from here).
    Any other failure of a trial keeps its traceback: that one is a bug to read."""
    reason = ""

    def filter(self, record):
        from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError
        e = record.exc_info[1] if record.exc_info else None
        if not isinstance(e, (RayActorError, WorkerCrashedError, NodeDiedError)):
            return True
        self.reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        return False


_WORKER_DIED = _WorkerDied()


def _check_settings(root: Path, settings: dict, restart: bool):
    """An existing sweep of this name must have been started with the same settings."""
    path = root / "sweep.json"
    if path.exists() and not restart:
        old = json.loads(path.read_text())
        diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)
                and not (k not in old and settings.get(k) == LATER_SETTINGS.get(k))]  # a sweep started before it existed
        if diff:
            k = diff[0]
            raise SweepError(f"sweep {root.name!r} at {root.parent} was started with other settings "
                             f"({k}: {json.dumps(old.get(k))} -> {json.dumps(settings.get(k))}"
                             f"{f' and {len(diff) - 1} more' if len(diff) > 1 else ''}); "
                             f"use --name NEW for a new sweep or --restart to start over")


LATER_SETTINGS = {"pack": "auto"}  # settings added since sweeps began to record them: their default matches


def _save_settings(root: Path, settings: dict):
    store.atomic_write(root / "sweep.json", lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=1, sort_keys=True)))


def _init_ray(run, num_gpus, root):
    import logging
    import ray
    address = resolve_address(run.address) or "local"
    try:
        if address == "local":  # loopback only, token auth, PIDs kept (sweeps/ray_local.py)
            ray_local.start(root, max(1, os.cpu_count() or 1), torch.cuda.device_count() if num_gpus else 0,
                            run.dashboard)
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
    """A live line: trials stored/total, packs running and pending, best
    validation score so far, ETA from the epochs the packs have run."""

    def __init__(self, name, root, n_trials, packs, epochs):
        from ray.tune import Callback

        outer = self

        class _Callback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                outer.epochs[_pack_id(trial.config)] = result.get("epoch", 0)
                score = result.get("val_emoval")
                if score is not None and not math.isnan(score) and score > outer.best:
                    outer.best = score
                outer.show(trials)

            def on_trial_complete(self, iteration, trials, trial, **info):
                outer.epochs[_pack_id(trial.config)] = outer.total_epochs  # counts as done for the ETA
                outer.show(trials, force=True)

            def on_trial_recover(self, iteration, trials, trial, **info):
                outer.failed(trials, trial, "retried from its last checkpoint")

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.failed(trials, trial, "not retried (--max-failures reached)")

        self.callback = _Callback()
        self.name, self.root, self.n_trials, self.n_packs, self.total_epochs = name, root, n_trials, packs, epochs
        self.epochs, self.best, self.errors = {}, -math.inf, []
        self.t0, self.last = time.time(), 0.0
        self.tty = sys.stderr.isatty()

    def failed(self, trials, trial, then):
        """A pack's worker failed: one line (why, from _WORKER_DIED), counted in the progress line."""
        self.errors.append(_pack_id(trial.config))
        if _WORKER_DIED.reason:
            print(f"{chr(10) if self.tty else ''}pack {_pack_id(trial.config)}: its worker died ({_WORKER_DIED.reason}); "
                  f"{then}", file=sys.stderr)
            _WORKER_DIED.reason = ""
        self.show(trials, force=True)

    def show(self, trials, force=False):
        now = time.time()
        if not force and now - self.last < (1 if self.tty else 15):
            return
        self.last = now
        states = [t.status for t in trials]
        done = len(store.completed_trials(self.root))
        frac = sum(min(e, self.total_epochs) for e in self.epochs.values()) / max(1, self.n_packs * self.total_epochs)
        eta = (now - self.t0) * (1 - frac) / frac if frac > 0.02 else math.nan
        best = f"best {self.best:.4f}" if self.best > -math.inf else "best -"
        line = (f"[{self.name}] trials done {done}/{self.n_trials} | packs "
                f"running {states.count('RUNNING')} pending {states.count('PENDING')} errors {len(self.errors)} | "
                f"{best} (val emoval) | ETA {'-' if math.isnan(eta) else time.strftime('%H:%M:%S', time.gmtime(eta))}")
        print(("\r" + line + "\033[K") if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)


MEMBER_NOTE = ("loss weights", "temperatures", "dropout", "lr", "weight decay", "seed")


def ray_cpus() -> float:
    import ray
    return ray.cluster_resources().get("CPU", 1)


def _pack_id(config):
    return config["pack"]["id"] if "pack" in config else config["trial"]["trial_id"]


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


def trial_specs(sweep: Sweep, name: str, root: Path, milestones, data=None):
    run = sweep.run
    specs = []
    for p in sweep.points:
        for seed in range(run.seeds):
            tid = records.trial_id(p.tag or p.label, p.cfg, seed, data)
            old = records.trial_id(p.tag or p.label, p.cfg, seed)  # before the data set was in the id
            if (root / "results" / f"{old}.parquet").exists():
                tid = old  # a sweep started before: its trials keep their ids, nothing is trained twice
            specs.append({"trial_id": tid, "experiment": p.label, "identical": list(p.identical), "seed": seed,
                          "cfg": p.cfg.to_dict(), "sweep": name, "store": str(root), "folds": run.folds,
                          "checkpoint_every": run.checkpoint_every, "milestones": milestones,
                          "cpus": run.cpus_per_trial, "robustness": True, "commit": provenance.git_commit()})
    return specs


def _pack_size(arg) -> int | None:
    """--pack as a number (None: auto)."""
    if arg == "auto":
        return None
    if not str(arg).isdigit() or int(arg) < 1:
        raise SweepError(f"--pack {arg!r}: expected auto, or a number of trials >= 1 (1: no packing)")
    return int(arg)


def _auto_pack_size(specs, data, slots, gpus_per_trial) -> int:
    """As many trials per pack as half the memory of one trial slot holds (weights, gradients, AdamW
    moments and best states of every fold), spread over the free slots, at most AUTO_PACK_MAX on a
    GPU and AUTO_PACK_MAX_CPU on CPUs."""
    import ray

    from prmf.models import build_model, n_params
    cfg = make_config(specs[0]["cfg"])
    per_trial = n_params(build_model(cfg, data.dims, len(data.classes), init=False)) * 4 * 5 * specs[0]["folds"]
    if gpus_per_trial:
        gpu = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 16 * 2 ** 30
        budget = gpus_per_trial * gpu / 2
    else:
        budget = ray.cluster_resources().get("memory", 8 * 2 ** 30) / max(1, slots) / 2
    cap = AUTO_PACK_MAX if gpus_per_trial else AUTO_PACK_MAX_CPU
    return int(max(1, min(cap, budget // per_trial, math.ceil(len(specs) / max(1, slots)))))


def make_packs(specs, size, root, data, slots, gpus_per_trial):
    """[(pack id, [specs])]: trials that may share a batched model (same config.pack_key) in packs
    of `size` (None: auto), balanced; the packs of a sweep's first run (packs.json) are kept on resume."""
    saved = root / "packs.json"
    stored = json.loads(saved.read_text()) if saved.exists() else {}
    by_id = {s["trial_id"]: s for s in specs}
    packs = [(pid, [by_id[t] for t in tids if t in by_id]) for pid, tids in stored.items()]
    packs = [(pid, members) for pid, members in packs if members]
    placed = {t for tids in stored.values() for t in tids}
    groups = {}
    for s in specs:
        if s["trial_id"] not in placed:
            groups.setdefault(pack_key(make_config(s["cfg"])), []).append(s)
    for group in groups.values():
        n = size or _auto_pack_size(group, data, slots, gpus_per_trial)
        k = math.ceil(len(group) / n)
        for chunk in (group[i::k] for i in range(k)):  # k packs of near-equal size
            tids = [s["trial_id"] for s in chunk]
            pid = tids[0] if len(tids) == 1 else "pack-" + hashlib.sha1(",".join(tids).encode()).hexdigest()[:8]
            packs.append((pid, chunk))
    ids = {pid: [s["trial_id"] for s in members] for pid, members in packs}
    if ids != stored:
        store.atomic_write(saved, lambda tmp: Path(tmp).write_text(json.dumps({**stored, **ids}, indent=1)))
    return packs


def run(sweep: Sweep) -> int:
    """Run (or resume) a sweep; returns the process exit code."""
    try:
        return _run(sweep)
    except (SweepError, ConfigError, DataError, trackers.TrackerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to resume sweep {sweep.run.name!r}", file=sys.stderr)
        return 130


def _run(sweep: Sweep) -> int:
    from ray import tune

    run = sweep.run
    started = time.time()
    run.check()
    pack_size = _pack_size(run.pack)
    epochs, patience, grace, grace_note = asha_horizon(sweep)
    _check_ray_start(run)
    data = load_data(run.data, run.features, run.profile, name=run.dataset_name)
    check_folds(data, run.folds)
    for p in sweep.points:  # -FRA folders: frame-level encoders
        p.cfg = for_data(p.cfg, data.feat_type)
    data_tag = "synthetic-" + run.profile if run.data == "synthetic" else Path(run.data).name
    run.name = run.name or f"{sweep.kind}-{data_tag}"
    root = (Path(run.storage) if run.storage else DEFAULT_STORAGE).resolve() / run.name
    _check_storage(root.parent)
    try:
        lock.acquire(root)  # one driver per sweep, held until this process exits
    except lock.LockedError as e:
        raise SweepError(str(e)) from None
    ray_local.end_leftovers(root)  # this driver holds the lock: the last one is dead
    settings = {"kind": sweep.kind, "data": run.data, "features": list(data.features), "profile": run.profile,
                "folds": run.folds, "seeds": run.seeds, "asha": sweep.asha, "points": [p.label for p in sweep.points],
                **{f"{p.label}.{k}": v for p in sweep.points for k, v in p.cfg.to_dict().items()}, **sweep.settings,
                "pack": run.pack}
    _check_settings(root, settings, run.restart)
    tracking = trackers.prepare(sweep.args, run.name, data, root)  # {'mlflow': {...}} or {}; refused before --restart deletes
    if run.restart:
        _restart(root)
    cleaned = _clean_stale_temp(root, started)
    if cleaned:
        print(f"removed {cleaned} temporary file(s) left by killed writers in {root}", file=sys.stderr)

    milestones = asha.milestones(grace, epochs) if sweep.asha else []
    specs = trial_specs(sweep, run.name, root, milestones, data)
    search_ctx = dict(sweep=sweep, name=run.name, root=root, milestones=milestones, tracking=tracking, data=data)
    if sweep.search:  # Optuna: the points proposed so far (recorded in the sweep folder)
        specs = sweep.search.recorded(search_ctx)
    for s in specs:
        s.update(tracking)
    done = store.completed_trials(root)
    pending = [s for s in specs if s["trial_id"] not in done]
    gpus_per_trial = (run.gpus_per_trial or _default_gpus_per_trial(data)) if run.num_gpus else 0
    for note in sweep.notes:  # after the up-front checks: a refused sweep prints its error alone
        print(f"note: {note}", file=sys.stderr)
    print(f"sweep {run.name}: {len(specs)} trials ({len(sweep.points)} points x {run.seeds} seeds x {run.folds} folds), "
          f"{len(specs) - len(pending)} already done; {epochs} epochs, patience {patience}, "
          f"{f'ASHA grace {grace}{grace_note}' if sweep.asha else 'no pruning'}; "
          f"{gpus_per_trial:g} GPU + {run.cpus_per_trial:g} CPU per pack; store {root}", file=sys.stderr)
    if sweep.search.todo(done) if sweep.search else pending:
        logging.getLogger("ray.tune.tune").addFilter(_RESUME_HINT)  # once, however many sweeps run
        logging.getLogger("ray.tune.execution.tune_controller").addFilter(_WORKER_DIED)
        _save_settings(root, settings)  # before Ray starts: a second driver checks against it
        provenance.write_run(root, provenance.collect(), {s["trial_id"]: {k: s[k] for k in ("experiment", "seed", "cfg")}
                                                         for s in specs})
        _init_ray(run, run.num_gpus, root)
        if gpus_per_trial:
            _check_cuda_on_workers(gpus_per_trial)
        max_concurrent = int(run.num_gpus // gpus_per_trial) if gpus_per_trial else 0
        slots = max_concurrent or int(ray_cpus() // run.cpus_per_trial)
        packs = [] if sweep.search else [(pid, members) for pid, members in  # all of a pack's trials: its checkpoint's
                                         make_packs(specs, pack_size, root, data, slots, gpus_per_trial)
                                         if any(s["trial_id"] not in done for s in members)]
        if packs and len(packs) < len(pending):
            sizes = sorted({len(m) for _, m in packs})
            print(f"packs: {len(pending)} trials in {len(packs)} packs of {'/'.join(map(str, sizes))} "
                  f"(--pack {run.pack}; trials that differ in more than {', '.join(MEMBER_NOTE)} never share one)",
                  file=sys.stderr)
        progress = Progress(run.name, root, sweep.search.n if sweep.search else len(specs),
                            len(packs) or len(pending) or 1, epochs)
        trainable = tune.with_resources(tune.with_parameters(run_pack, data=data),
                                        {"cpu": run.cpus_per_trial, "gpu": gpus_per_trial})
        pack_space = [{"id": pid, "trials": members, **{k: members[0][k] for k in PACK_FIELDS}} for pid, members in packs]
        run_index = len(list((root / "tune").glob("run-*"))) if (root / "tune").exists() else 0
        tuner = tune.Tuner(
            trainable,
            param_space={} if sweep.search else {"pack": tune.grid_search(pack_space)},
            tune_config=tune.TuneConfig(metric="val_emoval", mode="max", reuse_actors=True,
                                        **{"max_concurrent_trials": max_concurrent or None,
                                           **(sweep.search.tune_config(search_ctx, done, pending) if sweep.search else {})}),
            run_config=tune.RunConfig(name=f"run-{run_index:03d}", storage_path=str(root / "tune"), verbose=0,
                                      callbacks=[progress.callback, *trackers.callbacks(sweep.args, run.name, root)],
                                      failure_config=tune.FailureConfig(max_failures=run.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))  # 2: one may be cut short
        _RESUME_HINT.interrupted = False
        tuner.fit()
        if progress.tty:
            print(file=sys.stderr)
        if _RESUME_HINT.interrupted:  # Ctrl-C or SIGUSR1: Tune stopped its trials and returned
            raise KeyboardInterrupt
    results = store.read_results(root) if store.is_store(root) else None  # None: no trial finished yet
    done = store.completed_trials(root)
    saved = root / "packs.json"
    checkpoints.remove_finished(root, json.loads(saved.read_text()) if saved.exists() else {}, done)
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
    diverged = [f"{r.trial_id} at epoch {r.diverged_epoch}" for r in records.diverged_trials(results).itertuples()]
    if diverged:
        print(f"diverged (left out): {', '.join(diverged[:10])}{f' and {len(diverged) - 10} more' if len(diverged) > 10 else ''}",
              file=sys.stderr)
    names = sorted(results["dataset"].dropna().unique()) if "dataset" in results else []
    if any("synthetic" in n for n in names):
        print(f"data: {', '.join(names)} is generated; these numbers show the pipeline works, "
              f"not the paper's claims", file=sys.stderr)
