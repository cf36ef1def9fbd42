"""Run one config's k-fold CV without a cluster and write it into a result store.

    python -m prmf.train --data PATH|synthetic --model NAME [--experiment Exp4]
                         [--set key=value ...] [--epochs N] [--folds 5] [--seed S] [--no-robustness] --out DIR
"""
import argparse
import sys
import time

from . import records, store
from .config import EXPERIMENTS, ConfigError, experiment_config, make_config, parse_sets
from .data import DataError, load_data
from .models import MODEL_CLASSES


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m prmf.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a MERBench dataset root, or 'synthetic' for the built-in set")
    ap.add_argument("--features", help="audio,text,video feature folder names (default: the paper's three)")
    ap.add_argument("--profile", default="small", choices=["tiny", "small", "paper"], help="built-in set's feature sizes")
    ap.add_argument("--model", choices=sorted(MODEL_CLASSES), help="MERBench model name (default attention_robust_v2)")
    ap.add_argument("--experiment", choices=sorted(EXPERIMENTS), help="an ablation preset of attention_robust_v2")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    ap.add_argument("--epochs", type=int, help="epochs (default 150)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    ap.add_argument("--out", required=True, help="result store directory")
    ap.add_argument("--robustness", action=argparse.BooleanOptionalAction, default=True,
                    help="also score each test split with modalities missing and with feature noise (default on)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        changes = parse_sets(args.set)
        if args.epochs is not None:
            changes["epochs"] = args.epochs
        if args.model is not None:
            changes["model"] = args.model
        cfg = experiment_config(args.experiment, **changes) if args.experiment else make_config(**changes)
        if args.experiment and cfg.model != "attention_robust_v2":
            raise ConfigError(f"--experiment {args.experiment} is an ablation of attention_robust_v2, not {cfg.model}")
        if args.folds < 2:
            raise ConfigError(f"--folds must be >= 2, got {args.folds}")
        features = args.features.split(",") if args.features else None
        data = load_data(args.data, features, args.profile)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from . import robustness
    from .trainer import train_trial

    experiment = args.experiment or cfg.model
    tid = records.trial_id(experiment, cfg, args.seed, data)
    t0 = time.time()

    def progress(epoch, score):
        print(f"\r{tid}: epoch {epoch}/{cfg.epochs}  mean val emoval {score:.4f}", end="", file=sys.stderr, flush=True)

    scenarios = robustness.scenarios() if args.robustness else None
    result = train_trial(cfg, data, args.seed, args.folds, args.device, on_epoch=progress, scenarios=scenarios)
    print(file=sys.stderr)
    results, epochs, predictions = records.tables(
        result, tid=tid, sweep="single", experiment=experiment, cfg=cfg, seed=args.seed, dataset=data,
        status="finished", wall_time_s=time.time() - t0)
    store.write_trial(args.out, tid, results, epochs, predictions)
    agg = results[(results.fold == store.AGGREGATE) & (results.scenario == "clean")]
    for _, r in agg.iterrows():
        print(f"{r.split:6s} f1 {r.f1:.4f}  acc {r.acc:.4f}  val_mse {r.val_mse:.4f}")
    print(f"wrote {args.out}/results/{tid}.parquet ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
