"""Sweeps into the lab's experiment trackers: MLflow (`--mlflow URI`), Weights & Biases (`--wandb`)
and TensorBoard (event files, whenever tensorboardX is installed). In each, every (config, seed)
trial is one run, whatever the packing: the pack (sweeps/pack_runner.py) opens its trials' runs on
the worker (`start`), logs each epoch (step = epoch) and ends a run when it stores the trial
(`log_result`: finished, or pruned by ASHA inside its pack). Every run carries the trial's commit
and the path of the provenance record of the sweep's run that last trained it.

A resumed pack replays the epochs after its checkpoint; a trial continues its runs from the epoch
after the last one each tracker wrote, read back from where it was written: MLflow's metric history,
the trial's own TensorBoard event files, W&B's run files. TensorBoard and W&B write from a thread or
a process of their own, which a kill can stop before it has written what it was handed: the epochs
they lost before the pack's checkpoint are not replayed, so they are logged again from the trial's
epoch log (STORAGE/NAME/tracked/TRIAL.json, every epoch's values, written after each epoch). `sync`
at the end of a sweep ends every stored trial's run that was not ended (the pack killed between
storing and ending, or a sweep run before without the tracker).
"""
import hashlib
import importlib
import json
import os
import re
import struct
import uuid
from pathlib import Path

import pandas as pd

from prmf import store
from sweeps import wandb_files

METRICS = ("acc", "f1", "val_mse", "emoval")  # final metrics per split, from the aggregate rows
EPOCH_METRICS = ("val_emoval", "folds_running")
TERMINATED = ("FINISHED", "FAILED", "KILLED")  # an MLflow run in one of these is closed; RUNNING is not


class TrackerError(Exception):
    """A tracker that cannot be used (package missing, server unreachable); one line."""


def add_args(ap):
    ap.add_argument("--mlflow", metavar="URI", help="log every trial as one MLflow run to this tracking URI "
                    "(http://host:5000, sqlite:///mlflow.db, a folder); experiment = the sweep's name")
    ap.add_argument("--wandb", nargs="?", const="prmf-sweep", metavar="PROJECT",
                    help="log every trial as one Weights & Biases run in project PROJECT (default prmf-sweep), "
                         "offline unless WANDB_MODE is set")


def _need(package, flag, extra):
    try:
        importlib.import_module(package)
    except ImportError as e:  # absent, or installed without its own dependencies
        raise TrackerError(f"{flag} needs the {package} package ({e}): pip install 'prmf-sweep[{extra}]'") from None


def prepare(args, sweep_name, data, root) -> dict:
    """Driver side, before any trial: check the packages and the server; what the specs carry to
    the workers ({'mlflow': {...}, 'wandb': {...}, 'tensorboard': {...}}, each only when used)."""
    out, about = {}, {"dataset": data.name, "features": "+".join(data.features)}
    try:  # TensorBoard as Tune's own files: whenever tensorboardX is there
        importlib.import_module("tensorboardX")
        out["tensorboard"] = {"dir": str(Path(root) / "tensorboard"), **about}
    except ImportError:
        pass
    if getattr(args, "wandb", None):
        _need("wandb", "--wandb", "wandb")
        # the mode travels in the spec: workers on other nodes do not inherit the driver's environment
        out["wandb"] = {"project": args.wandb, "group": sweep_name, "dir": str(Path(root) / "wandb"),
                        "mode": os.environ.get("WANDB_MODE", "offline"), **about}
    if getattr(args, "mlflow", None):
        _need("mlflow", "--mlflow", "trackers")
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri=args.mlflow)
        try:  # created here, once: concurrent workers creating it would race
            exp = client.get_experiment_by_name(sweep_name)
            # a server keeps the artifacts itself; a database or folder URI would put them in ./mlruns of
            # whichever process logs first, so they go into the sweep's folder
            local = not args.mlflow.startswith(("http://", "https://", "databricks"))
            exp_id = exp.experiment_id if exp else client.create_experiment(
                sweep_name, artifact_location=(root / "mlflow-artifacts").as_uri() if local else None)
            if exp and args.restart:  # the sweep starts over: its old runs must not be continued
                for run in client.search_runs([exp_id], max_results=50000):
                    client.delete_run(run.info.run_id)
        except Exception as e:
            raise TrackerError(f"--mlflow {args.mlflow}: cannot reach the tracking server "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        out["mlflow"] = {"uri": args.mlflow, "experiment_id": exp_id, **about}
    return out


def callbacks(args, sweep_name, root) -> list:
    """Driver-side Tune callbacks: none. W&B was Ray's WandbLoggerCallback here, one run per pack
    with the pack's best score; the packs now log every trial themselves."""
    return []


def provenance_record(spec):
    """The newest STORAGE/NAME/provenance/run-NNN.json: the driver writes it before it launches
    the packs, so it is the record of the run that trains (or fills in) this trial; None if none."""
    runs = Path(spec["store"]).glob("provenance/run-[0-9]*.json")
    newest = max(runs, key=lambda p: int(p.stem[4:]), default=None)  # by number: run-1000 after run-999
    return str(newest) if newest else None


def _tags(spec):
    cfg, prov = spec["cfg"], provenance_record(spec)
    conf = next((spec[k] for k in TRACKERS if spec.get(k)), {})
    return {"trial_id": spec["trial_id"], "sweep": spec["sweep"], "experiment": spec["experiment"],
            "seed": str(spec["seed"]), "model": cfg.get("model", ""), "commit": spec.get("commit", "unknown"),
            **({"provenance": prov} if prov else {}), **{k: conf[k] for k in ("dataset", "features") if k in conf}}


def _params(spec):
    return {**spec["cfg"], "seed": spec["seed"], "folds": spec["folds"]}


def _finals(spec):
    """(final metrics {split_metric: value}, stored status, last epoch run) from the trial's results file."""
    df = store.read_trial(spec["store"], spec["trial_id"])
    agg = store.clean_rows(df)
    finals = {f"{r.split}_{m}": float(getattr(r, m)) for r in agg.itertuples() for m in METRICS
              if pd.notna(getattr(r, m))}  # no labels (MER2023 test3: no valence) -> no metric
    return finals, str(df.status.iloc[0]), int(df.epochs_run.max())


# ---------------------------------------------------------------- MLflow

def _find_run(client, exp_id, trial_id):
    runs = client.search_runs([exp_id], filter_string=f"tags.trial_id = '{trial_id}'", max_results=1)
    return runs[0] if runs else None


class _Mlflow:
    """One trial's MLflow run. A pack trains many trials in one process, so every call names its
    run (MlflowClient), never MLflow's one active run."""

    def __init__(self, spec):
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient
        conf = spec["mlflow"]
        self.spec, self.client, self.logged_to, self.ended = spec, MlflowClient(tracking_uri=conf["uri"]), 0, False
        old = _find_run(self.client, conf["experiment_id"], spec["trial_id"])
        if old:  # a resumed trial continues its run from the epoch after the last one logged
            self.run_id, self.ended = old.info.run_id, "status" in old.data.tags  # finals logged, maybe not terminated
            history = self.client.get_metric_history(self.run_id, "val_emoval")
            self.logged_to = max((m.step for m in history), default=0)
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in _tags(spec).items()])  # this run's commit
        else:
            self.run_id = self.client.create_run(conf["experiment_id"], run_name=spec["trial_id"], tags=_tags(spec)).info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in _params(spec).items()])

    def log(self, step, values):
        from mlflow.entities import Metric
        now = store.timestamp() * 1000
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def end(self, finals, status, last_epoch):
        from mlflow.entities import Metric
        if not self.ended:  # the status tag is set last: with it, everything but the end is there
            now = store.timestamp() * 1000
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0) for k, v in finals.items()])
            pred = store.predictions_dir(self.spec["store"], self.spec["trial_id"])
            if pred.is_dir():
                self.client.log_artifacts(self.run_id, str(pred), artifact_path="predictions")
            self.client.set_tag(self.run_id, "status", status)
        self.client.set_terminated(self.run_id, "FINISHED")

    def close(self):
        pass  # RUNNING until the trial ends: a resume continues it


# ---------------------------------------------------------------- Weights & Biases

def wandb_id(spec):
    """The trial's W&B run id: its trial id and the sweep's name (one project holds many sweeps)."""
    tag = hashlib.sha1(spec["sweep"].encode()).hexdigest()[:6]
    return re.sub(r"[^A-Za-z0-9_-]", "-", spec["trial_id"])[:56] + "-" + tag


def _sidecar(spec):
    return Path(spec["wandb"]["dir"]) / "steps" / f"{spec['trial_id']}.json"


def _wandb_ended(spec):
    path = _sidecar(spec)
    return path.exists() and json.loads(path.read_text())["ended"]


class _Wandb:
    """One trial's W&B run; several live in one process (reinit='create_new'). Offline, a resumed
    trial is a new run folder with the same id (`wandb sync` joins them); its steps continue from
    the last one W&B wrote."""

    def __init__(self, spec):
        import wandb
        conf, tags = spec["wandb"], _tags(spec)
        self.spec, self.logged_to = spec, wandb_files.last_step(conf["dir"], wandb_id(spec))
        Path(conf["dir"]).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=conf["project"], group=conf["group"], name=spec["trial_id"], id=wandb_id(spec),
                              dir=conf["dir"], mode=conf["mode"], resume="allow", reinit="create_new",
                              config={**_params(spec), **tags}, job_type=spec["experiment"],
                              tags=[spec["experiment"], f"commit={tags['commit']}"[:64]],
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, step, values):
        self.run.log(values, step=step)

    def end(self, finals, status, last_epoch):
        self.run.summary.update({**finals, "status": status})
        self.run.finish()  # waits for W&B to write everything
        store.atomic_write(_sidecar(self.spec), lambda tmp: Path(tmp).write_text(json.dumps({"ended": True})))

    def close(self):
        self.run.finish(exit_code=1)  # frees the id for a retry in this process; the resume continues its steps


# ---------------------------------------------------------------- TensorBoard

def tb_events(folder):
    """Every Event in the TensorBoard event files of `folder`, oldest file first; a record cut
    short by a killed writer ends its file."""
    from tensorboardX.proto.event_pb2 import Event
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):  # TFRecord: length (8), its CRC (4), data, its CRC (4)
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            if pos + 16 + n > len(data):
                break
            event = Event()
            event.ParseFromString(data[pos + 12:pos + 12 + n])
            yield event
            pos += 16 + n


def _tb_folder(spec):
    return Path(spec["tensorboard"]["dir"]) / spec["trial_id"]


class _Tensorboard:
    """One trial's TensorBoard run: its own folder; a resumed trial adds an event file to it and
    continues from the last epoch in its files."""

    def __init__(self, spec):
        from tensorboardX import SummaryWriter
        folder = _tb_folder(spec)
        steps = [e.step for e in tb_events(folder) for v in e.summary.value if v.tag == "val_emoval"]
        self.logged_to = max(steps, default=0)
        # a file of its own (events.out.tfevents.SECOND.HOST alone: a worker resuming within the second
        # would truncate the killed one's), its name sorting after the files before it: TensorBoard
        # reads them in name order and drops the steps after one that goes back
        self.writer = SummaryWriter(logdir=str(folder), filename_suffix=f".from{self.logged_to:06d}.{uuid.uuid4().hex[:8]}")
        tags = _tags(spec)
        self.writer.add_text("provenance", "  \n".join(f"{k}: {tags[k]}" for k in ("trial_id", "commit", "provenance")
                                                        if k in tags), self.logged_to)
        self.writer.flush()

    def log(self, step, values):
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()  # the files are what a resumed trial reads its last epoch from

    def end(self, finals, status, last_epoch):
        for k, v in finals.items():
            self.writer.add_scalar(f"final/{k}", v, last_epoch)
        self.writer.add_text("status", status, last_epoch)
        self.writer.close()

    def close(self):
        self.writer.close()


def _tb_ended(spec):
    return any(v.tag.startswith("status") for e in tb_events(_tb_folder(spec)) for v in e.summary.value)


# ---------------------------------------------------------------- a trial's runs

TRACKERS = {"mlflow": _Mlflow, "wandb": _Wandb, "tensorboard": _Tensorboard}


def _epoch_log(spec):
    return Path(spec["store"]) / "tracked" / f"{spec['trial_id']}.json"


class Runs:
    """The worker's handle on one trial's runs, one per tracker in its spec (none: a no-op), and the
    trial's epoch log, from which each run gets the epochs it lost before the pack's checkpoint."""

    def __init__(self, spec, kinds=tuple(TRACKERS)):
        self.spec = spec
        self.runs = [TRACKERS[k](spec) for k in kinds if spec.get(k)]
        path = _epoch_log(spec)
        self.history = {int(k): v for k, v in json.loads(path.read_text()).items()} if self.runs and path.exists() else {}

    def epoch(self, metrics):
        if not self.runs:
            return
        epoch, values = int(metrics["epoch"]), {k: float(metrics[k]) for k in EPOCH_METRICS}
        for run in self.runs:
            for e in sorted(e for e in self.history if run.logged_to < e < epoch):  # lost by a kill, not replayed
                run.log(e, self.history[e])
            if epoch > run.logged_to:
                run.log(epoch, values)
                run.logged_to = epoch
        self.history[epoch] = values
        store.atomic_write(_epoch_log(self.spec), lambda tmp: Path(tmp).write_text(json.dumps(self.history)))

    def end(self, status=None):
        if self.runs:
            finals, stored_status, last_epoch = _finals(self.spec)
            for run in self.runs:
                run.end(finals, status or stored_status, last_epoch)
        self.runs = []

    def close(self):
        """The pack stops before the trial ended (interrupted, failed): this process lets go of its
        runs, left open for the resume to continue."""
        for run in self.runs:
            run.close()
        self.runs = []


def start(spec) -> Runs:
    return Runs(spec)


def log_result(spec, status, runs=None):
    """A trial's results are in the store: its runs get the final metrics (and in MLflow the NPZ
    predictions) and the status, and end. `runs`: the pack's open handle (None: open them here)."""
    (runs or Runs(spec)).end(status)


def sync(specs, done):
    """Driver side, after the sweep: every stored trial whose runs are not all ended gets them ended
    (an MLflow run is ended when terminated, whatever its tags: a driver killed between the status
    tag and set_terminated left it RUNNING). The number of trials filled in."""
    specs = [s for s in specs if s["trial_id"] in done and any(s.get(k) for k in TRACKERS)]
    terminated = set()
    conf = next((s["mlflow"] for s in specs if s.get("mlflow")), None)
    if conf:
        from mlflow.tracking import MlflowClient
        runs = MlflowClient(tracking_uri=conf["uri"]).search_runs([conf["experiment_id"]], max_results=50000)
        terminated = {r.data.tags.get("trial_id") for r in runs if r.info.status in TERMINATED}
    ended = {"mlflow": lambda s: s["trial_id"] in terminated, "wandb": _wandb_ended,
             "tensorboard": _tb_ended}
    n = 0
    for s in specs:
        todo = [k for k in TRACKERS if s.get(k) and not ended[k](s)]
        if todo:
            Runs(s, todo).end()
            n += 1
    return n
