"""A hyperparameter grid from a YAML file over k-fold CV, on Ray Tune, pruned by ASHA.

    python sweeps/grid.py                                   # sweeps/configs/prmf_grid.yaml
    python sweeps/grid.py --grid my_grid.yaml --num-gpus 4

The YAML has `base` (an experiment preset, listed below, or a model name), `set` (fixed
overrides) and `grid` (config key -> list of values); every combination is a point. A grid over
`model` is refused: run one grid per model, with that model (or preset) as `base`. Run the same
command again to resume an interrupted sweep.

Presets (the rows of the paper's table):
"""
import argparse
import itertools
import sys
from pathlib import Path

import yaml

from prmf.config import (MODELS, PRESETS, ConfigError, experiments_help, make_config, parse_sets, parse_value,
                         preset_config)
from sweeps import cli, search
from sweeps.definition import Point, Sweep

DEFAULT_GRID = Path(__file__).resolve().parent / "configs" / "prmf_grid.yaml"


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1] + experiments_help(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default=str(DEFAULT_GRID), help="grid YAML file (default: sweeps/configs/prmf_grid.yaml, "
                    "kl_weight x recon_weight x fusion_temperature on Exp4, 27 points)")
    ap.add_argument("--no-asha", dest="asha", action="store_false", help="run every point to the end (no pruning)")
    search.add_args(ap)  # --search grid|random|optuna, --num-samples, --search-seed
    return cli.add_common_args(ap)


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps
    the last value silently, and a grid would run without the values listed first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                continue  # an unhashable key: the safe loader's own error says so
            if key in seen:
                raise ConfigError(f"key {key!r} is given twice (line {key_node.start_mark.line + 1}); "
                                  f"list all its values once")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_grid(path):
    """(base name, fixed overrides, {key: values}) from a grid YAML, every key checked."""
    path = Path(path)
    try:
        spec = yaml.load(path.read_text(), Loader=_UniqueKeys)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ConfigError) as e:
        raise ConfigError(f"{path}: cannot read grid ({str(e).splitlines()[0]})") from None
    if isinstance(spec, dict) and spec.get("search") and spec.get("grid") is None:
        spec["grid"] = {}  # a space of distributions only (sweeps/search.py)
    if not isinstance(spec, dict) or not isinstance(spec.get("grid"), dict) or not (spec["grid"] or spec.get("search")):
        raise ConfigError(f"{path}: expected a mapping with a non-empty 'grid:' of key -> list of values")
    extra = set(spec) - {"base", "set", "grid", "search"}
    if extra:
        raise ConfigError(f"{path}: unknown top-level key {sorted(extra)[0]!r} (known: base, set, grid, search)")
    base = spec.get("base", "Exp4")
    if not isinstance(base, str) or (base not in PRESETS and base not in MODELS):
        raise ConfigError(f"{path}: base {base!r} must be one experiment ({', '.join(PRESETS)}) "
                          f"or one model ({', '.join(MODELS)})")
    fixed = spec.get("set") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{path}: set must be a mapping of config key -> one value, got {fixed!r}")
    if "model" in spec["grid"] or "model" in fixed:
        raise ConfigError(f"{path}: a grid over model: run one grid per model, with the model "
                          f"({', '.join(MODELS)}) or an experiment preset as base:")
    fixed = {key: _value(path, "set", key, v) for key, v in fixed.items()}
    grid = {}
    for key, values in spec["grid"].items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{path}: grid {key!r} has no values")
        unique = []
        for v in values:
            v = _value(path, "grid", key, v)
            if v not in unique:
                unique.append(v)
        if len(unique) < len(values):
            print(f"note: {path}: grid {key!r} lists a value twice; each value runs once", file=sys.stderr)
        grid[key] = unique
    return base, fixed, grid


def _value(path, where, key, value):
    """One YAML value as the config field's type: a string goes through the `--set` parser, so
    `1e-2` (a string to YAML) is the float it means; a list or mapping is refused."""
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{path}: {where} {key!r}: expected one value, got {value!r}")
    try:
        if isinstance(value, str):
            value = parse_value(key, value)
        make_config(**{key: value})
    except ConfigError as e:
        raise ConfigError(f"{path}: {where} {e}") from None
    return value


def point_config(base, changes):
    return preset_config(base, **changes) if base in PRESETS else make_config({"model": base}, **changes)


def make_sweep(args) -> Sweep:
    base, fixed, grid = load_grid(args.grid)
    if "model" in parse_sets(args.set):
        raise ConfigError("--set model: a grid over model: run one grid per model, with the model as base: in the YAML")
    changes = cli.config_changes(args, fixed)
    if args.search != "grid" or search.has_distributions(args.grid):  # random / optuna: sweeps/search.py
        return search.make_sweep(args, base, grid, lambda values: point_config(base, {**changes, **values}))
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        cfg = point_config(base, {**changes, **values})
        label = ",".join(f"{k}={v}" for k, v in values.items())
        points.append(Point(label, cfg, tag="grid"))
    return Sweep("grid", points, args, asha=args.asha, settings={"grid_base": base})


def main(argv=None):
    return cli.main(build_parser, make_sweep, argv)


if __name__ == "__main__":
    sys.exit(main())
