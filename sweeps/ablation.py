"""The paper's ablation suite (the experiment presets below) over k-fold CV, on Ray Tune.

    python sweeps/ablation.py --num-gpus 8                 # every experiment, the paper's settings
    python sweeps/ablation.py --experiments Exp1,Exp4 --quick

Every experiment is a row of the paper's table, so none is pruned against another unless
--asha is given. Run the same command again to resume an interrupted sweep.

Experiments (presets of attention_robust_v2, the paper's training settings otherwise):
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prmf.config import EXPERIMENTS, ConfigError, experiment_config, experiments_help  # noqa: E402
from sweeps import core  # noqa: E402


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1] + experiments_help(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", default=",".join(EXPERIMENTS),
                    help=f"comma-separated subset of {', '.join(EXPERIMENTS)} (default: all)")
    ap.add_argument("--asha", action="store_true", help="let ASHA prune weak experiments (off: each is a table row)")
    return core.add_common_args(ap)


def make_sweep(args) -> core.Sweep:
    names = list(dict.fromkeys(n.strip() for n in args.experiments.split(",") if n.strip()))  # once each
    if not names:
        raise ConfigError(f"--experiments {args.experiments!r} names no experiment (known: {', '.join(EXPERIMENTS)})")
    for n in names:
        if n not in EXPERIMENTS:
            raise ConfigError(f"unknown experiment {n!r} (known: {', '.join(EXPERIMENTS)})")
    changes = core.config_changes(args)
    points = [core.Point(n, experiment_config(n, **changes), tag=n) for n in names]
    return core.Sweep("ablation", points, args, asha=args.asha)


def main(argv=None):
    return core.main(build_parser, make_sweep, argv)


if __name__ == "__main__":
    sys.exit(main())
