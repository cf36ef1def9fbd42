"""One config (Exp4, 5 folds) at paper dims, whole processes side by side: `prmf.train` against a
competent plain PyTorch loop, interleaved, with the load average printed.

    python benchmarks/one_config.py [--epochs 5] [--profile paper] [--repeat 3] [--precision fp32] [--threads N]

The plain loop (`--child plain`, its own process, as a user would write it):
  - data preloaded as tensors (prmf.data.load_data, then one torch.tensor per input), batches by
    index from a seeded randperm per fold and epoch;
  - the same model (prmf.models.build_model with one member: the same architecture and FLOPs) with
    its three hand-written kernels replaced by plain autograd, as a user's nn.Module would compute
    them: every Linear is F.linear (autograd's backward), the decoders' reconstruction MSE is
    `(F.linear(h, w, b) - x).pow(2).mean()`, dropout masks are `torch.rand_like(x) >= p` floats per
    element (nn.Dropout draws the same way); vectorised modality-dropout masks (the model's own
    draw). A second mode, "plain loop, engine kernels", keeps the engine's kernels (_Linear,
    _ReconMSE, 16-bit dropout masks), to split the gain between the kernels and the loop;
  - torch.optim.AdamW (torch's default implementation), ReduceLROnPlateau(max, 0.5, 10, 1e-6),
    clip_grad_value_ at the preset's value, validation every epoch (in chunks of 1024), a copy of
    the best state;
  - folds one after another, the test splits scored once at the end from the folds' best states
    (clean inputs, fold-averaged logits).
`prmf.train` runs with `--no-robustness` (the same work: clean test scores) and with its default
(every test split also under the 10 robustness scenarios). Times are wall seconds of the whole
process (interpreter start, imports, data load, training, scoring, writing, exit), measured by
this parent; each mode runs `--repeat` times interleaved and the best is kept.
"""
import argparse
import copy
import math
import os
import subprocess
import sys
import tempfile
import time


def plain(args):
    """The plain loop (see the module docstring); prints its own phase times to stderr."""
    t0 = time.perf_counter()
    import numpy as np
    import torch
    import torch.nn.functional as F

    from prmf.config import preset_config
    from prmf.data import load_data
    from prmf.engine import stratified_folds
    from prmf.evaluation import metrics
    from prmf.models import build_model
    from prmf.schedules import modality_dropout_rate
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child == "plain":
        plain_kernels()
    t_import = time.perf_counter()
    cfg = preset_config("Exp4", epochs=args.epochs)
    data = load_data("synthetic", profile=args.profile)
    splits = {name: ([torch.tensor(np.asarray(x)) for x in sp.inputs], torch.tensor(sp.emos), torch.tensor(sp.vals))
              for name, sp in data.splits.items()}
    xs, emos, vals = splits["train"]
    has_val, vals0 = ~torch.isnan(vals), torch.nan_to_num(vals)
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=args.precision == "bf16-mixed")

    def forward(model, idx, p=None):
        with autocast:
            return model([x[idx][None] for x in xs], None, p)

    best_states = []
    t_setup = time.perf_counter()
    for k, (tr, va) in enumerate(stratified_folds(data.splits["train"].emos, 5, 0)):
        torch.manual_seed(k)
        model = build_model(cfg, data.dims, len(data.classes))
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=10, min_lr=1e-6)
        gen = torch.Generator().manual_seed(k)
        tr, va = torch.as_tensor(tr), torch.as_tensor(va)
        best, best_state = -math.inf, None
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            p = modality_dropout_rate(cfg, epoch)
            for idx in tr[torch.randperm(len(tr), generator=gen)].split(cfg.batch_size):
                _, emos_out, vals_out, interloss = forward(model, idx, p)
                hv = has_val[idx]
                val_mse = ((vals_out[0].float() - vals0[idx]).pow(2) * hv).sum() / hv.sum().clamp(min=1)
                loss = interloss[0] + F.cross_entropy(emos_out[0].float(), emos[idx]) + val_mse
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_value_(model.parameters(), cfg.grad_clip)
                optimizer.step()
            model.eval()
            with torch.inference_mode():
                outs = [forward(model, idx) for idx in va.split(1024)]
            logits = torch.cat([o[1][0].float() for o in outs]).numpy()
            vals_pred = torch.cat([o[2][0].float() for o in outs]).numpy()
            m = metrics(logits, vals_pred, data.splits["train"].emos[va.numpy()], data.splits["train"].vals[va.numpy()])
            scheduler.step(m["emoval"])
            if m["emoval"] > best:
                best, best_state = m["emoval"], copy.deepcopy(model.state_dict())
        best_states.append(best_state)
    t_train = time.perf_counter()
    for name, (tx, te, tv) in splits.items():
        if name == "train":
            continue
        logits, vals_pred = 0, 0
        for state in best_states:
            model.load_state_dict(state)
            model.eval()
            with torch.inference_mode(), autocast:
                out = model([x[None] for x in tx], None)
            logits, vals_pred = logits + out[1][0].float() / 5, vals_pred + out[2][0].float() / 5
        m = metrics(logits.numpy(), vals_pred.numpy(), te.numpy(), tv.numpy())
        print(f"{name} acc {m['acc']:.4f} f1 {m['f1']:.4f}")
    t_end = time.perf_counter()
    print(f"plain: imports {t_import - t0:.2f} s, set-up {t_setup - t_import:.2f} s, training {t_train - t_setup:.2f} s, "
          f"scoring {t_end - t_train:.2f} s", file=sys.stderr)


def plain_kernels():
    """The model's hand-written kernels replaced by what plain PyTorch code computes (one member)."""
    import torch
    import torch.nn.functional as F

    from prmf.models import layers
    from prmf.models.draws import Draws

    def linear(x, w, b, scale):
        return F.linear(x if scale == 1.0 else x * scale, w[0], b[0])

    layers._Linear.apply = staticmethod(linear)
    layers._ReconMSE.apply = staticmethod(lambda h, w, b, x: (F.linear(h, w[0], b[0]) - x).pow(2).mean((1, 2)))
    Draws.keep_mask = lambda self, x, rate: torch.rand_like(x) >= rate  # torch's own dropout draw


def timed(cmd, env):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0, proc.stderr.strip().splitlines()[-1:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--profile", default="paper", choices=["tiny", "small", "paper"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch threads in every mode (default: torch's)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed"])
    ap.add_argument("--child", choices=["plain", "plain-engine-kernels"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return plain(args)
    from prmf.data import synthetic
    synthetic.ensure(args.profile)
    py, env = sys.executable, dict(os.environ)
    out = tempfile.mkdtemp(prefix="one-config-")
    common = ["--data", "synthetic", "--profile", args.profile, "--experiment", "Exp4", "--epochs", str(args.epochs)]
    common += (["--set", f"precision={args.precision}"] if args.precision != "fp32" else []) + (["--threads", str(args.threads)] if args.threads else [])
    modes = {
        "plain loop": [py, __file__, "--child", "plain", "--epochs", str(args.epochs), "--profile", args.profile,
                       "--precision", args.precision] + (["--threads", str(args.threads)] if args.threads else []),
        "plain loop, engine kernels": [py, __file__, "--child", "plain-engine-kernels", "--epochs", str(args.epochs),
                                       "--profile", args.profile, "--precision", args.precision]
                                      + (["--threads", str(args.threads)] if args.threads else []),
        "prmf.train --no-robustness": [py, "-m", "prmf.train", *common, "--no-robustness", "--out", out + "/a"],
        "prmf.train (robustness on)": [py, "-m", "prmf.train", *common, "--out", out + "/b"],
    }
    print(f"one config (Exp4, 5 folds, {args.epochs} epochs, {args.profile}, {args.precision}), "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    best = {}
    for r in range(args.repeat):
        for name, cmd in modes.items():
            seconds, tail = timed(cmd, env)
            best[name] = min(best.get(name, math.inf), seconds)
            print(f"  run {r + 1} {name:28s} {seconds:6.2f} s  load {os.getloadavg()[0]:.2f}  {' '.join(tail)[:110]}",
                  flush=True)
    base = best["plain loop"]
    print(f"best of {args.repeat}, load average {os.getloadavg()[0]:.2f} at the end:")
    for name, seconds in best.items():
        print(f"  {name:28s} {seconds:6.2f} s  {base / seconds:.2f}x the plain loop")


if __name__ == "__main__":
    main()
