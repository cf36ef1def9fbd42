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

optuna: Ray Tune's OptunaSearch (TPE) proposes the points one at a time, its study persisted in
STORAGE/NAME/optuna.db; each proposed point is recorded in STORAGE/NAME/search/ before it runs.
The value the study gets for a point is the trial's stored result, its cv emoval (the mean over
folds of each fold's best-epoch validation emoval: the store's aggregate cv row), so the study and
the results table agree; a trial that ends unstored is FAIL. A resumed search first brings the
study in line with the store: a trial stored while the last run was interrupted (still RUNNING, or
FAIL, in the study) becomes COMPLETE with its stored result; the other interrupted ones fail and
their points are proposed again first (they continue from their checkpoints under the same trial
ids). It runs only N minus the stored trials; a proposal equal to a trial already stored or
running is refused and asked again.
"""
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import ray
from ray.tune.search import Searcher

from prmf import store
from prmf.config import ConfigError, make_config
from prmf.store import atomic_write
from sweeps import plan
from sweeps.definition import Point, Sweep

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint")
MAX_REPEATS = 50  # proposals in a row that repeat a known point before the space counts as exhausted


def add_args(ap):
    ap.add_argument("--search", choices=["grid", "random", "optuna"], default="grid",
                    help="grid: every combination (default); random: N seeded draws; optuna: TPE, one point at a time")
    ap.add_argument("--num-samples", type=int, default=10, help="points of a random or optuna search (default 10)")
    ap.add_argument("--search-seed", type=int, default=0, help="seed of the random draws / Optuna's sampler (default 0)")


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


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def label(values) -> str:
    return ",".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def random_points(space, n, seed, make_point):
    """N distinct points drawn in order from a seeded generator (a space with fewer stops early)."""
    rng = np.random.default_rng(seed)
    points, seen, repeats = [], set(), 0
    while len(points) < n and repeats < MAX_REPEATS:
        values = {k: _plain(d.sample(random_state=rng)) for k, d in space.items()}
        p = make_point(values)
        key = p.label  # distinct labels: the label is the point's name in the results tables
        repeats = repeats + 1 if key in seen else 0
        if key not in seen:
            seen.add(key)
            points.append(p)
    return points


class OptunaSearch:
    """sweeps/driver.py's hooks for a search whose points are proposed while it runs (see the module doc)."""

    def __init__(self, space, num_samples, seed, make_point, base_cfg):
        self.space, self.n, self.seed, self.make_point = space, num_samples, seed, make_point
        self.base_cfg = base_cfg  # epochs and patience of every point (ASHA's max_t and grace)

    def _spec(self, ctx, values):
        p = self.make_point(values)
        sweep = dataclasses.replace(ctx["sweep"], points=[p])
        spec = plan.trial_specs(sweep, ctx["name"], ctx["root"], ctx["milestones"], ctx.get("data"))[0]
        spec.update(ctx["tracking"], search_values=values)
        return spec

    def recorded(self, ctx) -> list:
        """The specs of every point proposed so far (stored or in flight), in proposal order."""
        d = ctx["root"] / "search"
        files = sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime_ns) if d.is_dir() else []
        return [self._spec(ctx, json.loads(f.read_text())["values"]) for f in files]

    def todo(self, done) -> int:
        return max(0, self.n - len(done))

    def missing(self, ctx, done) -> list:
        ids = [s["trial_id"] for s in self.recorded(ctx) if s["trial_id"] not in done]
        return ids + ["(not proposed)"] * max(0, self.todo(done) - len(ids))

    def tune_config(self, ctx, done, pending) -> dict:
        """search_alg and num_samples for tune.TuneConfig: Optuna behind a searcher that hands out specs."""
        import optuna
        from ray.tune.search.optuna import OptunaSearch as RayOptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.RDBStorage(f"sqlite:///{ctx['root'] / 'optuna.db'}")
        try:
            study = optuna.load_study(study_name=ctx["name"], storage=storage)
            reconcile(study, lambda params: self._spec(ctx, params)["trial_id"], lambda tid: store.trial_result(ctx["root"], tid))
            asked = len(study.trials)
        except KeyError:
            asked = 0
        inner = RayOptunaSearch(RayOptunaSearch.convert_search_space(self.space), metric=OBJECTIVE, mode="max",
                                study_name=ctx["name"], storage=storage,
                                sampler=optuna.samplers.TPESampler(seed=self.seed + asked),  # no replay of old draws
                                points_to_evaluate=[s["search_values"] for s in pending] or None)
        limit = max(1, int(ray.cluster_resources().get("CPU", 1) // ctx["sweep"].run.cpus_per_trial))
        return {"search_alg": SpecSearcher(inner, self, ctx, done), "num_samples": self.todo(done),
                "max_concurrent_trials": limit}  # no more proposals than can run: each learns from the last


OBJECTIVE = "cv_emoval"  # what the study maximises: the trial's stored result


def reconcile(study, trial_id_of, result_of):
    """The study as the store says, before a resumed search asks it for points: a RUNNING or FAIL
    trial whose point was stored (while the last run was interrupted) is COMPLETE with the stored
    result (a FAIL one cannot change state, so a COMPLETE twin is added); the other RUNNING ones
    fail, and their points are proposed again. Returns the trial ids made COMPLETE."""
    import optuna
    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = {trial_id_of(t.params) for t in trials if t.state == state.COMPLETE and t.params}
    made = set()
    for t in trials:
        if t.state not in (state.RUNNING, state.FAIL):
            continue
        tid = trial_id_of(t.params) if t.params else None
        value = result_of(tid) if tid and tid not in complete else None
        if value is not None and t.state == state.RUNNING:
            study.tell(t.number, value)
        elif value is not None:
            study.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=value))
        elif t.state == state.RUNNING:
            study.tell(t.number, state=state.FAIL)
        if value is not None:
            complete.add(tid)
            made.add(tid)
    return made


class SpecSearcher(Searcher):
    """Optuna's point -> the sweep's trial spec (trial id, config, store paths), recorded first; a
    trial's end -> the study gets its stored result (FAIL when it ended unstored)."""

    def __init__(self, inner, search, ctx, done):
        super().__init__()
        self.inner, self.search, self.ctx = inner, search, ctx
        self.taken = set(done)  # trial ids stored or handed out in this run
        self.keys = {}  # Tune trial id -> (the inner searcher's id of its point, the sweep's trial id)

    def set_search_properties(self, metric, mode, config, **spec):
        return True

    def save(self, checkpoint_path):
        pass  # the study is saved as it goes (optuna.db), the proposals in search/

    def suggest(self, trial_id):
        for attempt in range(MAX_REPEATS):
            key = trial_id if attempt == 0 else f"{trial_id}~{attempt}"
            values = self.inner.suggest(key)
            if values is None or values == Searcher.FINISHED:
                return values
            values = {k: _plain(v) for k, v in values.items()}
            spec = self.search._spec(self.ctx, values)
            if spec["trial_id"] in self.taken:  # a point already stored or running: Optuna asks again
                self.inner.on_trial_complete(key, error=True)
                continue
            self.taken.add(spec["trial_id"])
            self.keys[trial_id] = (key, spec["trial_id"])
            record = self.ctx["root"] / "search" / f"{spec['trial_id']}.json"
            if not record.exists():
                atomic_write(record, lambda tmp: Path(tmp).write_text(json.dumps(
                    {"trial_id": spec["trial_id"], "values": values}, indent=1)))
            return {"trial": spec}
        return Searcher.FINISHED  # the space holds no new point

    def on_trial_result(self, trial_id, result):
        pass  # the study learns from results, not epochs: pruning is ASHA's, inside the packs

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self.keys:
            key, tid = self.keys[trial_id]
            value = store.trial_result(self.ctx["root"], tid)
            self.inner.on_trial_complete(key, result=None if value is None else {OBJECTIVE: value},
                                         error=value is None)



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
    return Sweep("optuna", [], args, asha=args.asha, settings=settings,
                      search=OptunaSearch(space, args.num_samples, args.search_seed, make_point, make_cfg({})))
