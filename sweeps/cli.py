"""The flags every sweep script shares, the config changes they make, and the scripts' main."""
import argparse
import sys

from prmf.config import ConfigError, parse_sets
from prmf.data import DataError
from sweeps import driver, trackers
from sweeps.definition import DEFAULT_STORAGE, QUICK, SweepError
from sweeps.plan import AUTO_PACK_MAX


def add_common_args(ap: argparse.ArgumentParser):
    ap.add_argument("--data", default="synthetic", help="a MERBench dataset root, or 'synthetic' (default) for the built-in set")
    ap.add_argument("--features", help="audio,text,video feature folder names (default: the paper's three)")
    ap.add_argument("--profile", default="small", choices=["tiny", "small", "paper"],
                    help="feature sizes of the built-in set (default small; 'paper' = 1024/5120/768)")
    ap.add_argument("--dataset-name", help="the data set's name in results and NPZ names (default: the root "
                    "folder's, in MERBench's spelling, e.g. mer2023 -> MER2023; MER2023-synthetic-PROFILE)")
    ap.add_argument("--allow-split-overlap", action="store_true", help="accept samples that are in train and in a "
                    "test split (refused by default: a test leak)")
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
                    "packs only where a few training steps timed at start, on one pack's resources, predict them "
                    "faster than one trial per pack; at most as many as memory allows, spread over the free slots, "
                    "%d), N, or 1 (none); only trials that differ in loss weights, temperatures, dropout, optimiser, "
                    "lr and its schedule, weight decay or seed pack" % AUTO_PACK_MAX)
    ap.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS if set, else a new local Ray)")
    ap.add_argument("--storage", help=f"shared directory for results and Tune state (default {DEFAULT_STORAGE}/ "
                    f"under the current folder)")
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
        cfg = sweep.points[0].cfg if sweep.points else sweep.search.base_cfg  # an Optuna search has no points yet
        used = {k: getattr(cfg, k) for k in QUICK}
        print(f"quick settings: {', '.join(f'{k}={v:g}' for k, v in used.items())} "
              f"(drop --quick for each preset's own settings, e.g. Exp4: epochs=150, batch_size=32, lr=0.0003)", file=sys.stderr)
    return driver.run(sweep)
