"""A hyperparameter grid from a YAML file over k-fold CV, on Ray Tune, pruned by ASHA.

    python sweeps/grid.py                                   # sweeps/configs/prmf_grid.yaml
    python sweeps/grid.py --grid my_grid.yaml --num-gpus 4

The YAML has `base` (an ablation preset Exp1..Exp5 or a model name), `set` (fixed overrides)
and `grid` (config key -> list of values); every combination is a point. Run the same
command again to resume an interrupted sweep.
"""
import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from prmf.config import EXPERIMENTS, MODELS, ConfigError, experiment_config, make_config  # noqa: E402
from sweeps import core, search  # noqa: E402

DEFAULT_GRID = Path(__file__).resolve().parent / "configs" / "prmf_grid.yaml"


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default=str(DEFAULT_GRID), help="grid YAML file (default: the design plan's grid)")
    ap.add_argument("--no-asha", dest="asha", action="store_false", help="run every point to the end (no pruning)")
    search.add_args(ap)  # --search grid|random|optuna, --num-samples, --search-seed
    return core.add_common_args(ap)


def load_grid(path):
    """(base name, fixed overrides, {key: values}) from a grid YAML, every key checked."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read grid ({str(e).splitlines()[0]})") from None
    if isinstance(spec, dict) and spec.get("search") and spec.get("grid") is None:
        spec["grid"] = {}  # a space of distributions only (sweeps/search.py)
    if not isinstance(spec, dict) or not isinstance(spec.get("grid"), dict) or not (spec["grid"] or spec.get("search")):
        raise ConfigError(f"{path}: expected a mapping with a non-empty 'grid:' of key -> list of values")
    extra = set(spec) - {"base", "set", "grid", "search"}
    if extra:
        raise ConfigError(f"{path}: unknown top-level key {sorted(extra)[0]!r} (known: base, set, grid, search)")
    base = spec.get("base", "Exp4")
    if base not in EXPERIMENTS and base not in MODELS:
        raise ConfigError(f"{path}: base {base!r} is neither an experiment ({', '.join(EXPERIMENTS)}) nor a model")
    grid = {}
    for key, values in spec["grid"].items():
        values = values if isinstance(values, list) else [values]
        try:
            make_config(**{key: values[0]})
        except ConfigError as e:
            raise ConfigError(f"{path}: grid {e}") from None
        grid[key] = values
    return base, dict(spec.get("set") or {}), grid


def point_config(base, changes):
    return experiment_config(base, **changes) if base in EXPERIMENTS else make_config(model=base, **changes)


def make_sweep(args) -> core.Sweep:
    base, fixed, grid = load_grid(args.grid)
    changes = core.config_changes(args, fixed)
    if args.search != "grid" or search.has_distributions(args.grid):  # random / optuna: sweeps/search.py
        return search.make_sweep(args, base, grid, lambda values: point_config(base, {**changes, **values}))
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        cfg = point_config(base, {**changes, **values})
        label = ",".join(f"{k}={v}" for k, v in values.items())
        points.append(core.Point(label, cfg, tag="grid"))
    return core.Sweep("grid", points, args, asha=args.asha, settings={"grid_base": base})


def main(argv=None):
    return core.main(build_parser, make_sweep, argv)


if __name__ == "__main__":
    sys.exit(main())
