"""Searches beyond the grid: `--search random|optuna --num-samples N` over the grid YAML's space.

The space: the YAML's `grid:` lists (each a choice) and its `search:` distributions, mapped to
Ray Tune's domains:

    search:
      lr: {loguniform: [1e-4, 1e-2]}
      dropout: {uniform: [0.1, 0.5]}
      hidden_dim: {choice: [128, 256]}
      batch_size: {randint: [16, 65]}     # 16 <= x < 65

random: N points drawn up front from a seeded generator (`--search-seed`), so the same command
draws the same points and trial ids; from then on it is a grid (ASHA, resume, skip by trial id).

optuna: Optuna's TPE proposes the points one at a time (sweeps/study.py: the study, kept as Optuna
users read one); each proposed point is recorded in STORAGE/NAME/search/ before it runs. It runs
only N minus the stored trials; a proposal equal to a trial already stored or running is refused
and asked again.
"""
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import ray

from prmf.config import ConfigError, make_config
from sweeps import plan, study
from sweeps.definition import Point, Sweep
from sweeps.study import MAX_REPEATS

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint")


def add_args(ap):
    ap.add_argument("--search", choices=["grid", "random", "optuna"], default="grid",
                    help="grid: every combination (default); random: N seeded draws; optuna: TPE, one point at a time")
    ap.add_argument("--num-samples", type=int, default=10, help="points of a random or optuna search (default 10)")
    ap.add_argument("--search-seed", type=int, default=0, help="seed of the random draws / Optuna's sampler (default 0)")
    ap.add_argument("--optuna-storage", metavar="URL", help="the Optuna study's database, e.g. a lab's shared "
                    "postgresql://user:pass@host/db (default: sqlite:///STORAGE/NAME/optuna.db); the study's name is "
                    "the sweep's")


def _number(path, key, v):
    try:
        return float(v)  # YAML reads 1e-4 as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: search {key!r}: {v!r} is not a number") from None


def load_space(path, grid):
    """({config key: ray.tune domain}, the same as plain data) from the YAML's `search:` and the
    grid's lists (as choices)."""
    import yaml
    from ray import tune
    spec = yaml.safe_load(Path(path).read_text()) or {}
    search = spec.get("search") or {}
    if not isinstance(search, dict):
        raise ConfigError(f"{path}: search must map config keys to distributions ({', '.join(DISTRIBUTIONS)})")
    space = {k: tune.choice(list(v)) for k, v in grid.items()}
    plain = {k: {"choice": list(v)} for k, v in grid.items()}
    for key, dist in search.items():
        if key in space:
            raise ConfigError(f"{path}: {key!r} is both in grid: and in search:")
        if not (isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in DISTRIBUTIONS):
            raise ConfigError(f"{path}: search {key!r}: expected one of {{{': [...]}, {'.join(DISTRIBUTIONS)}: [...]}}, "
                              f"got {dist!r}")
        (kind, args), = dist.items()
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise ConfigError(f"{path}: search {key!r}: choice needs a non-empty list")
            space[key] = tune.choice(args)
            examples = args
        else:
            if not isinstance(args, list) or len(args) != 2:
                raise ConfigError(f"{path}: search {key!r}: {kind} needs [low, high]")
            lo, hi = (_number(path, key, a) for a in args)
            if not lo < hi or (kind == "loguniform" and lo <= 0):
                raise ConfigError(f"{path}: search {key!r}: {kind} needs low < high{' and low > 0' if kind == 'loguniform' else ''}")
            if kind == "randint":
                if lo != int(lo) or hi != int(hi):
                    raise ConfigError(f"{path}: search {key!r}: randint needs integer bounds")
                lo, hi = int(lo), int(hi)
            space[key] = getattr(tune, kind)(lo, hi)
            examples = [lo, hi - 1 if kind == "randint" else hi]
        plain[key] = {kind: args if kind == "choice" else [lo, hi]}
        for v in examples:  # every key and bound is a valid config value
            try:
                make_config(**{key: v})
            except ConfigError as e:
                raise ConfigError(f"{path}: search {e}") from None
    return space, plain


def plain(v):
    return v.item() if isinstance(v, np.generic) else v


def label(values) -> str:
    return ",".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def random_points(space, n, seed, make_point):
    """N distinct points drawn in order from a seeded generator (a space with fewer stops early)."""
    rng = np.random.default_rng(seed)
    points, seen, repeats = [], set(), 0
    while len(points) < n and repeats < MAX_REPEATS:
        values = {k: plain(d.sample(random_state=rng)) for k, d in space.items()}
        p = make_point(values)
        key = p.label  # distinct labels: the label is the point's name in the results tables
        repeats = repeats + 1 if key in seen else 0
        if key not in seen:
            seen.add(key)
            points.append(p)
    return points


class OptunaSearch:
    """sweeps/driver.py's hooks for a search whose points are proposed while it runs (see the module doc)."""

    def __init__(self, space, num_samples, seed, make_point, base_cfg, storage=None):
        self.space, self.n, self.seed, self.make_point, self.storage = space, num_samples, seed, make_point, storage
        self.base_cfg = base_cfg  # epochs and patience of every point (ASHA's max_t and grace)

    def _spec(self, ctx, values):
        p = self.make_point(values)
        sweep = dataclasses.replace(ctx["sweep"], points=[p])
        spec = plan.trial_specs(sweep, ctx["name"], ctx["root"], ctx["milestones"], ctx.get("data"))[0]
        spec.update(ctx["tracking"], search_values=values)
        return spec

    def configs(self, sweep):
        return [p.cfg for p in sweep.points] + [self.base_cfg]

    def known(self, ctx, planned):
        return self.recorded(ctx)

    def recorded(self, ctx) -> list:
        """The specs of every point proposed so far (stored or in flight), in proposal order."""
        d = ctx["root"] / "search"
        files = sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime_ns) if d.is_dir() else []
        return [self._spec(ctx, json.loads(f.read_text())["values"]) for f in files]

    def total(self, specs):
        return self.n

    def describe(self, sweep):
        return f"{self.n} points proposed one at a time"

    def todo(self, specs, done) -> int:
        return max(0, self.n - len(done))

    def packs(self, specs, done, size, root):
        return []  # each proposal is a Tune trial of its own (plan.solo_pack)

    def missing(self, ctx, specs, done) -> list:
        ids = [s["trial_id"] for s in self.recorded(ctx) if s["trial_id"] not in done]
        return ids + ["(not proposed)"] * max(0, self.todo(specs, done) - len(ids))

    def tune_config(self, ctx, done, pending, packs=()) -> dict:
        """search_alg and num_samples for tune.TuneConfig: the study's searcher (sweeps/study.py),
        the points interrupted before first."""
        import optuna
        from ray.tune.search.optuna import OptunaSearch as RayOptunaSearch

        root = ctx["root"]
        the_study = study.open_study(ctx["name"], self.storage or f"sqlite:///{root / 'optuna.db'}",
                                     ctx["sweep"].run.restart)
        resume = study.reconcile(the_study, lambda params: self._spec(ctx, params)["trial_id"],
                                 lambda tid: study.outcome(root, tid))
        the_study.sampler = optuna.samplers.TPESampler(seed=self.seed + len(the_study.trials))  # no replay of old draws
        distributions = RayOptunaSearch.convert_search_space(self.space)  # Tune's domains as Optuna's
        searcher = study.StudySearcher(the_study, distributions, self, ctx, done,
                                       [(s, resume.get(s["trial_id"])) for s in pending])
        limit = max(1, int(ray.cluster_resources().get("CPU", 1) // ctx["sweep"].run.cpus_per_trial))
        return {"search_alg": searcher, "num_samples": self.todo(None, done),
                "max_concurrent_trials": limit}  # no more proposals than can run: each learns from the last


def has_distributions(path) -> bool:
    import yaml
    spec = yaml.safe_load(Path(path).read_text())
    return isinstance(spec, dict) and bool(spec.get("search"))


def make_sweep(args, base, grid, make_cfg):
    """The Sweep of a random or optuna search over the grid YAML's space."""
    if args.search == "grid":
        raise ConfigError(f"{args.grid}: search: distributions need --search random or --search optuna")
    if args.num_samples < 1:
        raise ConfigError("--num-samples must be >= 1")
    space, plain = load_space(args.grid, grid)
    if {"epochs", "patience"} & set(space):
        raise ConfigError(f"{args.grid}: a search over epochs or patience: set them (--epochs, --patience) instead")
    tag = args.search

    def make_point(values):
        return Point(label(values), make_cfg(values), tag=tag)

    settings = {"grid_base": base, "search": args.search, "search_seed": args.search_seed,
                "search_space": plain}
    if args.search == "random":
        points = random_points(space, args.num_samples, args.search_seed, make_point)
        if len(points) < args.num_samples:
            print(f"note: the space holds {len(points)} distinct points; running those", file=sys.stderr)
        return Sweep("random", points, args, asha=args.asha, settings=settings)
    if args.seeds != 1:
        raise ConfigError("--search optuna runs one seed per point (--seeds 1); repeat the best points as a grid")
    study.check(args.optuna_storage)  # before Ray: the package, the database
    settings["optuna_storage"] = study.shown(args.optuna_storage) if args.optuna_storage else None  # a resume finds the study
    return Sweep("optuna", [], args, asha=args.asha, settings=settings,
                 search=OptunaSearch(space, args.num_samples, args.search_seed, make_point, make_cfg({}), args.optuna_storage))
