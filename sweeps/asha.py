"""ASHA whose rung records survive a resumed sweep.

Ray Tune keeps ASHA's rung records (each trial's score at each rung) only in the driver's memory:
a resumed sweep starts a fresh scheduler, so the trials still to run would be judged against
nothing and a hopeless grid point met after a resume would train to the end. This scheduler
writes the records to a JSON file in the sweep's folder whenever one is added, keyed by the
sweep's own trial id (Tune's trial ids change from run to run), and loads them when it starts:
finished trials keep counting at their rungs, and a trial resumed past a rung is not judged there
again. It reads Ray's `AsyncHyperBandScheduler` internals (`_brackets`, `_rungs`);
tests/test_asha_resume.py pins them.
"""
import json
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler

from prmf.store import atomic_write


def _sweep_id(trial):
    return trial.config["trial"]["trial_id"]


class PersistentASHA(ASHAScheduler):
    def __init__(self, rung_file, **kwargs):
        super().__init__(**kwargs)
        self.rung_file = Path(rung_file)
        self.sweep_ids = {}  # Tune trial id -> sweep trial id
        saved = json.loads(self.rung_file.read_text()) if self.rung_file.exists() else {}
        for bracket in self._brackets:
            for milestone, recorded in bracket._rungs:
                recorded.update(saved.get(str(milestone), {}))
        self._saved = self.records()

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        sid = self.sweep_ids[trial.trial_id] = _sweep_id(trial)
        for bracket in self._brackets:  # its own earlier scores now speak for it
            for _, recorded in bracket._rungs:
                if sid in recorded:
                    recorded[trial.trial_id] = recorded.pop(sid)

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def records(self) -> dict:
        """{milestone: {sweep trial id: score}}, the score signed so that higher is better."""
        out = {}
        for bracket in self._brackets:
            for milestone, recorded in bracket._rungs:
                rung = out.setdefault(str(milestone), {})
                rung.update({self.sweep_ids.get(k, k): float(v) for k, v in recorded.items()})
        return out

    def _save(self):
        records = self.records()
        if records != self._saved:
            atomic_write(self.rung_file, lambda tmp: Path(tmp).write_text(json.dumps(records, indent=1)))
            self._saved = records
