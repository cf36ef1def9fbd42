"""The paper's 27-point grid x 5 folds at paper dims, trained five ways side by side in one run:
the MERBench-style loop one config at a time, the engine one config at a time, and the engine on
packs of 3, 9 and 27 grid points; samples/s, GFLOP/s, % of the FLOP peak, % of the roofline,
peak RSS and ratios, with this machine's measured fp32 GEMM peak and memory bandwidth.

    python benchmarks/grid_throughput.py [--modes merbench,1,3,9,27] [--epochs 2] [--profile paper] [--seeds 1]
                                         [--grid sweeps/configs/prmf_grid.yaml] [--threads N] [--device cpu|cuda]

Modes (each in a fresh process, one after another; `--modes` lists them, an integer k is the engine
on packs of k grid points, 1 = one config at a time):
  merbench  per-sample Dataset + DataLoader with default collation, `.to(device)` per batch, the
            published code's per-sample Python modality-dropout loop (`torch.rand(1).item()` per sample; its
            mask is the one the model uses), outputs gathered per batch as numpy, plain AdamW
            (torch's single-tensor loop on CPU), a deepcopy of the best state; one fold of one
            config after another. It does not score the test splits every epoch as MERBench does,
            so its real cost is understated.
  k         prmf.engine.Engine on packs of k grid points x 5 folds (5k members in one batched
            model): data resident, index batches, torch's fused AdamW per member group.

What is measured, and how it is scaled to the whole grid: every point of the grid has the same
architecture, data, folds (seed 0) and so the same work per epoch, so a mode's rate is measured on
a subset and the grid's time is that rate's: merbench on `--merbench-subset C,F` (C configs spread
over the grid x their first F folds; default 2 x 1), the engine on the first `--packs-measured`
packs of k points (default: 2 packs for k = 1, 1 pack otherwise; k = 27 is the whole grid). Every
run trains `--epochs` epochs (default 2), the first not timed (allocation, first touch, caches);
samples/s = training samples of the timed epochs (over all members) / their time, which includes
each epoch's validation of every member. "all-trials epoch" = seconds for one epoch of every
trial's 5 folds (27 x 5 members with one seed) at that rate. `--seeds S` makes the trials the grid
x S seeds (a pack of k > 27 trials holds several seeds of a point). The config is Exp4 with the
grid's values, the modality-dropout warm-up off (so the epochs measured train as most epochs of a
real run do) and patience off. A pack whose state (5 copies of its parameters) would not fit in
80% of the available memory is skipped, and the output says so. Takes ~10 min at paper dims on 2
cores with 2 threads (15 min with 1 thread at load 4-5): benchmarks/RESULTS.md.

Threads: on a machine whose cores are oversubscribed, run with `--threads 1` or
OMP_WAIT_POLICY=PASSIVE: OpenMP's spin-waiting makes 2-thread ops crawl there (RESULTS.md).

FLOPs: torch.utils.flop_counter.FlopCounterMode over one training step (forward, loss, backward) of
a one-member model at the config's batch size and over one validation forward; matmul FLOPs only
(elementwise work not counted). Peak: the best of a few 4096^2 fp32 torch.mm with the run's
threads. Bandwidth: a STREAM-like triad a = b + s*c on 64 Mi-element fp32 tensors, 3 x 256 MB
counted per call (no write-allocate), best of several; both measured before and after the modes
(the machine is shared; the higher is used). Bytes moved per epoch (a lower bound), per member:
  training step: every parameter read in forward and again in backward (input gradients), its
    gradient written, and AdamW's traffic (fused: read p, g, m, v, write p, m, v = 7 accesses;
    the single-tensor loop of plain AdamW: 21), 4 bytes each; plus activations = the bytes
    autograd saves (saved_tensors_hooks), written in forward and read in backward, and the input
    gather (read + write);
  validation: the weights read once per forward chunk (the engine: prmf.evaluation.EVAL_CHUNK
    member-samples per forward; merbench: one per batch) plus the inputs gathered;
  best state: weights read and written once per epoch (an upper bound: only when improving).
Arithmetic intensity AI = FLOPs / bytes; roofline = min(peak, AI x bandwidth). Each member owns
its weights and AdamW moments, so packing members does not raise AI: it removes per-step Python
and dispatch overhead and gives each kernel more work, and the roofline, not the FLOP peak, is the
honest limit.
"""
import argparse
import copy
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import prmf.models.attention as model_base  # noqa: E402
from prmf.config import preset_config  # noqa: E402
from prmf.schedules import modality_dropout_rate  # noqa: E402
from prmf.data import load_data  # noqa: E402
from prmf.engine import Engine, stratified_folds  # noqa: E402
from prmf.evaluation import EVAL_CHUNK, metrics  # noqa: E402
from prmf.models import build_model  # noqa: E402
from prmf.models.fusion import DROP_PATTERNS  # noqa: E402

DEFAULT_GRID = REPO / "sweeps" / "configs" / "prmf_grid.yaml"
ADAMW_ACCESSES = {"fused": 7, "single_tensor": 21}  # 4-byte tensor accesses per parameter per step


def grid_trials(path, epochs, seeds=1, precision="fp32"):
    """[(config, seed)]: the grid's points in sweeps/grid.py's order (itertools.product of `grid:` over `base:` and
    `set:`) for seed 0, then again for each further seed; read here rather than through sweeps.grid
    so that the children do not import Ray."""
    import itertools
    import yaml
    spec = yaml.safe_load(Path(path).read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("grid"), dict) or not spec["grid"]:
        raise ValueError("expected a mapping with a non-empty 'grid:' of key -> list of values")
    changes = {**(spec.get("set") or {}), "epochs": epochs, "patience": 10 ** 6, "modality_dropout_warmup": 0,
               **({"precision": precision} if precision != "fp32" else {})}
    grid = spec["grid"]
    cfgs = [preset_config(spec.get("base", "Exp4"), **changes, **dict(zip(grid, combo)))
            for combo in itertools.product(*grid.values())]
    return [(cfg, seed) for seed in range(seeds) for cfg in cfgs]


# ----------------------------------------------------------------------------- MERBench-style loop

class MERDataset(torch.utils.data.Dataset):
    """MERBench's Data: per-sample feature arrays looked up by name, collated by the DataLoader."""

    def __init__(self, split):
        self.names = list(split.names)
        self.feats = [{n: x[i] for i, n in enumerate(self.names)} for x in split.inputs]
        self.emos = {n: int(e) for n, e in zip(self.names, split.emos)}
        self.vals = {n: float(v) for n, v in zip(self.names, split.vals)}

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        n = self.names[i]
        return self.feats[0][n], self.feats[1][n], self.feats[2][n], self.emos[n], self.vals[n], n


def seeds_modality_dropout_keep(shape, p, draws):
    """The published apply_modality_dropout: a Python loop with torch.rand(1).item() per sample; it
    replaces the model's vectorised draw (prmf.models.fusion.modality_dropout_keep) in this loop."""
    masks = torch.ones(*shape, 3, device=draws.keys.device)  # torch's global generator, not the draws
    for i in range(shape[-1]):
        if torch.rand(1).item() < p:
            mode = torch.randint(0, 6, (1,)).item()
            for m in range(3):
                if not DROP_PATTERNS[mode, m]:
                    masks[..., i, m] = 0
    return masks.bool()


def merbench_epoch(model, loader, device, cfg, modality_p, optimizer=None):
    """MERBench's train_or_eval_model: returns (logits, valence preds) of the loader's samples."""
    model.train(optimizer is not None)
    emo_probs, val_preds = [], []
    for audios, texts, videos, emos, vals, _names in loader:
        audios, texts, videos = audios.to(device), texts.to(device), videos.to(device)
        emos, vals = emos.to(device), vals.float().to(device)
        with torch.set_grad_enabled(optimizer is not None):
            _, emos_out, vals_out, interloss = model([audios, texts, videos], None, modality_p)
            has_val = ~torch.isnan(vals)
            loss = interloss + cfg.emo_weight * F.cross_entropy(emos_out, emos)
            if has_val.any():
                loss = loss + cfg.val_weight * F.mse_loss(vals_out[has_val], vals[has_val])
        emo_probs.append(emos_out.data.cpu().numpy())
        val_preds.append(vals_out.data.cpu().numpy())
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_value_(model.parameters(), cfg.grad_clip)
            optimizer.step()
    return np.concatenate(emo_probs), np.concatenate(val_preds)


def run_merbench(trials, folds, data, device, warmup, sync):
    """Each config's first `folds` folds, one after another, as MERBench trains them."""
    model_base.modality_dropout_keep = seeds_modality_dropout_keep
    torch.manual_seed(0)
    train = data.splits["train"]
    dataset = MERDataset(train)
    timed, samples, val_samples, faults = 0.0, 0, 0, 0
    for cfg, seed in trials:
        for k, (tr, va) in enumerate(stratified_folds(train.emos, 5, seed)[:folds]):
            model = build_model(cfg, data.dims, len(data.classes)).to(device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=10,
                                                                   min_lr=1e-6)
            gen = torch.Generator().manual_seed(seed * 1000 + k)
            train_loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size,
                                                       sampler=torch.utils.data.SubsetRandomSampler(tr, generator=gen))
            val_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, va), batch_size=cfg.batch_size)
            best = -math.inf
            for epoch in range(1, cfg.epochs + 1):
                p = modality_dropout_rate(cfg, epoch) if cfg.use_modality_dropout and model.uses_modality_dropout else 0.0
                sync()
                t0, f0 = time.perf_counter(), minor_faults()
                merbench_epoch(model, train_loader, device, cfg, p, optimizer)
                logits, vals_pred = merbench_epoch(model, val_loader, device, cfg, None)
                m = metrics(logits, vals_pred, train.emos[va], train.vals[va])
                scheduler.step(m["emoval"])
                if m["emoval"] > best:
                    best, _ = m["emoval"], copy.deepcopy(model.state_dict())  # MERBench keeps it; part of its cost
                sync()
                if epoch > warmup:
                    timed += time.perf_counter() - t0
                    faults += minor_faults() - f0
                    samples += len(tr)
                    val_samples += len(va)
    return timed, samples, val_samples, faults


def run_engine(trials, data, device, warmup, sync):
    """One pack: every trial x 5 folds as one Engine, epoch by epoch."""
    engine = Engine(trials, data, 5, device)
    timed, samples, val_samples, faults = 0.0, 0, 0, 0
    while not engine.done:
        sync()
        t0, f0 = time.perf_counter(), minor_faults()
        engine.step()
        sync()
        if engine.epoch > warmup:
            timed += time.perf_counter() - t0
            faults += minor_faults() - f0
            ran = [m for m in engine.members if m.epochs_run == engine.epoch]
            samples += sum(len(m.train_idx) for m in ran)
            val_samples += sum(len(m.val_idx) for m in ran)
    return timed, samples, val_samples, faults


def minor_faults():
    """Minor page faults so far: each is a fresh 4 KiB page the kernel zeroed (large tensors are
    mmapped anew at every allocation by glibc, so a step's new gradients and activations fault in)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_rss_mb():
    """This process's peak RSS (VmHWM: getrusage's ru_maxrss would carry the parent's over exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))


def child(args):
    """One mode's measurement (args.child, args.points); prints one JSON line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    data = load_data("synthetic", profile=args.profile)
    trials = grid_trials(args.grid, args.epochs, args.seeds, args.precision)
    points = [int(i) for i in args.points.split(",")]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = peak_rss_mb()
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    if args.child == "merbench":
        timed, samples, val_samples, faults = run_merbench([trials[i] for i in points], args.folds, data, device, 1, sync)
    else:
        size = int(args.child)
        timed, samples, val_samples, faults = 0.0, 0, 0, 0
        for start in range(0, len(points), size):
            t, s, v, f = run_engine([trials[i] for i in points[start:start + size]], data, device, 1, sync)
            timed, samples, val_samples, faults = timed + t, samples + s, val_samples + v, faults + f
    print(json.dumps({"mode": args.child, "points": points, "seconds": timed, "samples": samples,
                      "val_samples": val_samples, "faulted_gb": faults * 4096 / 1e9, "wall": time.perf_counter() - t0,
                      "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": rss0,
                      "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else None,
                      "threads": torch.get_num_threads(), "load": [load0, os.getloadavg()[0]]}))


# ----------------------------------------------------------------------------- machine and model costs

def gemm_peak(device, n=4096, reps=3):
    """fp32 GEMM FLOP/s: the best of `reps` n x n torch.mm."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = math.inf
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def triad_bandwidth(device, n=64 * 2 ** 20, reps=5):
    """Bytes/s of a = b + s*c (STREAM's triad: 3 arrays of n fp32 counted per call)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a, b, c = (torch.rand(n, device=device) for _ in range(3))
    torch.add(b, c, alpha=3.0, out=a)
    best = math.inf
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 3 * 4 * n / best


def model_costs(cfg, data, device):
    """Per sample: training and validation matmul FLOPs; per member step: parameters and the bytes
    autograd saves (activations) and the inputs gathered, at the config's batch size."""
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    model = build_model(cfg, data.dims, len(data.classes)).to(device)
    n = cfg.batch_size
    train = data.splits["train"]
    xs = [torch.as_tensor(x[:n], device=device) for x in train.inputs]
    emos = torch.as_tensor(train.emos[:n], device=device)
    vals = torch.nan_to_num(torch.as_tensor(train.vals[:n], device=device))
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t
    with FlopCounterMode(display=False) as fc, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, emos_out, vals_out, interloss = model.train()(xs, None, cfg.modality_dropout)
        (interloss + F.cross_entropy(emos_out, emos) + F.mse_loss(vals_out, vals)).backward()
    f_train = fc.get_total_flops() / n
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(xs)
    f_eval = fc.get_total_flops() / n
    n_params = sum(p.numel() for p in model.parameters())
    input_bytes = sum(x.numel() * x.element_size() for x in xs)
    return {"flops_train_sample": f_train, "flops_val_sample": f_eval, "params": n_params,
            "saved_bytes_step": saved[0], "input_bytes_step": input_bytes, "batch": n}


def epoch_traffic(costs, mode, members, n_train, n_val):
    """(FLOPs, bytes) of one member's epoch in `mode` (see the module docstring)."""
    p4, batch = 4 * costs["params"], costs["batch"]
    steps = math.ceil(n_train / batch)
    adamw = ADAMW_ACCESSES["single_tensor" if mode == "merbench" else "fused"]
    train_bytes = steps * (p4 * (3 + adamw) + 2 * costs["saved_bytes_step"] + 2 * costs["input_bytes_step"])
    per_forward = batch if mode == "merbench" else max(1, EVAL_CHUNK // members)
    val_bytes = math.ceil(n_val / per_forward) * p4 + 2 * costs["input_bytes_step"] / batch * n_val
    flops = n_train * costs["flops_train_sample"] + n_val * costs["flops_val_sample"]
    return flops, train_bytes + val_bytes + 2 * p4


# ----------------------------------------------------------------------------- driver

def mode_plan(mode, args, n_trials, n_points):
    """(trials measured, their share of all trials' work, members per pack) for a mode."""
    if mode == "merbench":
        configs, folds = (int(v) for v in args.merbench_subset.split(","))
        points = sorted({round(i * (n_points - 1) / max(1, configs - 1)) for i in range(configs)})
        return points, len(points) * folds / (n_trials * 5), 1
    size = int(mode)
    packs = args.packs_measured or (2 if size == 1 else 1)
    points = list(range(min(n_trials, size * packs)))
    return points, len(points) / n_trials, 5 * size


def fits_in_memory(members, costs, data_bytes, device):
    """A pack's state (weights, gradients, AdamW moments, best copy: 5 copies) + data against the
    memory available (MemAvailable, or the GPU's free memory)."""
    need = members * costs["params"] * 4 * 5 + data_bytes
    if device.type == "cuda":
        avail = torch.cuda.mem_get_info(device)[0]
    else:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    return need < 0.8 * avail, need, avail


def check_args(args):
    """Bad input: one line `error: ...` and exit status 2, before anything runs."""
    def fail(msg):
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    if args.epochs < 2:
        fail(f"--epochs {args.epochs}: must be >= 2 (the first epoch is not timed)")
    for mode in args.modes.split(","):
        if mode != "merbench" and not (mode.isdigit() and int(mode) >= 1):
            fail(f"--modes: {mode!r} is neither 'merbench' nor a pack size >= 1")
    subset = args.merbench_subset.split(",")
    if len(subset) != 2 or not all(v.isdigit() for v in subset) or not (int(subset[0]) >= 1 and 1 <= int(subset[1]) <= 5):
        fail(f"--merbench-subset {args.merbench_subset!r}: expected C,F with C >= 1 configs and 1 <= F <= 5 folds")
    if args.seeds < 1 or args.packs_measured < 0 or args.threads < 0:
        fail("--seeds must be >= 1, --packs-measured and --threads >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {args.device}: torch sees no CUDA device")
    try:
        grid_trials(args.grid, args.epochs, precision=args.precision)
    except Exception as e:  # unreadable file, not a grid YAML, a key or value the config refuses
        fail(f"--grid {args.grid}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="merbench,1,3,9,27", help="merbench and/or pack sizes k (1 = one config at a time)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per run, the first not timed (default 2)")
    ap.add_argument("--profile", default="paper", choices=["tiny", "small", "paper"])
    ap.add_argument("--grid", default=str(DEFAULT_GRID))
    ap.add_argument("--seeds", type=int, default=1, help="trials = grid points x seeds (default 1)")
    ap.add_argument("--merbench-subset", default="2,1", help="C,F: C configs spread over the grid x their first F folds")
    ap.add_argument("--packs-measured", type=int, default=0, help="packs timed per pack size (default 2 for k=1, else 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed", "tf32"], help="the engine modes' config key precision (fp32, bf16-mixed, "
                    "tf32); the merbench loop stays fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    ap.add_argument("--json", help="also write the results here (one JSON document)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--points", help=argparse.SUPPRESS)
    ap.add_argument("--folds", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started, load_start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), os.getloadavg()
    data = load_data("synthetic", profile=args.profile)  # generated once, outside the timed children
    trials = grid_trials(args.grid, args.epochs, args.seeds)
    n_points = len(trials) // args.seeds
    train = data.splits["train"]
    n_train, n_val = len(train) * 4 // 5, len(train) // 5  # one fold's (up to a sample)
    costs = model_costs(trials[0][0], data, device)
    data_bytes = sum(x.nbytes for sp in data.splits.values() for x in sp.inputs)
    machine = {"peak": [gemm_peak(device)], "bw": [triad_bandwidth(device)]}
    print(f"{started}, load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}; "
          f"{n_points} grid points x {args.seeds} seeds x 5 folds, profile {args.profile} (dims {data.dims}), {args.epochs} epochs "
          f"(the first not timed), device {args.device}, {args.precision}, {torch.get_num_threads()} threads", flush=True)
    print(f"model: {costs['params'] / 1e6:.2f} M parameters per member; {costs['flops_train_sample'] / 1e6:.2f} MFLOP "
          f"per training sample, {costs['flops_val_sample'] / 1e6:.2f} per validation sample; machine: fp32 GEMM "
          f"{machine['peak'][0] / 1e9:.0f} GFLOP/s, triad {machine['bw'][0] / 1e9:.1f} GB/s", flush=True)
    results = []
    for mode in args.modes.split(","):
        points, share, members = mode_plan(mode, args, len(trials), n_points)
        ok, need, avail = fits_in_memory(members, costs, data_bytes, device)
        if not ok:
            print(f"{mode}: skipped: a pack of {members} members needs ~{need / 2 ** 30:.1f} GiB, "
                  f"{avail / 2 ** 30:.1f} GiB available", flush=True)
            continue
        folds = args.merbench_subset.split(",")[1] if mode == "merbench" else "5"
        cmd = [sys.executable, __file__, "--child", mode, "--points", ",".join(map(str, points)), "--folds", folds,
               "--epochs", str(args.epochs), "--seeds", str(args.seeds), "--profile", args.profile, "--grid", args.grid, "--device", args.device,
               "--threads", str(args.threads), "--precision", args.precision]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"error: mode {mode} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.splitlines()[-1])
        flops, nbytes = epoch_traffic(costs, mode, members, n_train, n_val)
        r.update(share=share, members=members, samples_per_s=r["samples"] / r["seconds"],
                 grid_epoch_s=r["seconds"] / share / (args.epochs - 1), ai=flops / nbytes,
                 gflops=(r["samples"] * costs["flops_train_sample"] + r["val_samples"] * costs["flops_val_sample"])
                 / r["seconds"] / 1e9)
        results.append(r)
        print(f"{mode}: {r['samples_per_s']:.0f} samples/s, {r['gflops']:.1f} GFLOP/s over {r['seconds']:.1f} s timed "
              f"({r['wall']:.0f} s wall; trials {points[0]}..{points[-1]}), {r['faulted_gb'] / r['seconds']:.1f} GB/s of fresh "
              f"pages faulted in, peak RSS {r['peak_rss_mb']:.0f} MB, "
              + (f"CUDA peak {r['cuda_peak_mb']:.0f} MB, " if r["cuda_peak_mb"] is not None else "") +
              f"load {r['load'][0]:.2f}->{r['load'][1]:.2f}", flush=True)
    machine["peak"].append(gemm_peak(device))
    machine["bw"].append(triad_bandwidth(device))
    report(results, machine, args, started, load_start, os.getloadavg(), costs)
    if args.json:
        Path(args.json).write_text(json.dumps({"started": started, "load_start": load_start, "load_end": os.getloadavg(),
                                               "machine": machine, "costs": costs, "args": vars(args),
                                               "results": results}, indent=1))


def report(results, machine, args, started, load_start, load_end, costs):
    peak, bw = max(machine["peak"]), max(machine["bw"])
    cuda = args.device.startswith("cuda")
    print(f"\n{started} to {time.strftime('%H:%M:%S UTC', time.gmtime())}; load average (1 min) "
          f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end; device {args.device}, "
          f"{results[0]['threads'] if results else '?'} threads")
    print(f"fp32 GEMM peak {peak / 1e9:.0f} GFLOP/s (runs: {', '.join(f'{p / 1e9:.0f}' for p in machine['peak'])}); "
          f"triad bandwidth {bw / 1e9:.1f} GB/s (runs: {', '.join(f'{b / 1e9:.1f}' for b in machine['bw'])})")
    print("merbench: a subset of configs x folds measured and scaled to all trials; k: packs of k trials x 5 folds, "
          "the first packs measured and scaled (every trial costs the same)")
    by = {r["mode"]: r for r in results}
    base, one = by.get("merbench", {}).get("samples_per_s"), by.get("1", {}).get("samples_per_s")
    print("| mode | members | measured | samples/s | all-trials epoch s | GFLOP/s | % peak | AI FLOP/B | roofline GFLOP/s "
          "| % roofline | peak RSS MB | " + ("CUDA peak MB | " if cuda else "") + "vs merbench | vs engine x1 |")
    print("|---|---:|---|" + "---:|" * (11 if cuda else 10))
    for r in results:
        roof = min(peak, r["ai"] * bw)
        name = "merbench loop" if r["mode"] == "merbench" else ("engine x1" if r["mode"] == "1" else f"pack x{r['mode']}")
        measured = (f"{len(r['points'])} cfg x {args.merbench_subset.split(',')[1]} fold" if r["mode"] == "merbench"
                    else f"{len(r['points'])} trials x 5 folds")
        print(f"| {name} | {r['members']} | {measured} | {r['samples_per_s']:.0f} | {r['grid_epoch_s']:.0f} | "
              f"{r['gflops']:.1f} | {100 * r['gflops'] * 1e9 / peak:.1f} | {r['ai']:.2f} | {roof / 1e9:.1f} | "
              f"{100 * r['gflops'] * 1e9 / roof:.0f} | {r['peak_rss_mb']:.0f} | "
              + (f"{r['cuda_peak_mb']:.0f} | " if cuda else "") + f"{_ratio(r, base)} | {_ratio(r, one)} |")


def _ratio(r, ref):
    return f"{r['samples_per_s'] / ref:.2f}x" if ref else "-"


if __name__ == "__main__":
    main()
