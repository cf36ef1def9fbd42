"""Run one config's k-fold CV without a cluster and write it into a result store.

    python -m prmf.train --data PATH|synthetic --model NAME [--experiment Exp4]
                         [--set key=value ...] [--epochs N] [--folds 5] [--seed S] [--no-robustness] --out DIR

Presets (--experiment; the rows of the paper's table, each with its own training settings):
"""
import argparse
import gc
import math
import sys
import time

from . import provenance, records, store
from .config import (PRESETS, ConfigError, effective_config, experiments_help, for_data, make_config, parse_sets,
                     preset_config)
from .data import DataError, check_folds, load_data
from .interrupt import Signals
from .models import MODEL_CLASSES


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m prmf.train", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1] + experiments_help(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a MERBench dataset root, or 'synthetic' for the built-in set")
    ap.add_argument("--features", help="audio,text,video feature folder names (default: the paper's three)")
    ap.add_argument("--profile", default="small", choices=["tiny", "small", "paper"], help="built-in set's feature sizes")
    ap.add_argument("--dataset-name", help="the data set's name in results (default: the root folder's, "
                    "in MERBench's spelling; MER2023-synthetic-PROFILE)")
    ap.add_argument("--allow-split-overlap", action="store_true", help="accept samples that are in train and in a "
                    "test split (refused by default: a test leak)")
    ap.add_argument("--model", choices=sorted(MODEL_CLASSES),
                    help="MERBench model name (default attention_robust_v2); attention and attention_robust "
                         "take their presets' settings")
    ap.add_argument("--experiment", choices=list(PRESETS), help="a row of the paper's table (listed below)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    ap.add_argument("--epochs", type=int, help="epochs per fold (default 150)")
    ap.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    ap.add_argument("--threads", type=int, help="CPU threads of torch's operations (default: torch's, the cores)")
    ap.add_argument("--out", required=True, help="result store directory")
    ap.add_argument("--robustness", action=argparse.BooleanOptionalAction, default=True,
                    help="also score each test split with modalities missing and with feature noise (default on)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    with Signals() as signals:
        try:
            return _main(args)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the store's files are whole or absent (atomic writes)
            print(f"\n{signals.said}: no trial was stored in {args.out}; run the same command again to train it",
                  file=sys.stderr)
            return signals.exit_code


def _main(args):
    try:
        preset, changes, cfg, device, data = _inputs(args)
    except (ConfigError, DataError, store.StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)

    experiment = preset or cfg.model
    same = [n for n in PRESETS if n != preset and preset
            and effective_config(preset_config(n, **{**changes, "feat_type": cfg.feat_type})) == effective_config(cfg)]
    if same:
        print(f"note: {preset} is identical in configuration to {', '.join(same)} (fidelity {cfg.fidelity})",
              file=sys.stderr)
    tid = records.trial_id(experiment, cfg, args.seed, data)
    try:
        result, results, t0 = _train_and_store(args, tid, experiment, cfg, data, device)
    except OSError as e:  # a full disk, or the folder taken away, while storing
        print(f"error: {store.write_problem(e, args.out)} while storing trial {tid}; nothing half-written: "
              f"run the same command again once that is fixed", file=sys.stderr)
        return 1
    diverged = divergence(result)
    if diverged:  # stored as a result (status diverged), but no scores to print
        print(f"error: trial {tid} {diverged}; its rows are stored with status 'diverged' in {args.out} "
              f"(a smaller lr, or check the features)", file=sys.stderr)
        return 1
    agg = store.clean_rows(results)
    for _, r in agg.iterrows():
        print(f"{r.split:6s} f1 {r.f1:.4f}  acc {r.acc:.4f}  val_mse {r.val_mse:.4f}")
    print(f"n_params {result.n_params} (one fold's {cfg.model}, inputs {'/'.join(map(str, data.dims))}, "
          f"hidden {cfg.hidden_dim})")
    print(f"wrote {store.trial_path(args.out, tid)} ({time.time() - t0:.1f}s)")
    return 0


def _train_and_store(args, tid, experiment, cfg, data, device):
    """Train the trial and write it into the store: (engine result, its result rows, start time)."""
    from . import robustness
    from .engine import train_trial
    t0 = time.time()
    print(f"{tid}: {cfg.model}, {cfg.epochs} epochs, patience {cfg.patience}, batch {cfg.batch_size}, lr {cfg.lr:g}, "
          f"{args.folds} folds, seed {args.seed}, device {device or 'auto'}", file=sys.stderr)
    progress = Progress(tid, cfg.epochs, t0)
    scenarios = robustness.scenarios() if args.robustness else None
    result = train_trial(cfg, data, args.seed, args.folds, device, on_epoch=progress, scenarios=scenarios)
    progress.end()
    results, epochs, predictions = records.tables(
        result, tid=tid, sweep="single", experiment=experiment, cfg=cfg, seed=args.seed, dataset=data,
        status="finished", wall_time_s=time.time() - t0, commit=provenance.git_commit())
    store.write_trial(args.out, tid, results, epochs, predictions)
    provenance.write_run(args.out, provenance.collect(), {tid: {"experiment": experiment, "seed": args.seed,
                                                                "cfg": cfg.to_dict()}})
    return result, results, t0


def _inputs(args):
    """(preset, --set changes, config, device, data) of the command line, every input checked
    before any work: ConfigError, DataError or StoreError, one line each."""
    changes = parse_sets(args.set)
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    preset = args.experiment or (args.model if args.model in PRESETS else None)
    if args.experiment and args.model and args.model != PRESETS[args.experiment]["model"]:
        raise ConfigError(f"--experiment {args.experiment} is a preset of {PRESETS[args.experiment]['model']}, "
                          f"not {args.model}")
    cfg = preset_config(preset, **changes) if preset else make_config({"model": args.model or "attention_robust_v2"}, **changes)
    device = check_device(args.device)
    note = precision_note(cfg.precision, device)
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    features = args.features.split(",") if args.features else None
    data = load_data(args.data, features, args.profile, name=args.dataset_name, allow_overlap=args.allow_split_overlap)
    check_folds(data, args.folds)
    store.check_writable(args.out, "--out")
    if note:  # after every check: a refused run prints its error alone
        print(f"note: {note}", file=sys.stderr)
    return preset, changes, for_data(cfg, data.feat_type), device, data


class Progress:
    """The epoch hook's progress: a terminal gets one line rewritten in place; a pipe or a job log
    gets plain lines (the first epoch, then at most one per 15 s, and the last), as the sweep's
    progress line does."""

    def __init__(self, tid, epochs, t0):
        self.tid, self.epochs, self.t0 = tid, epochs, t0
        self.tty, self.shown = sys.stderr.isatty(), -math.inf

    def __call__(self, epoch, score):
        now = time.time()
        eta = (now - self.t0) / epoch * (self.epochs - epoch)  # to the last epoch; patience may end it sooner
        line = (f"{self.tid}: epoch {epoch}/{self.epochs}  mean val emoval {score:.4f}  "
                f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif epoch == self.epochs or now - self.shown >= 15:
            self.shown = now
            print(line, file=sys.stderr, flush=True)

    def end(self):
        if self.tty:
            print(file=sys.stderr)


def divergence(result) -> str:
    """'diverged at epoch E (...): WHAT is nan' for a trial whose folds went non-finite, else ''.
    An epoch trains before it validates, so a non-finite training loss came first; else the
    validation outputs (emotion logits, then valence) of weights that the epoch's last steps broke."""
    epochs = [e for e in result.diverged_epochs if e]
    if not epochs:
        return ""
    first = min(epochs)
    folds = [k for k, e in enumerate(result.diverged_epochs) if e == first]
    rows = [h for h in result.history if h["epoch"] == first and h["fold"] in folds]
    loss = [h for h in rows if not math.isfinite(h["train_loss"])]
    if loss:
        what = f"the training loss is {loss[0]['train_loss']} (fold {loss[0]['fold']})"
    else:
        h = rows[0] if rows else {"fold": folds[0], "val_f1": math.nan}
        output = "emotion logits" if not math.isfinite(h["val_f1"]) else "valence predictions"
        what = f"the validation {output} are not finite (fold {h['fold']}), after a finite training loss"
    return f"diverged at epoch {first} ({len(epochs)} of {len(result.diverged_epochs)} folds): {what}"


def check_device(text):
    """`--device` as torch reads it, refused up front when it names a device this machine lacks."""
    if text is None:
        return None
    import torch
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"--device {text!r}: not a device (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= n:
            raise ConfigError(f"--device {text}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {text}: MPS is not available on this machine (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {text}: not supported here (cpu, cuda, cuda:N, mps)")
    return str(device)


def precision_note(precision, device):
    """`precision` on `device` (None: the engine's default) refused up front where the device cannot
    run it (ConfigError); a note ('' if none) where it runs slowly."""
    from .engine import default_device
    from .precision import check
    return check(precision, device or default_device())


def cli():
    """The console command `prmf-train` (and `python -m prmf.train`)."""
    rc = main()
    gc.freeze()  # exit would spend ~1 s collecting torch's and pandas' objects one by one (measured at paper dims)
    sys.exit(rc)


if __name__ == "__main__":
    cli()
