"""Ray Tune around the pack runner: the function trainable (a pack per Tune trial), its reporter
(tune.report, checkpoints kept by Tune: sweeps/checkpoints.py), the live progress line, and the
Tuner of one run of a sweep."""
import logging
import math
import socket
import sys
import time

from prmf import store
from sweeps import checkpoints, pack_runner, status, trackers
from sweeps.plan import load_pack, pack_id, solo_pack, write_packs


class TuneReporter:
    """pack_runner's reporter inside a Tune trial."""

    def __init__(self, pack):
        self.pack = pack

    def restore(self, engine) -> float:
        return checkpoints.restore(engine, self.pack["store"], self.pack["id"])

    def node(self) -> dict:
        import ray
        return {"node_ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname(),
                "node_id": ray.get_runtime_context().get_node_id()}

    def report(self, metrics, engine, wall_time_s):
        checkpoints.report(metrics, engine, wall_time_s, self.pack["id"])  # Tune keeps the checkpoint


def trainable(config, data=None, root=None):
    """Tune function trainable: one pack (a grid's, by its id: plan.write_packs) or one trial (a
    search's proposal)."""
    pack = load_pack(root, config["pack"]) if "pack" in config else solo_pack(config["trial"])
    try:
        pack_runner.run(pack, data, TuneReporter(pack))
    except OSError as e:  # a full disk: no retry would get further; the driver stops the sweep and says so
        if e.errno not in store.DISK_FULL:
            raise
        from ray import tune
        tune.report({"epoch": 0, "val_emoval": float("nan"), "disk_full": store.write_problem(e, pack["store"])})


INDEX_EVERY = 100  # the least number of newly stored trials the progress line folds into the store's index


class Progress:
    """A live line: trials stored/total, packs running and pending, the best validation emoval of
    the whole sweep (the stored trials' results, earlier runs included, and this run's epochs),
    ETA from the epochs this run's packs have run of the `packs` it has to run."""

    def __init__(self, name, root, n_trials, packs, epochs):
        from ray.tune import Callback

        outer = self

        class _Callback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                outer.disk_full = outer.disk_full or result.get("disk_full", "")
                outer.epochs[pack_id(trial.config)] = result.get("epoch", 0)
                score = result.get("val_emoval")
                if score is not None and not math.isnan(score) and score > outer.best:
                    outer.best = score
                outer.show(trials)

            def on_trial_complete(self, iteration, trials, trial, **info):
                outer.epochs[pack_id(trial.config)] = outer.total_epochs  # counts as done for the ETA
                outer.show(trials, force=True)

            def on_trial_recover(self, iteration, trials, trial, **info):
                outer.failed(trials, trial, "retried from its last checkpoint")

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.failed(trials, trial, "not retried (--max-failures reached)")

        self.callback = _Callback()
        self.name, self.root, self.n_trials, self.n_packs, self.total_epochs = name, root, n_trials, packs, epochs
        self.epochs, self.best, self.errors, self.indexed = {}, -math.inf, [], 0
        self.disk_full = ""  # a pack's store write met a full disk: the run stops (stop_all)
        self.t0, self.last = time.time(), 0.0
        self.tty = sys.stderr.isatty()

    def failed(self, trials, trial, then):
        """A pack's worker failed: one line (why, from _WORKER_DIED), counted in the progress line."""
        self.errors.append(pack_id(trial.config))
        if _WORKER_DIED.reason:
            print(f"{chr(10) if self.tty else ''}pack {pack_id(trial.config)}: its worker died ({_WORKER_DIED.reason}); "
                  f"{then}", file=sys.stderr)
            _WORKER_DIED.reason = ""
        self.show(trials, force=True)

    def show(self, trials, force=False):
        now = time.time()
        if not force and now - self.last < (1 if self.tty else 15):
            return
        self.last = now
        states = [t.status for t in trials]  # Tune creates a trial when it has room for it
        running, ended = states.count("RUNNING"), states.count("TERMINATED") + states.count("ERROR")
        done = self.stored_best()
        frac = min(1.0, sum(min(e, self.total_epochs) for e in self.epochs.values()) / max(1, self.n_packs * self.total_epochs))
        eta = (now - self.t0) * (1 - frac) / frac if frac > 0.02 else math.nan
        best = f"best {self.best:.4f}" if self.best > -math.inf else "best -"
        status.write_progress(self.root, self.n_trials, {pack_id(t.config): (self.epochs.get(pack_id(t.config), 0), t.status)
                                                         for t in trials}, self.total_epochs, self.best, eta)
        line = (f"{time.strftime('%H:%M:%S' if self.tty else '%Y-%m-%d %H:%M:%S')} "
                f"[{self.name}] trials done {done}/{self.n_trials} | packs "
                f"running {running} pending {max(0, self.n_packs - running - ended)} errors {len(self.errors)} | "
                f"{best} (val emoval) | ETA {'-' if math.isnan(eta) else time.strftime('%H:%M:%S', time.gmtime(eta))}")
        print(("\r" + line + "\033[K") if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def stored_best(self) -> int:
        """How many trials are stored; at the first look, and whenever the stored trials have grown
        by a quarter since, the store's index is brought in step (each new file read once, the
        index rewritten: its cost stays proportional to the sweep) and `best` up to its results."""
        n = len(store.completed_trials(self.root))
        if n and (not self.indexed or n - self.indexed >= max(INDEX_EVERY, self.indexed // 4)):
            self.index()
            self.indexed = n
        return n

    def index(self):
        rows = store.read_results(self.root, columns=["split", "scenario", "is_aggregate", "emoval"], filters=store.CLEAN_AGGREGATE,
                                  warn=lambda message: None, fold_in=0)  # a damaged file: best_results names it
        cv = rows["emoval"][rows["split"] == "cv"].astype(float) if not rows.empty else []
        self.best = max([self.best, *(v for v in cv if math.isfinite(v))])


class _ResumeHint(logging.Filter):
    """Ray Tune ends an interrupted run with 'Resume experiment with: Tuner.restore(...)'; here resuming
    is running the same command again, so its hint is dropped (and ours printed)."""
    interrupted = False

    def filter(self, record):
        if "Tuner.restore" in record.getMessage():
            self.interrupted = True
            return False
        return True


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


class _DiskFull(logging.Filter):
    """Tune's own state writes on a full disk log an OSError traceback each; the driver ends the
    sweep with one line saying the disk is full instead."""

    def filter(self, record):
        e = record.exc_info[1] if record.exc_info else None
        return not (isinstance(e, OSError) and e.errno in store.DISK_FULL) and "No space left" not in record.getMessage()


def _StopOnDiskFull(progress):
    """A Tune Stopper that ends the whole run once a pack has met a full disk."""
    from ray.tune import Stopper

    class Stop(Stopper):
        def __call__(self, trial_id, result):
            return bool(result.get("disk_full"))

        def stop_all(self):
            return bool(progress.disk_full)
    return Stop()


_RESUME_HINT, _WORKER_DIED = _ResumeHint(), _WorkerDied()
for _name in ("ray.tune.execution.experiment_state", "ray.train._internal.syncer", "ray.tune.execution.tune_controller"):
    logging.getLogger(_name).addFilter(_DiskFull())
logging.getLogger("ray.tune.tune").addFilter(_RESUME_HINT)  # once, however many sweeps a process runs
logging.getLogger("ray.tune.execution.tune_controller").addFilter(_WORKER_DIED)


def fit(sweep, root, data, packs, progress, resources, max_concurrent, tune_config) -> bool:
    """One Tuner run (run-NNN under STORAGE/NAME/tune) of the packs [(id, trial specs)], or of a
    search's proposals (`tune_config`: its TuneConfig arguments). True if it was interrupted
    (Ctrl-C, SIGUSR1): Tune stopped its trials and returned."""
    import ray
    from ray import tune
    run = sweep.run
    if packs and not max_concurrent:  # Tune gives a searcher one pending trial at a time unless it is limited:
        # as many as it gives a grid, so every free slot of every node gets a pack at once
        max_concurrent = min(len(packs), max(200, int(1.1 * ray.cluster_resources().get("CPU", 1))))
    trainable_ = tune.with_resources(tune.with_parameters(trainable, data=data, root=str(root)), resources)
    write_packs(root, packs)
    run_index = len(list((root / "tune").glob("run-*"))) if (root / "tune").exists() else 0
    tuner = tune.Tuner(
        trainable_,
        tune_config=tune.TuneConfig(metric="val_emoval", mode="max", reuse_actors=True,
                                    **{"max_concurrent_trials": max_concurrent or None, **tune_config}),
        run_config=tune.RunConfig(name=f"run-{run_index:03d}", storage_path=str(root / "tune"), verbose=0,
                                  callbacks=[progress.callback, *trackers.callbacks(sweep.args, run.name, root)],
                                  failure_config=tune.FailureConfig(max_failures=run.max_failures),
                                  stop=_StopOnDiskFull(progress),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))  # 2: one may be cut short
    _RESUME_HINT.interrupted = False
    tuner.fit()
    if progress.tty:
        print(file=sys.stderr)
    return _RESUME_HINT.interrupted
