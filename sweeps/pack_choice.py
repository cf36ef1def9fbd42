"""`--pack auto`: how many trials a pack holds, decided by measuring, on the sweep's own device and
CPU share, rather than by a fixed cap.

A pack trains its trials as one batched model. On a GPU that shares every kernel launch among many
members (horizontally fused training: up to 15x, HFTA); on a CPU at paper dims the step is
memory-bound and a pack is hardly faster per trial than trials run alone side by side
(benchmarks/RESULTS.md). So before packing, one Ray task per slot, each with exactly a pack's
resources (the trials' device, threads and kind of node) and all at once (as the packs will run:
side by side, sharing the memory bus or the GPU), times a few training steps of the largest useful
pack (the slots filled once, within memory) and of one trial alone; the sweep's training time is
then predicted for every pack size (packs run `slots` at a time, a round as long as its largest
pack, sizes in between interpolated) and packs are used only where they are predicted at least
MIN_GAIN faster than one trial per pack. The timings are cached per machine kind, resources and
shapes (PRMF_DATA_DIR or ~/.cache/prmf, pack-timings.json): the next sweep of those shapes reuses
them.
"""
import json
import math
import platform
import time
from pathlib import Path

import torch

from prmf import store
from prmf.config import make_config, pack_key
from prmf.data import synthetic

MIN_GAIN = 0.10  # below this the prediction is within the measurement's noise: one trial per pack
STEPS, WARMUP = 3, 1  # timed and untimed training steps per measured size
MAX_COPIES = 8  # concurrent measurements (one per slot): packs side by side share the memory bus or the GPU


def measure(specs, data, cpus) -> dict:
    """{size: {'step': seconds per training step, 'build': seconds to set the pack up}} of a pack of
    all `specs` and of its first trial alone (the same engine, the others pruned), on this
    process's device with `cpus` threads."""
    from prmf.engine import Engine
    torch.set_num_threads(max(1, int(cpus)))
    t0 = time.perf_counter()
    engine = Engine([(make_config(s["cfg"]), s["seed"]) for s in specs], data, specs[0]["folds"])
    build = time.perf_counter() - t0
    out = {len(specs): {"step": engine.time_steps(STEPS, WARMUP), "build": build}}
    engine.prune(range(1, len(specs)))
    out[1] = {"step": engine.time_steps(STEPS, WARMUP), "build": build / len(specs)}  # its share: not built alone
    return out


def _at(timings, size, key):
    """timings[size][key], linear between the measured sizes."""
    sizes = sorted(timings)
    lo = max(s for s in sizes if s <= size)
    hi = min(s for s in sizes if s >= size)
    if lo == hi:
        return timings[lo][key]
    w = (size - lo) / (hi - lo)
    return (1 - w) * timings[lo][key] + w * timings[hi][key]


def predict(n, slots, size, timings, steps) -> float:
    """Seconds to train n trials in packs of at most `size` (balanced, as plan.make_packs makes them),
    `slots` packs at a time, each pack `steps` training steps (epochs x batches per epoch)."""
    k = math.ceil(n / size)
    biggest = math.ceil(n / k)
    return math.ceil(k / max(1, slots)) * (_at(timings, biggest, "build") + steps * _at(timings, biggest, "step"))


def choose(n, slots, largest, timings, steps) -> tuple:
    """(trials per pack, the reason in one line) from measured `timings`."""
    alone = predict(n, slots, 1, timings, steps)
    best = min(range(2, largest + 1), key=lambda s: (predict(n, slots, s, timings, steps), s))
    packed = predict(n, slots, best, timings, steps)
    t1, tl = timings[1]["step"], timings[largest]["step"]
    said = (f"a step of 1 trial {t1 * 1e3:.0f} ms, of {largest} trials {tl * 1e3:.0f} ms "
            f"({t1 * largest / tl:.2f}x the trials' throughput alone); predicted {alone:.0f} s alone, "
            f"{packed:.0f} s in packs of {best}")
    if packed > alone * (1 - MIN_GAIN):
        return 1, f"{said}: packing gains less than {MIN_GAIN:.0%}, so one trial per pack"
    return best, said


def machine_kind(gpus_per_trial) -> str:
    """What the timings depend on besides the shapes: the GPU type (Ray's accelerator_type), or the
    CPU model of this host."""
    if gpus_per_trial:
        import ray
        kinds = sorted(k.split(":", 1)[1] for k in ray.cluster_resources() if k.startswith("accelerator_type:"))
        return "gpu " + (",".join(kinds) or "unknown")
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"cpu {model}"


def cache_path() -> Path:
    return synthetic.cache_dir() / "pack-timings.json"


def timings(group, data, largest, slots, cpus, gpus_per_trial) -> tuple:
    """(timings, seconds spent measuring them; None: from the cache) of the group's pack shapes,
    measured by one Ray task per slot (at most MAX_COPIES) with a pack's resources, all at once."""
    cfg = make_config(group[0]["cfg"])
    copies = min(slots, MAX_COPIES)
    key = json.dumps([machine_kind(gpus_per_trial), cpus, gpus_per_trial, copies, torch.__version__, list(data.dims),
                      len(data.splits["train"].emos), group[0]["folds"], pack_key(cfg), largest], default=str)
    path = cache_path()
    try:
        cached = json.loads(path.read_text()) if path.exists() else {}
        hit = {int(size): t for size, t in cached[key].items()} if key in cached else None
    except (OSError, ValueError, AttributeError):
        cached, hit = {}, None  # unreadable: measure again and write it anew
    if hit:
        return hit, None
    t0 = time.perf_counter()
    runs = _measure_on_workers(group[:largest], data, cpus, gpus_per_trial, copies)
    found = {size: {k: sum(r[size][k] for r in runs) / len(runs) for k in ("step", "build")} for size in runs[0]}
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    store.atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps({**cached, key: found}, indent=1)))
    return found, seconds


def _measure_on_workers(specs, data, cpus, gpus, copies) -> list:
    """measure() in `copies` Ray tasks at once, each with a pack's resources: where, with what and
    beside what the packs will run."""
    import ray
    task, ref = ray.remote(num_cpus=cpus, num_gpus=gpus)(measure), ray.put(data)
    return ray.get([task.remote(specs, ref, cpus) for _ in range(copies)])


def auto_size(group, data, slots, largest, cpus, gpus_per_trial, epochs) -> tuple:
    """(trials per pack, reason) for a group of trials that may share packs; `largest`: the biggest
    pack memory and the slots allow (plan.largest_pack)."""
    found, seconds = timings(group, data, largest, slots, cpus, gpus_per_trial)
    n_train = len(data.splits["train"].emos)
    folds = group[0]["folds"]
    steps = epochs * math.ceil(n_train * (folds - 1) / folds / make_config(group[0]["cfg"]).batch_size)
    size, reason = choose(len(group), slots, largest, found, steps)
    where = f"{cpus:g} CPU{f' + {gpus_per_trial:g} GPU' if gpus_per_trial else ''} per pack"
    when = "before (cached)" if seconds is None else f"in {seconds:.1f} s"
    return size, f"measured {when} with {where}: {reason}"
