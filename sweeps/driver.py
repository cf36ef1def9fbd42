"""The driver of a sweep: the up-front checks (nothing is written before a refusal can be decided),
the sweep folder (one driver per sweep, its settings, --restart), Ray's start, the run, the summary.

A trial is one (config, seed) over its folds. Trials that share an architecture are packed
(sweeps/plan.py), and a pack is one Tune trial (sweeps/tune_adapter.py) that runs the pack's loop
(sweeps/pack_runner.py): it stores every trial under STORAGE/NAME/ as soon as it ends. Resume =
run the same command again: the same packs (packs.json) run in a fresh Tuner, each from its last
checkpoint, leaving out the trials already stored.
"""
import errno
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # trials sharing cores: spinning threads cost 2-7x (benchmarks/RESULTS.md)
# Tune snapshots its state whenever a trial has saved num_to_keep (2) checkpoints since the last
# snapshot, and warns when that happens more than once in 30 s: here that is the design (Tune keeps
# every pack's checkpoints; the storage is a local or shared filesystem), so the warning only alarms
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import torch  # noqa: E402

from cluster.address import grpc_problem, resolve_address  # noqa: E402
from prmf import provenance, records, store  # noqa: E402
from prmf.compat import LATER_SETTINGS  # noqa: E402
from prmf.config import ConfigError, for_data, stable_dict  # noqa: E402
from prmf.data import DataError, check_folds, load_data  # noqa: E402
from prmf.precision import check as check_precision  # noqa: E402
from sweeps import asha, checkpoints, lock, pack_choice, plan, ray_local, stops, trackers, trials  # noqa: E402
from sweeps.definition import DEFAULT_STORAGE, SweepError, parse_pack  # noqa: E402


def run(sweep) -> int:
    """Run (or resume) a sweep; returns the process exit code."""
    with stops.SIGNALS:
        try:
            return _run(sweep)
        except (SweepError, ConfigError, DataError, trackers.TrackerError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"\n{stops.interrupted(sweep.run)}", file=sys.stderr)
            return stops.SIGNALS.exit_code
        except (OSError, EOFError) as e:  # a full disk: a pack's store write, or Tune's own state files
            full = stops.disk_full(sweep.run, e)
            if not full:
                raise
            print(f"error: {full}", file=sys.stderr)
            return 1


def _run(sweep) -> int:
    data, root, settings, horizon, tracking = _prepare(sweep)
    epochs, patience, grace, grace_note = horizon
    run = sweep.run
    milestones = asha.milestones(grace, epochs) if sweep.asha else []
    ctx = dict(sweep=sweep, name=run.name, root=root, milestones=milestones, tracking=tracking, data=data)
    source = trials.source(sweep)  # a fixed plan, or a search's points proposed so far (recorded in the sweep folder)
    specs = source.known(ctx, plan.trial_specs(sweep, run.name, root, milestones, data))
    for s in specs:
        s.update(tracking)
    done = store.completed_trials(root)
    pending = [s for s in specs if s["trial_id"] not in done]
    gpus_per_trial = (run.gpus_per_trial or (0.5 if sum(data.dims) > 2048 else 0.25)) if run.num_gpus else 0
    for note in sweep.notes:  # after the up-front checks: a refused sweep prints its error alone
        print(f"note: {note}", file=sys.stderr)
    total, todo = source.total(specs), source.todo(specs, done)
    print(f"sweep {run.name}: {total} trials ({source.describe(sweep)} x {run.seeds} seeds x "
          f"{run.folds} folds), {total - todo} already done; "
          f"{epochs} epochs, patience {patience}, "
          f"{f'ASHA grace {grace}{grace_note}' if sweep.asha else 'no pruning'}; "
          f"{gpus_per_trial:g} GPU + {run.cpus_per_trial:g} CPU per pack; store {root}", file=sys.stderr)
    if todo:
        _save_settings(root, settings)  # before Ray starts: a second driver checks against it
        provenance.write_run(root, provenance.collect(), {s["trial_id"]: {k: s[k] for k in ("experiment", "seed", "cfg")}
                                                         for s in specs})
        _launch(sweep, source, root, data, specs, done, pending, gpus_per_trial, epochs, ctx)
    return _finish(sweep, source, root, specs, ctx)


def _prepare(sweep):
    """The checks that need no Ray, the data, the sweep folder (locked, settings checked, trackers
    reached, --restart applied, a killed writer's temporary files removed): (data, root, settings,
    ASHA horizon, trackers' settings for the specs)."""
    run = sweep.run
    started = time.time()
    run.check()
    _check_precision(sweep)
    horizon = plan.asha_horizon(sweep)
    _check_ray_start(run)
    data = load_data(run.data, run.features, run.profile, name=run.dataset_name, allow_overlap=run.allow_split_overlap)
    check_folds(data, run.folds)
    for p in sweep.points:  # -FRA folders: frame-level encoders
        p.cfg = for_data(p.cfg, data.feat_type)
    data_tag = "synthetic-" + run.profile if run.data == "synthetic" else Path(run.data).name
    run.name = run.name or f"{sweep.kind}-{data_tag}"
    root = (Path(run.storage) if run.storage else DEFAULT_STORAGE).resolve() / run.name
    try:
        store.check_writable(root.parent, "storage")
        lock.acquire(root)  # one driver per sweep, held until this process exits
    except (store.StoreError, lock.LockedError) as e:
        raise SweepError(str(e)) from None
    ray_local.end_leftovers(root)  # this driver holds the lock: the last one is dead
    settings = {"kind": sweep.kind, "data": run.data, "features": list(data.features), "profile": run.profile,
                "folds": run.folds, "seeds": run.seeds, "asha": sweep.asha, "points": [p.label for p in sweep.points],
                **{f"{p.label}.{k}": v for p in sweep.points for k, v in stable_dict(p.cfg).items()}, **sweep.settings,
                "pack": run.pack}
    _check_settings(root, settings, run.restart)
    tracking = trackers.prepare(sweep.args, run.name, data, root)  # {'mlflow': {...}} or {}; refused before --restart deletes
    if run.restart:
        _restart(root)
    cleaned = _clean_stale_temp(root, started)
    if cleaned:
        print(f"removed {cleaned} temporary file(s) left by killed writers in {root}", file=sys.stderr)
    return data, root, settings, horizon, tracking


def _launch(sweep, source, root, data, specs, done, pending, gpus_per_trial, epochs, ctx):
    """Start (or join) Ray, pack the trials and run one Tuner over them."""
    from sweeps import tune_adapter
    run = sweep.run
    _init_ray(run, run.num_gpus, root)
    stops.SIGNALS.install()  # ray.init took SIGTERM (its C++ handler dumps a stack and aborts): ours again
    stops.SIGNALS.give_up_after(stops.STOP_GRACE_S, lambda: stops.interrupted(run))
    stops.wait_for_a_node(run.cpus_per_trial, gpus_per_trial, resolve_address(run.address) or "local")
    if gpus_per_trial:
        _check_cuda_on_workers(gpus_per_trial)
    max_concurrent = int(run.num_gpus // gpus_per_trial) if gpus_per_trial else 0
    slots = max_concurrent or int(_ray_resource("CPU", 1) // run.cpus_per_trial)

    def auto(group):  # --pack auto: measured (sweeps/pack_choice.py), said at start
        largest = plan.largest_pack(group, data, slots, gpus_per_trial, _ray_resource("memory", 8 * 2 ** 30))
        if largest <= 1:
            return 1  # as many packs as slots, or memory for one trial: nothing to measure
        size, reason = pack_choice.auto_size(group, data, slots, largest, run.cpus_per_trial, gpus_per_trial, epochs)
        print(f"--pack auto: {size} trial{'s' if size > 1 else ''} per pack for {len(group)} trials of one shape: "
              f"{reason}", file=sys.stderr)
        return size
    packs = source.packs(specs, done, parse_pack(run.pack) or auto, root)
    if packs and len(packs) < len(pending):
        sizes = sorted({len(t) for _, t in packs})
        print(f"packs: {len(pending)} trials in {len(packs)} packs of {'/'.join(map(str, sizes))} "
              f"(--pack {run.pack}; trials that differ in more than {', '.join(plan.MEMBER_NOTE)} never share one)",
              file=sys.stderr)
    to_run = len(packs) or source.todo(specs, done)  # Tune trials this run: packs, or a search's proposals
    progress = tune_adapter.Progress(run.name, root, source.total(specs), to_run or 1, epochs)
    tune_config = source.tune_config(ctx, done, pending, packs)
    if tune_adapter.fit(sweep, root, data, packs, progress, {"cpu": run.cpus_per_trial, "gpu": gpus_per_trial},
                        max_concurrent, tune_config):
        raise KeyboardInterrupt
    if progress.disk_full:  # a pack's store write: the run was stopped (driver.run says it in one line)
        raise OSError(errno.ENOSPC, progress.disk_full)


def _finish(sweep, source, root, specs, ctx) -> int:
    """After the run (or with nothing to run): old checkpoints removed, trackers filled in, the
    summary, and exit status 1 if a trial did not finish."""
    results = (store.read_results(root, columns=SUMMARY_COLUMNS, filters=[("scenario", "==", "clean")], warn=_warn, fold_in=0)
               if store.is_store(root) else None)  # None: no trial finished yet; reading also brings the store's index in step
    done = store.completed_trials(root)
    saved = root / "packs.json"
    checkpoints.remove_finished(root, json.loads(saved.read_text()) if saved.exists() else {}, done)
    specs = source.known(ctx, specs)  # a search's: the points proposed this run too
    trackers.sync(specs, done)  # MLflow: stored trials whose run was never closed (or never made)
    missing = source.missing(ctx, specs, done)
    summary(results)
    if missing:
        print(f"error: {len(missing)} trial(s) did not finish ({', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}); "
              f"run the same command again to retry them", file=sys.stderr)
        return 1
    print(f"results: {root}  (prmf-best-results --result-dir {root})", file=sys.stderr)
    return 0


def _warn(message):
    print(f"warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------- checks and the sweep folder

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
    if address in (None, "local") and run.cpus_per_trial > (os.cpu_count() or 1):  # Ray would wait for it forever
        raise SweepError(f"--cpus-per-trial {run.cpus_per_trial:g} is more than this machine has ({os.cpu_count() or 1} "
                         f"CPUs): no trial could ever start")
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


def _check_precision(sweep):
    """A `precision` the sweep's devices cannot run (tf32 on CPUs, bf16-mixed on a GPU without it),
    refused before Ray starts; GPUs this machine lacks (a cluster's) are left to the workers, whose
    engines check again. A slow one (bf16 emulated on this CPU) is a note."""
    device = "cuda" if sweep.run.num_gpus else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return
    cfgs = trials.source(sweep).configs(sweep)
    for precision in sorted({c.precision for c in cfgs}):
        note = check_precision(precision, device)
        if note:
            sweep.notes.append(note)


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


def _save_settings(root: Path, settings: dict):
    store.atomic_write(root / "sweep.json", lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=1, sort_keys=True)))


# ---------------------------------------------------------------- Ray

def _init_ray(run, num_gpus, root):
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


def _ray_resource(name, default):
    import ray
    return ray.cluster_resources().get(name, default)


SUMMARY_COLUMNS = ["trial_id", "experiment", "model", "seed", "is_aggregate", "split", "scenario", "acc", "status",
                   "diverged_epoch", "dataset"]


def summary(results):
    """ACC per experiment and split, mean ± std over folds (and seeds) of the per-fold clean rows of
    the trials that ran to their end; a line says so when the data are generated."""
    if results is None or results.empty:
        return
    stopped = results["status"].isin(records.NOT_COUNTED)
    folds = store.clean_rows(results[~stopped], aggregate=False)
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
