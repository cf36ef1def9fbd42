"""A pack's checkpoints, kept by Ray Tune in the sweep's Tune storage.

Tune owns them: the trainable hands each one to `tune.report(..., checkpoint=)`, so Tune's storage
(`STORAGE/NAME/tune`), its CheckpointConfig (how many to keep) and its retries (FailureConfig:
`tune.get_checkpoint()`) apply. Code here fills the one gap: a resumed sweep is a fresh Tuner run
(run-NNN), which knows nothing of the checkpoints of the runs before, so a pack that Tune gives no
checkpoint looks for its newest in the sweep's Tune storage (a `pack.json` beside each names its
pack and epoch). A newest one that cannot be read (a copy cut short by a kill) falls back to the
one before. The driver removes the checkpoints of packs whose trials are all stored.
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

STATE, MARKER = "pack.pt", "pack.json"


def report(metrics, engine=None, wall_time_s=0.0, pack_id=None):
    """tune.report, with the pack's state as a Tune checkpoint when `engine` is given."""
    from ray import tune
    if engine is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="prmf-checkpoint-") as d:
        torch.save({"engine": engine.state_dict(), "wall_time_s": wall_time_s}, Path(d) / STATE)
        (Path(d) / MARKER).write_text(json.dumps({"pack": pack_id, "epoch": engine.epoch}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))  # persisted before it returns


def _markers(root: Path):
    for marker in (Path(root) / "tune").glob(f"run-*/*/checkpoint_*/{MARKER}"):
        try:
            yield marker.parent, json.loads(marker.read_text())
        except (OSError, ValueError):
            continue


def find(root, pack_id) -> list:
    """The checkpoint folders this pack left in earlier runs, newest (highest epoch) first."""
    found = [(m.get("epoch", 0), d.parent.parent.name, d.name, d) for d, m in _markers(root) if m.get("pack") == pack_id]
    return [d for *_, d in sorted(found, reverse=True)]


def _load(folder: Path, engine):
    from prmf.engine import CheckpointError
    try:
        state = torch.load(folder / STATE, map_location=engine.device, weights_only=True)
    except Exception as e:  # noqa: BLE001  cut short or missing: the one before may do
        print(f"note: {folder}: unreadable checkpoint ({type(e).__name__}); trying an older one", file=sys.stderr)
        return None
    try:
        engine.load_state_dict(state["engine"])
    except CheckpointError as e:
        print(f"note: {folder}: {e}; not resumed from it", file=sys.stderr)
        return None
    return state["wall_time_s"]


def restore(engine, root, pack_id) -> float:
    """Load the newest readable checkpoint into `engine`: Tune's own for this trial (a retry), else
    the newest this pack left in an earlier run. Returns the wall time so far (0.0: none)."""
    from ray import tune
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            wall = _load(Path(d), engine)
            if wall is not None:
                return wall
    for folder in find(root, pack_id):
        wall = _load(folder, engine)
        if wall is not None:
            return wall
    return 0.0


def remove_finished(root, packs: dict, done: set) -> int:
    """Remove the checkpoints of packs ({id: trial ids}) whose trials are all stored."""
    n = 0
    for folder, marker in list(_markers(root)):
        trials = packs.get(marker.get("pack"), [marker.get("pack")])  # a pack of one is named by its trial
        if trials and set(trials) <= done:
            shutil.rmtree(folder, ignore_errors=True)
            n += 1
    return n
