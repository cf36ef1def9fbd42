"""ASHA's rung rule applied to every trial inside a pack, over rung records that outlive a sweep run.

A Tune trial here is a pack: several trials (grid points x seeds) trained as one batched model, so
Tune's ASHA, which sees one score per Tune trial, cannot prune inside it. The pack applies ASHA's
own rule per trial instead (Ray's AsyncHyperBandScheduler, `_Bracket.on_result`; pinned against it
by tests/test_asha_resume.py): at a rung (milestone epoch), a trial scoring below the (1 - 1/rf)
quantile of the scores recorded at that rung so far stops; its score is recorded either way. The
records live in one JSON file in the sweep folder, {milestone: {trial id: score}} plus the stop
decisions, updated under a lock by every pack, so packs running in parallel and a sweep resumed
later judge against the same records, and a trial resumed past a rung keeps the decision it got.
"""
import fcntl
import json
import math
from pathlib import Path

import numpy as np

from prmf.store import atomic_write

REDUCTION = 3


def milestones(grace, max_t, reduction=REDUCTION):
    """The rungs: grace, grace*rf, ... below max_t."""
    out, t = [], grace
    while t < max_t:
        out.append(int(t))
        t *= reduction
    return out


def cutoff(scores, reduction=REDUCTION):
    """The score a trial must reach at a rung: the (1 - 1/rf) quantile of those recorded there."""
    return float(np.nanpercentile(scores, (1 - 1 / reduction) * 100)) if scores else None


class Rungs:
    def __init__(self, path, reduction=REDUCTION):
        self.path, self.reduction = Path(path), reduction

    def read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def judge(self, milestone: int, scores: dict) -> set:
        """Record {trial id: score} at this rung; returns the ids to stop. A trial recorded here
        before (a resumed pack) is not judged again: it keeps the decision it got then."""
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self.read()
            rung = records.setdefault(str(milestone), {})
            stopped = records.setdefault("stopped", {})
            stop = set()
            for tid, score in scores.items():
                if tid in rung:
                    if tid in stopped:
                        stop.add(tid)
                    continue
                if score is None or math.isnan(score):  # Ray records no score it cannot compare
                    continue
                limit = cutoff([v for v in rung.values() if v is not None], self.reduction)
                if limit is not None and score < limit:
                    stop.add(tid)
                    stopped[tid] = milestone
                rung[tid] = score
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(json.dumps(records, indent=1, sort_keys=True)))
            return stop
