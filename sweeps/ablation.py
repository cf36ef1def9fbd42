"""The paper's table over k-fold CV on Ray Tune: the baselines (attention, attention_robust) and
the ablations Exp1-Exp5 of attention_robust_v2, each its preset (prmf.config.PRESETS).

    python sweeps/ablation.py --num-gpus 8                 # all seven rows, the presets' settings
    python sweeps/ablation.py --experiments Exp1,Exp4 --quick
    python sweeps/ablation.py --set fidelity=paper         # the paper's equations instead of the published file

Every row is a table row, so none is pruned against another unless --asha is given. Presets
whose effective configs are equal (Exp5 and Exp1 except under fidelity paper) are trained once and
stored under each name, with `identical_to` naming the other. Run the same command again to
resume an interrupted sweep.

Presets (--experiments):
"""
import argparse
import sys

from prmf.config import PRESETS, ConfigError, effective_config, experiments_help, preset_config
from prmf.schedules import full_rate_epoch, modality_dropout_rate
from sweeps import cli
from sweeps.definition import Point, Sweep


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1] + experiments_help(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", default=",".join(PRESETS),
                    help="comma-separated presets, listed below (default: all seven rows)")
    ap.add_argument("--asha", action="store_true", help="let ASHA prune weak experiments (off: each is a table row)")
    return cli.add_common_args(ap)


def cannot_differ_yet(cfg) -> bool:
    """Modality dropout is part of the model but its rate stays 0 for all of cfg.epochs."""
    return (cfg.model != "attention" and cfg.use_modality_dropout and cfg.modality_dropout > 0
            and all(modality_dropout_rate(cfg, e) == 0 for e in range(1, cfg.epochs + 1)))


def make_sweep(args) -> Sweep:
    names = list(dict.fromkeys(n.strip() for n in args.experiments.split(",") if n.strip()))  # once each
    if not names:
        raise ConfigError(f"--experiments {args.experiments!r} names no experiment (known: {', '.join(PRESETS)})")
    for n in names:
        if n not in PRESETS:
            raise ConfigError(f"unknown experiment {n!r} (known: {', '.join(PRESETS)})")
    changes = cli.config_changes(args)
    points, by_effective, notes = [], {}, []
    for n in names:
        cfg = preset_config(n, **changes)
        key = repr(sorted(effective_config(cfg).items()))
        if key in by_effective:
            first = by_effective[key]
            first.identical += (n,)
            notes.append(f"{n} is identical in configuration to {first.label} (fidelity {cfg.fidelity}): "
                         f"trained once, rows stored for both")
            continue
        points.append(Point(n, cfg, tag=n))
        by_effective[key] = points[-1]
        if cannot_differ_yet(cfg):
            notes.append(f"{n}: modality dropout starts after epoch {cfg.modality_dropout_warmup} (ramp {cfg.ramp}, "
                         f"p={cfg.modality_dropout:g} from epoch {full_rate_epoch(cfg)}); in {cfg.epochs} epochs it never drops a "
                         f"modality, so what modality dropout adds to this row cannot show yet")
    return Sweep("ablation", points, args, asha=args.asha, notes=notes)


def main(argv=None):
    return cli.main(build_parser, make_sweep, argv)


if __name__ == "__main__":
    sys.exit(main())
