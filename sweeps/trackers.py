"""Sweeps into the lab's experiment trackers: MLflow (`--mlflow URI`), Weights & Biases (`--wandb`).

MLflow: every (config, seed) trial is one run, named by its trial id and tagged with it, in the
experiment named after the sweep. The worker opens it (params = the config) and logs each epoch's
metrics (step = epoch); when the trial's results are stored (finished, or pruned by ASHA inside
its pack) it logs the final metrics of each split (the store's clean aggregate rows: `test1_acc`,
...) and the NPZ predictions as artifacts, and ends the run. A resumed trial reopens its run
(found by the trial-id tag) and skips the epochs it logged before; `sync` at the end of a sweep fills in any stored trial whose run lacks its final
metrics (also a whole sweep run before without --mlflow).

Weights & Biases: Ray's WandbLoggerCallback on the driver, offline unless WANDB_MODE says
otherwise (`wandb sync` uploads later), the runs in STORAGE/NAME/wandb/. TensorBoard: Tune writes event files itself (with
tensorboardX installed) under STORAGE/NAME/tune/: `tensorboard --logdir STORAGE/NAME/tune`.
"""
import importlib
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from prmf import store

METRICS = ("acc", "f1", "val_mse", "emoval")  # final metrics per split, from the aggregate rows
EPOCH_METRICS = ("val_emoval", "folds_running")


class TrackerError(Exception):
    """A tracker that cannot be used (package missing, server unreachable); one line."""


def add_args(ap):
    ap.add_argument("--mlflow", metavar="URI", help="log every trial as one MLflow run to this tracking URI "
                    "(http://host:5000, sqlite:///mlflow.db, a folder); experiment = the sweep's name")
    ap.add_argument("--wandb", nargs="?", const="prmf-sweep", metavar="PROJECT",
                    help="log to Weights & Biases project PROJECT (default prmf-sweep), offline unless WANDB_MODE is set")


def _need(package, flag, extra):
    try:
        importlib.import_module(package)
    except ImportError as e:  # absent, or installed without its own dependencies
        raise TrackerError(f"{flag} needs the {package} package ({e}): pip install 'prmf-sweep[{extra}]'") from None


def prepare(args, sweep_name, data, root) -> dict:
    """Driver side, before any trial: check the packages and the server; {'mlflow': {...}} for the specs."""
    out = {}
    if getattr(args, "wandb", None):
        _need("wandb", "--wandb", "wandb")
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
        out["mlflow"] = {"uri": args.mlflow, "experiment_id": exp_id, "dataset": data.name,
                         "features": "+".join(data.features)}
    return out


def callbacks(args, sweep_name, root) -> list:
    """Driver-side Tune callbacks (W&B). The runs are written straight into the sweep folder
    (STORAGE/NAME/wandb/): left to Ray's staging folder, a short Tune trial's run was synced to the
    storage before W&B had written it."""
    if not getattr(args, "wandb", None):
        return []
    os.environ.setdefault("WANDB_MODE", "offline")  # the driver's check of the API key
    from ray.air.integrations.wandb import WandbLoggerCallback
    (Path(root) / "wandb").mkdir(parents=True, exist_ok=True)
    # the mode also as wandb.init's own argument: the logging actors do not inherit the driver's env
    return [WandbLoggerCallback(project=args.wandb, group=sweep_name, log_config=True, mode=os.environ["WANDB_MODE"],
                                dir=str(Path(root) / "wandb"))]


def _find_run(client, exp_id, trial_id):
    runs = client.search_runs([exp_id], filter_string=f"tags.trial_id = '{trial_id}'", max_results=1)
    return runs[0] if runs else None


def _tags(spec):
    cfg = spec["cfg"]
    return {"trial_id": spec["trial_id"], "sweep": spec["sweep"], "experiment": spec["experiment"],
            "seed": str(spec["seed"]), "model": cfg.get("model", ""),
            "dataset": spec["mlflow"]["dataset"], "features": spec["mlflow"]["features"]}


class _Run:
    """The worker's handle on one trial's MLflow run (a no-op without --mlflow). A pack trains many
    trials in one process, so every call names its run (MlflowClient), never MLflow's one active run."""

    def __init__(self, spec):
        self.spec, self.client, self.run_id, self.logged_to = spec, None, None, 0
        conf = spec.get("mlflow")
        if not conf:
            return
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient(tracking_uri=conf["uri"])
        old = _find_run(self.client, conf["experiment_id"], spec["trial_id"])
        if old:  # a resumed trial continues its run from the epoch after the last one logged
            self.run_id = old.info.run_id
            history = self.client.get_metric_history(self.run_id, "val_emoval")
            self.logged_to = max((m.step for m in history), default=0)
        else:
            run = self.client.create_run(conf["experiment_id"], run_name=spec["trial_id"], tags=_tags(spec))
            self.run_id = run.info.run_id
            params = {**spec["cfg"], "seed": spec["seed"], "folds": spec["folds"]}
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def epoch(self, metrics):
        if self.client and metrics["epoch"] > self.logged_to:
            from mlflow.entities import Metric
            now, step = store.timestamp() * 1000, int(metrics["epoch"])
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(metrics[k]), now, step) for k in EPOCH_METRICS])


def start(spec) -> _Run:
    return _Run(spec)


def log_result(spec, status):
    """A trial's results are in the store: final metrics, predictions, status; the run ends."""
    conf = spec.get("mlflow")
    if not conf:
        return
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=conf["uri"])
    run = _find_run(client, conf["experiment_id"], spec["trial_id"])
    if run is None:  # stored before --mlflow was given: a run with its params and finals
        run = client.create_run(conf["experiment_id"], run_name=spec["trial_id"], tags=_tags(spec))
        for k, v in {**spec["cfg"], "seed": spec["seed"], "folds": spec["folds"]}.items():
            client.log_param(run.info.run_id, k, v)
    _log_final(client, run.info.run_id, Path(spec["store"]), spec["trial_id"], status)


def _log_final(client, run_id, root, trial_id, status):
    from mlflow.entities import Metric
    df = pq.read_table(root / "results" / f"{trial_id}.parquet").to_pandas()
    agg = df[df.is_aggregate & (df.scenario == "clean")]
    now = store.timestamp() * 1000
    metrics = [Metric(f"{r.split}_{m}", float(getattr(r, m)), now, 0) for r in agg.itertuples() for m in METRICS
               if pd.notna(getattr(r, m))]  # no labels (MER2023 test3: no valence) -> no metric
    client.log_batch(run_id, metrics=metrics)
    pred = root / "predictions" / trial_id
    if pred.is_dir():
        client.log_artifacts(run_id, str(pred), artifact_path="predictions")
    client.set_tag(run_id, "status", status or str(df.status.iloc[0]))
    client.set_terminated(run_id, "FINISHED")


def sync(specs, done):
    """Driver side, after the sweep: every stored trial whose run has no final status yet gets it."""
    specs = [s for s in specs if s.get("mlflow") and s["trial_id"] in done]
    if not specs:
        return 0
    from mlflow.tracking import MlflowClient
    conf = specs[0]["mlflow"]
    client = MlflowClient(tracking_uri=conf["uri"])
    runs = client.search_runs([conf["experiment_id"]], max_results=50000)
    closed = {r.data.tags.get("trial_id") for r in runs if r.data.tags.get("status")}
    todo = [s for s in specs if s["trial_id"] not in closed]
    for s in todo:
        log_result(s, None)
    return len(todo)
