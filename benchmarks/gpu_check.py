"""The correctness half of benchmarks/gpu_check.sh, one check per subcommand; each prints one line
`ok: ...` or `FAIL: ...` and exits 0 or 1.

    python benchmarks/gpu_check.py compare --device cuda --profile small --epochs 3
    python benchmarks/gpu_check.py checkpoint --device cuda --profile small --epochs 3 --dir DIR
    python benchmarks/gpu_check.py share --device cuda --profile paper --epochs 2 --trials 4 --fraction 0.25

compare     the same trial (seed 0, 5 folds) on the CPU and on --device: the first epoch's
            validation logits within LOGIT_TOL (absolute) and every fold's final validation
            metrics (acc, F1, emoval) within METRIC_TOL. The config is deterministic but for
            floating point: Exp1 with dropout 0 and modality dropout off (Exp4's VAE sampling and
            every dropout draw from the device's own generator, so CPU and CUDA runs could not be
            compared sample by sample); batch order and initial weights come from CPU generators
            in both runs.
checkpoint  the same trial trained on --device to the end, and trained there for all but one
            epoch, checkpointed (Engine.state_dict(), torch.save as sweeps/checkpoints.py does), then
            resumed, finished and scored by a fresh CPU-only process (CUDA_VISIBLE_DEVICES
            empty, torch.load(map_location='cpu', weights_only=True)): cv and test metrics within
            METRIC_TOL of the uninterrupted run.
share       --trials Exp4 trials (the grid's first points) as Ray Tune trials of --fraction GPU
            each (on CPU: --fraction CPU), all at once: each must finish (no out-of-memory), the
            trials must overlap in time, and each reports its peak GPU memory.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from prmf.config import preset_config  # noqa: E402
from prmf.data import load_data  # noqa: E402
from prmf.engine import Engine  # noqa: E402

LOGIT_TOL = 1e-3  # first epoch: float32 GEMMs of CPU and GPU differ by ~1e-6 relative per op
METRIC_TOL = 0.02  # after a few epochs the two float paths drift apart; a sample or two changes class
SPLITS = ("test1", "test2", "test3")


def deterministic_config(epochs):
    return preset_config("Exp1", epochs=epochs, patience=10 ** 6, dropout=0.0, use_modality_dropout=False)


def fold_metrics(engine):
    return [m.best_val["metrics"] for m in engine.members]


def compare(args):
    data = load_data("synthetic", profile=args.profile)
    cfg = deterministic_config(args.epochs)
    runs = {}
    for device in ("cpu", args.device):
        engine = Engine([(cfg, 0)], data, 5, device)
        engine.step()
        first = np.stack([m.best_val["logits"].numpy() for m in engine.members])
        while not engine.done:
            engine.step()
        runs[device] = first, [{k: m.best_val["metrics"][k] for k in ("acc", "f1", "emoval")} for m in engine.members]
    (l_cpu, m_cpu), (l_dev, m_dev) = runs["cpu"], runs[args.device]
    logit_diff = float(np.abs(l_cpu - l_dev).max())
    metric_diff = max(abs(a[k] - b[k]) for a, b in zip(m_cpu, m_dev) for k in a)
    ok = logit_diff <= LOGIT_TOL and metric_diff <= METRIC_TOL
    print(f"{'ok' if ok else 'FAIL'}: {args.device} vs cpu, {args.profile}, {args.epochs} epochs: first-epoch validation "
          f"logits max |diff| {logit_diff:.2e} (tolerance {LOGIT_TOL:g}), final fold metrics max |diff| "
          f"{metric_diff:.4f} (tolerance {METRIC_TOL:g})")
    return ok


def trial_scores(result):
    """cv and test metrics of a TrialResult (clean inputs), flat."""
    return {f"{split}_{k}": float(result.splits[split].metrics[k]) for split in ("cv", *SPLITS)
            if split in result.splits for k in ("acc", "f1")}


def checkpoint(args):
    data = load_data("synthetic", profile=args.profile)
    cfg = deterministic_config(args.epochs)
    engine = Engine([(cfg, 0)], data, 5, args.device)
    while not engine.done:
        engine.step()
    straight = trial_scores(engine.score()[0])
    engine = Engine([(cfg, 0)], data, 5, args.device)
    for _ in range(args.epochs - 1):
        engine.step()
    path = Path(args.dir) / "engine.pt"
    torch.save(engine.state_dict(), path)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, __file__, "resume", "--profile", args.profile, "--epochs", str(args.epochs), "--dir", args.dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"FAIL: the CPU-only resume exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        return False
    resumed = json.loads(proc.stdout.splitlines()[-1])
    diff = max(abs(straight[k] - resumed["scores"][k]) for k in straight)
    ok = diff <= METRIC_TOL and resumed["device"] == "cpu" and not resumed["cuda"]
    print(f"{'ok' if ok else 'FAIL'}: checkpoint written on {args.device} after epoch {args.epochs - 1}, resumed and "
          f"scored on a CPU-only driver (cuda available there: {resumed['cuda']}): cv/test acc and F1 max |diff| "
          f"{diff:.4f} against the uninterrupted {args.device} run (tolerance {METRIC_TOL:g}; cv acc "
          f"{straight['cv_acc']:.4f} vs {resumed['scores']['cv_acc']:.4f})")
    return ok


def resume(args):
    """The CPU-only side of `checkpoint`: prints one JSON line."""
    data = load_data("synthetic", profile=args.profile)
    engine = Engine([(deterministic_config(args.epochs), 0)], data, 5, "cpu")
    engine.load_state_dict(torch.load(Path(args.dir) / "engine.pt", map_location="cpu", weights_only=True))
    while not engine.done:
        engine.step()
    print(json.dumps({"device": engine.device.type, "cuda": torch.cuda.is_available(),
                      "scores": trial_scores(engine.score()[0])}))
    return True


def share_trial(config):
    """One Ray Tune trial: an Exp4 grid point trained to its end on its share of the device."""
    import torch
    from ray import tune

    from prmf.data import load_data
    from prmf.engine import train_trial
    device = config["device"]
    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    data = load_data("synthetic", profile=config["profile"])
    cfg = preset_config("Exp4", epochs=config["epochs"], kl_weight=config["kl_weight"])
    result = train_trial(cfg, data, seed=0, device=device)
    tune.report({"start": t0, "end": time.time(), "cv_acc": float(result.splits["cv"].metrics["acc"]),
                 "peak_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else 0.0})


def share(args):
    import ray
    from ray import tune

    from sweeps import ray_local
    gpu = args.device == "cuda"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # the workers'
    with tempfile.TemporaryDirectory() as tmp:
        ray_local.start(Path(tmp), num_cpus=max(1, os.cpu_count() or 1), num_gpus=1 if gpu else 0)  # loopback, own token
        try:
            resources = {"cpu": 1, "gpu": args.fraction} if gpu else {"cpu": args.fraction}
            space = {"device": args.device, "profile": args.profile, "epochs": args.epochs,
                     "kl_weight": tune.grid_search([0.005 * (i + 1) for i in range(args.trials)])}
            tuner = tune.Tuner(tune.with_resources(share_trial, resources), param_space=space,
                               run_config=tune.RunConfig(storage_path=tmp, name="share", verbose=0),
                               tune_config=tune.TuneConfig(max_concurrent_trials=args.trials))
            results = tuner.fit()
            rows = [r.metrics for r in results]
            errors = [str(r.error).splitlines()[-1] for r in results if r.error]
        finally:
            ray.shutdown()
    done = [r for r in rows if "end" in r]
    overlap = len(done) == args.trials and max(r["start"] for r in done) < min(r["end"] for r in done)
    ok = not errors and overlap
    what = f"{args.fraction:g} GPU" if gpu else f"{args.fraction:g} CPU"
    peaks = ", ".join(f"{r['peak_mb']:.0f}" for r in done)
    print(f"{'ok' if ok else 'FAIL'}: {len(done)} of {args.trials} trials at {what} each finished "
          f"({'all running at once' if overlap else 'NOT all at once'}); peak GPU memory per trial MB: {peaks or '-'}"
          + (f"; errors: {errors}" if errors else ""))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("check", choices=["compare", "checkpoint", "resume", "share"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--profile", default="small", choices=["tiny", "small", "paper"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--dir", help="checkpoint: a folder for the checkpoint (default: a temporary one)")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--fraction", type=float, default=0.25)
    args = ap.parse_args()
    if args.check == "resume":
        return resume(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device (use --device cpu for a dry run)", file=sys.stderr)
        sys.exit(2)
    if args.check == "checkpoint" and not args.dir:
        with tempfile.TemporaryDirectory() as tmp:
            args.dir = tmp
            return checkpoint(args)
    return {"compare": compare, "checkpoint": checkpoint, "share": share}[args.check](args)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
