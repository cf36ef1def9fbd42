"""Where a sweep's trials come from, behind the one interface the driver calls: a fixed plan (the
points x seeds, known up front, trained in packs: this module) or a search whose points are
proposed one at a time while it runs (sweeps/search.OptunaSearch). The driver asks a source

    configs(sweep)                 the configs to check before any work
    known(ctx, planned)            the trials known now (planned: the points x seeds)
    total(specs)                   how many trials the sweep has
    describe(sweep)                its points, in words
    todo(specs, done)              how many of them are left to run (0: nothing to launch)
    packs(specs, done, size, root) the packs to run this time ([]: one Tune trial per proposal)
    tune_config(ctx, done, pending, packs)   Tune's search_alg and num_samples
    missing(ctx, specs, done)      the trials that did not finish
"""
from sweeps import plan


class FixedPlan:
    """The trials of a grid or the ablation suite: every point x seed, packed (sweeps/plan.py),
    handed to Tune one pack id at a time."""

    def configs(self, sweep):
        return [p.cfg for p in sweep.points]

    def known(self, ctx, planned):
        return planned

    def total(self, specs):
        return len(specs)

    def describe(self, sweep):
        return f"{len(sweep.points)} points"

    def todo(self, specs, done):
        return sum(s["trial_id"] not in done for s in specs)

    def packs(self, specs, done, size, root):
        """All of a pack's trials (its checkpoint's), for the packs with a trial not stored yet."""
        return [(pid, trials) for pid, trials in plan.make_packs(specs, size, root)
                if any(s["trial_id"] not in done for s in trials)]

    def tune_config(self, ctx, done, pending, packs):
        return {"search_alg": pack_searcher([pid for pid, _ in packs]), "num_samples": len(packs)}

    def missing(self, ctx, specs, done):
        return [s["trial_id"] for s in specs if s["trial_id"] not in done]


def source(sweep):
    """The sweep's source of trials: its search, else its fixed plan."""
    return sweep.search or FixedPlan()


def pack_searcher(ids):
    """Tune's trials as a searcher that hands out one pack id each time Tune has room for a trial:
    Tune creates them as they start, and a grid_search over the ids (Tune copies the whole grid for
    each of its variants) would cost the square of the packs before the first one starts."""
    from ray.tune.search import Searcher

    class PackSearcher(Searcher):
        def __init__(self):
            super().__init__()
            self.todo = iter(ids)

        def set_search_properties(self, metric, mode, config, **spec):
            return True

        def suggest(self, trial_id):
            pid = next(self.todo, None)
            return Searcher.FINISHED if pid is None else {"pack": pid}

        def on_trial_complete(self, trial_id, result=None, error=False):
            pass

        def save(self, checkpoint_path):
            pass  # nothing to keep: a resumed sweep plans its packs again from packs.json and the store

    return PackSearcher()
