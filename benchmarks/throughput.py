"""Training throughput: a MERBench-style loop, this project's trainer (folds one after another) and
the fold-vectorised trainer, for the same model, data and epochs, side by side in one run.

    python benchmarks/throughput.py [--profiles small,paper] [--epochs 3] [--experiment Exp4]
                                    [--device cpu|cuda] [--threads N] [--repeat 1]

(a) merbench:   per-sample Dataset + DataLoader with default collation, `.to(device)` per batch,
                the seeds' per-sample Python modality-dropout loop, outputs gathered per batch
                as numpy, plain AdamW; folds one after another.
(b) sequential: prmf.trainer.TrialRunner (data resident on the device, index batches, fused AdamW).
(c) vectorized: prmf.vectorized.VectorizedRunner (the folds as one batched model).

All three train the same config (the paper's Exp4 by default, without the modality-dropout
warm-up so that the few epochs measured train as most epochs of a real run do; patience off)
with the same folds and validate
every fold every epoch; the test splits are not scored (MERBench also scores them every epoch,
which (a) leaves out, so its cost is understated). Each (profile, mode) runs in a fresh process;
the first epoch is warm-up and not timed. samples/s = training samples per second over all
folds; GFLOP/s counts the model's matmul FLOPs (torch.utils.flop_counter) of training and
validation; peak memory is the process's peak RSS (CPU) or peak allocated memory (CUDA).
"""
import argparse
import copy
import json
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from prmf.config import experiment_config, modality_dropout_rate  # noqa: E402
from prmf.data import load_data  # noqa: E402
from prmf.models import build_model  # noqa: E402
from prmf.models.fusion import DROP_PATTERNS  # noqa: E402
from prmf.trainer import TrialRunner, metrics, stratified_folds  # noqa: E402
from prmf.vectorized import VectorizedRunner  # noqa: E402

MODES = ("merbench", "sequential", "vectorized")


# ----------------------------------------------------------------------------- (a) MERBench-style

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


def seeds_modality_dropout(self, batch_size, device):
    """The seeds' apply_modality_dropout: a Python loop with torch.rand(1).item() per sample."""
    cfg = self.cfg
    if not (self.training and self.uses_modality_dropout and cfg.use_modality_dropout):
        return None
    p = modality_dropout_rate(cfg, self.epoch)
    if p <= 0:  # the seeds return early during the warm-up
        return None
    masks = torch.ones(batch_size, 3, device=device)
    for i in range(batch_size):
        if torch.rand(1).item() < p:
            mode = torch.randint(0, 6, (1,)).item()
            for m in range(3):
                if not DROP_PATTERNS[mode, m]:
                    masks[i, m] = 0
    return masks.bool()


def merbench_epoch(model, loader, device, cfg, optimizer=None):
    """MERBench's train_or_eval_model: returns (logits, valence preds) of the loader's samples."""
    model.train(optimizer is not None)
    emo_probs, val_preds = [], []
    for audios, texts, videos, emos, vals, _names in loader:
        audios, texts, videos = audios.to(device), texts.to(device), videos.to(device)
        emos, vals = emos.to(device), vals.float().to(device)
        with torch.set_grad_enabled(optimizer is not None):
            _, emos_out, vals_out, interloss = model([audios, texts, videos])
            has_val = ~torch.isnan(vals)
            loss = interloss + cfg.emo_weight * F.cross_entropy(emos_out, emos)
            if has_val.any():
                loss = loss + cfg.val_weight * F.mse_loss(vals_out.squeeze(1)[has_val], vals[has_val])
        emo_probs.append(emos_out.data.cpu().numpy())
        val_preds.append(vals_out.data.cpu().numpy()[:, 0])
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_value_(model.parameters(), cfg.grad_clip)
            optimizer.step()
    return np.concatenate(emo_probs), np.concatenate(val_preds)


def run_merbench(cfg, data, device, seed, n_folds, warmup, sync):
    torch.manual_seed(seed)
    train = data.splits["train"]
    dataset = MERDataset(train)
    timed, samples = 0.0, 0
    for k, (tr, va) in enumerate(stratified_folds(train.emos, n_folds, seed)):
        model = build_model(cfg, data.dims, len(data.classes)).to(device)
        model.dropout_keep = types.MethodType(seeds_modality_dropout, model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=10,
                                                               min_lr=1e-6)
        gen = torch.Generator().manual_seed(seed * 1000 + k)
        train_loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size,
                                                   sampler=torch.utils.data.SubsetRandomSampler(tr, generator=gen))
        val_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, va), batch_size=cfg.batch_size)
        best, best_state = -np.inf, None
        for epoch in range(cfg.epochs):
            sync()
            t0 = time.perf_counter()
            model.set_epoch(epoch + 1)
            merbench_epoch(model, train_loader, device, cfg, optimizer)
            logits, vals_pred = merbench_epoch(model, val_loader, device, cfg)
            m = metrics(logits, vals_pred, train.emos[va], train.vals[va])
            scheduler.step(m["emoval"])
            if m["emoval"] > best:
                best, best_state = m["emoval"], copy.deepcopy(model.state_dict())  # MERBench keeps it; part of its cost
            sync()
            if epoch >= warmup:
                timed += time.perf_counter() - t0
                samples += len(tr)
    return timed, samples


# ----------------------------------------------------------------------------- (b), (c)

def run_runner(cls, cfg, data, device, seed, n_folds, warmup, sync):
    runner = cls(cfg, data, seed, n_folds, device)
    timed, samples = 0.0, 0
    while not runner.done:
        sync()
        t0 = time.perf_counter()
        runner.step()
        sync()
        if runner.epoch > warmup:
            timed += time.perf_counter() - t0
            samples += sum(len(f.train_idx) for f in runner.folds if f.epochs_run == runner.epoch)
    return timed, samples


def flops_per_sample(cfg, data, device):
    """Matmul FLOPs of one training sample (forward + backward) and one validation sample."""
    from torch.utils.flop_counter import FlopCounterMode
    model = build_model(cfg, data.dims, len(data.classes)).to(device)
    n = cfg.batch_size
    xs = [torch.as_tensor(x[:n], device=device) for x in data.splits["train"].inputs]
    with FlopCounterMode(display=False) as fc:
        _, emos_out, vals_out, interloss = model.train()(xs)
        (interloss + emos_out.sum() + vals_out.sum()).backward()
    train = fc.get_total_flops() / n
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(xs)
    return train, fc.get_total_flops() / n


def child(args):
    """One (profile, mode) measurement; prints one JSON line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_data("synthetic", profile=args.profile)
    # no modality-dropout warm-up, so that the few epochs measured train as the bulk of a real run does
    cfg = experiment_config(args.experiment, epochs=args.epochs, patience=10 ** 6, modality_dropout_warmup=0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.mode == "merbench":
        timed, samples = run_merbench(cfg, data, device, 0, args.folds, args.warmup, sync)
    else:
        cls = TrialRunner if args.mode == "sequential" else VectorizedRunner
        timed, samples = run_runner(cls, cfg, data, device, 0, args.folds, args.warmup, sync)
    f_train, f_eval = flops_per_sample(cfg, data, device)
    val_samples = samples / (args.folds - 1)  # each fold validates on 1/(k-1) of its training size
    out = {"profile": args.profile, "mode": args.mode, "seconds": timed, "samples": samples,
           "samples_per_s": samples / timed, "gflops": (samples * f_train + val_samples * f_eval) / timed / 1e9,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_load_mb": rss0,
           "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else None,
           "threads": torch.get_num_threads()}
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", default="small,paper")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--epochs", type=int, default=3, help="epochs per fold, the first one untimed (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs at the start of each fold")
    ap.add_argument("--experiment", default="Exp4")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode, interleaved; the fastest is kept")
    ap.add_argument("--child", metavar="MODE", help=argparse.SUPPRESS)
    ap.add_argument("--profile", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.mode = args.child
        return child(args)
    for profile in args.profiles.split(","):
        load_data("synthetic", profile=profile)  # generate once, outside the timed children
        best = {}
        for _ in range(args.repeat):
            for mode in args.modes.split(","):
                cmd = [sys.executable, __file__, "--child", mode, "--profile", profile, "--epochs", str(args.epochs),
                       "--warmup", str(args.warmup), "--experiment", args.experiment, "--folds", str(args.folds),
                       "--device", args.device, "--threads", str(args.threads)]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                if mode not in best or r["samples_per_s"] > best[mode]["samples_per_s"]:
                    best[mode] = r
        report(profile, args, best)


def report(profile, args, best):
    any_r = next(iter(best.values()))
    print(f"\nprofile {profile}, {args.experiment}, {args.folds} folds, {args.epochs} epochs ({args.warmup} untimed), "
          f"device {args.device}, {any_r['threads']} threads, best of {args.repeat}")
    print(f"{'mode':12s} {'samples/s':>10s} {'GFLOP/s':>8s} {'vs (a)':>7s} {'peak RSS MB':>12s} {'after load':>11s}"
          + (f" {'CUDA peak MB':>13s}" if args.device.startswith("cuda") else ""))
    base = best.get("merbench", {}).get("samples_per_s")
    for mode in MODES:
        if mode not in best:
            continue
        r = best[mode]
        ratio = f"{r['samples_per_s'] / base:6.2f}x" if base else "      -"
        cuda = f" {r['cuda_peak_mb']:13.0f}" if r["cuda_peak_mb"] is not None else ""
        print(f"{mode:12s} {r['samples_per_s']:10.0f} {r['gflops']:8.1f} {ratio:>7s} {r['peak_rss_mb']:12.0f} "
              f"{r['rss_after_load_mb']:11.0f}{cuda}")


if __name__ == "__main__":
    main()
