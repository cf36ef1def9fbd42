"""The loop of a pack, with no Ray in it: train the pack's trials as one batched model epoch by
epoch, prune its trials at ASHA's rungs, store each trial when it ends (finished or pruned), log to
the trackers, and hand each epoch's metrics (and now and then a checkpoint) to a reporter.

The reporter is the seam to whatever runs the pack: Ray Tune (sweeps/tune_adapter.py reports with
tune.report and keeps checkpoints in Tune's storage) or a test's in-memory one. It has three
methods:

    restore(engine) -> float   load the newest checkpoint into the engine; the wall seconds so far (0.0: none)
    node() -> dict             where the pack runs (recorded in every results row)
    report(metrics, engine, wall_time_s)   one epoch's metrics; `engine` is given when a checkpoint is due
"""
import math
import time
from pathlib import Path

import torch

from prmf import records, store
from prmf.config import make_config
from prmf.engine import Engine
from prmf.robustness import scenarios as robustness_scenarios
from sweeps import asha, trackers


def stored(specs) -> list:
    """Positions of the pack's trials whose results file exists (finished or pruned before)."""
    return [t for t, s in enumerate(specs) if store.is_stored(s["store"], s["trial_id"])]


def write_results(engine, pack, trials, status, wall_time_s, node, runs=None):
    """Score `trials` (positions in the pack) at their best epochs and store each as one trial, then
    end its tracker runs (`runs`: the pack's open handles by position)."""
    specs = pack["trials"]
    results = engine.score(robustness_scenarios() if pack["robustness"] else None, trials)
    for t in trials:
        spec = specs[t]
        rows, epochs, predictions = records.tables(
            results[t], tid=spec["trial_id"], sweep=spec["sweep"], experiment=spec["experiment"],
            cfg=make_config(spec["cfg"]), seed=spec["seed"], dataset=engine.data, status=status, wall_time_s=wall_time_s,
            extra={**node, "pack": pack["id"]}, identical=spec.get("identical", ()), commit=spec.get("commit", "unknown"))
        store.write_trial(spec["store"], spec["trial_id"], rows, epochs, predictions)
        trackers.log_result(spec, status, (runs or {}).get(t))  # final metrics, MLflow's NPZ artifacts, runs ended


def run(pack, data, reporter):
    """Train `pack` (plan.pack_config) on `data` to its end, leaving out the trials stored before."""
    specs = pack["trials"]
    torch.set_num_threads(max(1, int(pack["cpus"])))
    done = stored(specs)
    if len(done) == len(specs):
        reporter.report({"epoch": 0, "val_emoval": float("nan"), "already_done": True}, None, 0.0)  # never train it again
        return
    engine = Engine([(make_config(s["cfg"]), s["seed"]) for s in specs], data, pack["folds"])
    wall0 = reporter.restore(engine)
    engine.prune(done)  # stored before (finished or pruned): out of the batch
    written = set(done)
    node = reporter.node()
    rungs, milestones = asha.Rungs(Path(pack["store"]) / "asha_rungs.json"), set(pack["milestones"])
    t0, runs = time.time(), {}
    try:
        runs.update((t, trackers.start(s)) for t, s in enumerate(specs) if t not in written)  # each tracker's run per trial
        while not engine.done:
            scores = engine.step()
            wall = wall0 + time.time() - t0
            for t, score in scores.items():
                runs[t].epoch({"epoch": engine.epoch, "val_emoval": score, "folds_running": engine.running(t), **node})
            if engine.epoch in milestones:
                stop = rungs.judge(engine.epoch, {specs[t]["trial_id"]: s for t, s in scores.items()})
                pruned = [t for t in scores if specs[t]["trial_id"] in stop and engine.running(t)]
                if pruned:
                    write_results(engine, pack, pruned, "pruned", wall, node, runs)
                    engine.prune(pruned)
                    written.update(pruned)
            ended = [t for t in range(len(specs)) if t not in written and not engine.running(t)]
            if ended:
                write_results(engine, pack, ended, "finished", wall, node, runs)
                written.update(ended)
            finite = [s for s in scores.values() if math.isfinite(s)]
            metrics = {"epoch": engine.epoch, "val_emoval": max(finite) if finite else float("nan"),
                       "trials_running": sum(1 for t in range(len(specs)) if engine.running(t)), **node}
            due = not engine.done and (engine.epoch % pack["checkpoint_every"] == 0 or engine.epoch in milestones)
            reporter.report(metrics, engine if due else None, wall)
    finally:  # killed or failed mid-pack: the runs of the trials not ended stay open for the resume
        for r in runs.values():
            r.close()
