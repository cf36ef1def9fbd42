"""The Optuna study behind `--search optuna`, kept the way Optuna users read one: one trial per
point the sweep runs, its validation score reported every epoch (`trial.report(value, epoch)`), and
its end as the store has it: COMPLETE with the stored result (the cv emoval), PRUNED when ASHA
stopped it (its value: the last epoch reported, as Optuna's own pruning gives), FAIL when it
diverged. A trial interrupted mid-run stays RUNNING and is resumed in place by the next run of the
sweep: the same Optuna trial goes on from its checkpoint, so an interrupt adds no trial.

Ray Tune's OptunaSearch would report Tune's iteration (restarting at 1 in every run) instead of
the epoch, tell a trial that ended without a result PRUNED or FAIL, and cannot continue a trial of
an earlier run; so the searcher here asks and tells the study itself (Optuna's ask-and-tell API).

The study lives in STORAGE/NAME/optuna.db (SQLite) unless `--optuna-storage URL` names a shared
database (PostgreSQL, MySQL: any SQLAlchemy URL), where optuna-dashboard shows every sweep's study
by the sweep's name.
"""
import json
import math
from pathlib import Path

import numpy as np
from ray.tune.search import Searcher

from prmf import store
from prmf.config import ConfigError

INSTALL = "pip install 'prmf-sweep[search]'"
MAX_REPEATS = 50  # proposals in a row that repeat a known point before the space counts as exhausted


def shown(url) -> str:
    """The URL with its password hidden, for messages and sweep.json."""
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  not a URL at all: shown as given
        return url


def check(url):
    """Before Ray starts: the optuna package, and the database at `url` (None: the sweep folder's
    SQLite file, made when the study is); one line if either is missing."""
    try:
        import optuna
    except ImportError as e:
        raise ConfigError(f"--search optuna needs the optuna package ({e}): {INSTALL}") from None
    if url:
        try:
            optuna.storages.RDBStorage(url)
        except Exception as e:  # noqa: BLE001  a driver missing, a server unreachable, a bad URL
            raise ConfigError(f"--optuna-storage {shown(url)}: cannot open it "
                              f"({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]})") from None


def open_study(name, url, restart):
    """The sweep's study (created when new; deleted first on --restart: in a shared database it
    outlives the sweep folder)."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url)
    if restart and name in optuna.study.get_all_study_names(storage):
        optuna.delete_study(study_name=name, storage=storage)
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)


def outcome(root, trial_id):
    """How a stored trial ends in the study: {'state', 'values' (COMPLETE only), 'curve': {epoch:
    val_emoval} from the store's per-epoch history, as the pack reported it}; None while it is not
    stored."""
    import optuna
    rows = store.read_trial(root, trial_id)
    if rows.empty:
        return None
    state = optuna.trial.TrialState
    status, value = str(rows.status.iloc[0]), store.cv_emoval(rows)
    epochs = store.read_trial(root, trial_id, "epochs")
    curve = epochs[np.isfinite(epochs.val_emoval)].groupby("epoch").val_emoval.mean()  # the folds that ran it
    end = {"curve": {int(e): float(v) for e, v in curve.items()}}
    if status == "pruned":
        return {"state": state.PRUNED, **end}
    if status == "finished" and value is not None:
        return {"state": state.COMPLETE, "values": value, **end}
    return {"state": state.FAIL, **end}


def finish(study, number, end):
    """Tell the study how trial `number` ended (outcome()), first reporting the epochs no driver
    heard (run just before a kill, or while none listened) from the store's history."""
    import optuna
    frozen = study.get_trials(deepcopy=False)[number]
    trial = optuna.trial.Trial(study, frozen._trial_id)  # Optuna's handle on a trial of an earlier run
    for epoch, value in sorted(end.get("curve", {}).items()):
        if epoch not in frozen.intermediate_values:
            trial.report(value, epoch)
    study.tell(number, state=end["state"], values=end.get("values"))


def reconcile(study, trial_id_of, outcome_of) -> dict:
    """The study as the store says, before a resumed search asks it for points. A RUNNING trial
    (the run before was interrupted) whose point was stored meanwhile ends as stored; one whose
    point was not is left RUNNING, to be resumed in place. A FAIL trial whose point was stored
    (studies of earlier versions, which failed interrupted trials) gets a twin that ends as stored.
    Returns {trial id: Optuna trial number} of the trials to resume."""
    import optuna
    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    ended = {trial_id_of(t.params) for t in trials if t.state in (state.COMPLETE, state.PRUNED) and t.params}
    resume = {}
    for t in trials:
        if t.state not in (state.RUNNING, state.FAIL):
            continue
        tid = trial_id_of(t.params) if t.params else None
        end = outcome_of(tid) if tid and tid not in ended else None
        if end and t.state == state.RUNNING:
            finish(study, t.number, end)
        elif end:
            values = end.get("values")
            study.add_trial(optuna.trial.create_trial(
                state=end["state"], value=values, params=t.params, distributions=t.distributions,
                intermediate_values=t.intermediate_values if end["state"] == state.PRUNED else None))
        elif t.state == state.RUNNING and tid and tid not in ended and tid not in resume:
            resume[tid] = t.number
            continue
        elif t.state == state.RUNNING:  # no point, or a point already ended: nothing to resume
            study.tell(t.number, state=state.FAIL)
        if end:
            ended.add(tid)
    return resume


class StudySearcher(Searcher):
    """Tune's searcher over the study: the points interrupted before first (the same Optuna trials),
    then Optuna's proposals, each turned into the sweep's trial spec and recorded in
    STORAGE/NAME/search/ before it runs; every epoch's score reported; the end told as stored."""

    def __init__(self, study, distributions, search, ctx, done, resume):
        super().__init__()
        self.study, self.distributions, self.search, self.ctx = study, distributions, search, ctx
        self.taken = set(done)  # trial ids stored, or handed out in this run
        self.resume = list(resume)  # [(spec, Optuna trial number or None: asked again)]
        self.live = {}  # Tune trial id -> (optuna.trial.Trial, the sweep's trial id, epochs reported)

    def set_search_properties(self, metric, mode, config, **spec):
        return True

    def save(self, checkpoint_path):
        pass  # the study is saved as it goes, the proposals in search/

    def restore(self, checkpoint_path):
        pass

    def _ask(self):
        """A new point from Optuna: (trial, spec), or None when the space holds no new one. A repeat
        of a point stored or running ends FAIL, its user attribute `repeats` naming that trial."""
        import optuna
        from sweeps.search import plain
        for _ in range(MAX_REPEATS):
            trial = self.study.ask(self.distributions)
            spec = self.search._spec(self.ctx, {k: plain(v) for k, v in trial.params.items()})
            if spec["trial_id"] not in self.taken:
                return trial, spec
            trial.set_user_attr("repeats", spec["trial_id"])
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None

    def suggest(self, trial_id):
        import optuna
        if self.resume:
            spec, number = self.resume.pop(0)
            if number is None:  # interrupted under an earlier version (its trial FAIL): asked again
                self.study.enqueue_trial(spec["search_values"])
                trial = self.study.ask(self.distributions)
            else:
                frozen = self.study.get_trials(deepcopy=False)[number]
                trial = optuna.trial.Trial(self.study, frozen._trial_id)  # the RUNNING trial, continued in place
        else:
            asked = self._ask()
            if asked is None:
                return Searcher.FINISHED
            trial, spec = asked
        tid = spec["trial_id"]
        self.taken.add(tid)
        reported = set(self.study.get_trials(deepcopy=False)[trial.number].intermediate_values)
        self.live[trial_id] = (trial, tid, reported)
        record = self.ctx["root"] / "search" / f"{tid}.json"
        if not record.exists():
            store.atomic_write(record, lambda tmp: Path(tmp).write_text(json.dumps(
                {"trial_id": tid, "values": spec["search_values"]}, indent=1)))
        return {"trial": spec}

    def on_trial_result(self, trial_id, result):
        trial, _, reported = self.live.get(trial_id, (None, None, None))
        epoch, value = int(result.get("epoch") or 0), result.get("val_emoval")
        if trial and epoch and epoch not in reported and value is not None and math.isfinite(value):
            trial.report(value, epoch)  # a resumed trial's replayed epochs are reported once
            reported.add(epoch)

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id not in self.live:
            return
        trial, tid, _ = self.live.pop(trial_id)
        end = outcome(self.ctx["root"], tid)
        if end:
            finish(self.study, trial.number, end)
        # not stored (interrupted, or its worker failed): RUNNING, resumed in place by the next run
