"""The built-in data set: a generated MER2023-shaped MERBench root.

It has MER2023's split sizes and class counts, valence tied to the class, three modalities of
different strength (text strongest, then audio, then video) and a test2 with MER-NOISE-like
corruption (noisy audio, degraded video, some all-zero modalities), so the fusion and
missing-modality questions of the paper can be asked of it. It is written as a MERBench folder
so real and built-in data go through one reader.

    python -m prmf.data.synthetic --out DIR [--profile small|paper] [--seed N]
"""
import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from .merbench import CLASSES, NO_VALENCE

# Class counts of MER2023 as its label-6way.npz holds them, in CLASSES order.
CLASS_COUNTS = {
    "train": (871, 822, 689, 383, 462, 146),
    "test1": (88, 105, 93, 50, 57, 18),
    "test2": (123, 98, 87, 40, 52, 12),
    "test3": (166, 183, 169, 257, 45, 14),
}
PROFILES = {"tiny": (16, 32, 12), "small": (64, 128, 48), "paper": (1024, 5120, 768)}  # audio, text, video dims
SIZE = {"tiny": 0.15, "small": 1.0, "paper": 1.0}  # fraction of MER2023's sample counts ('tiny' is for tests)
FEATURES = {  # feature folder names per profile (audio, text, video)
    "tiny": ("synth-audio-UTT", "synth-text-UTT", "synth-video-UTT"),
    "small": ("synth-audio-UTT", "synth-text-UTT", "synth-video-UTT"),
    "paper": ("chinese-hubert-large-UTT", "Baichuan-13B-Base-UTT", "clip-vit-large-patch14-UTT"),
}
VALENCE_MEAN = (0.0, -2.3, 2.2, -2.4, -1.4, 0.8)  # per class, on MER2023's [-5, 5] scale
STRENGTH = (0.6, 0.8, 0.45)  # how much of the shared emotion signal each modality carries
LATENT = 16


def _prototypes(rng):
    p = rng.normal(size=(len(CLASSES), LATENT))
    p[4] = 0.55 * p[0] + 0.45 * p[4]  # worried lies close to neutral
    p[5] = 0.5 * p[2] + 0.5 * p[5]  # surprise lies close to happy
    return 3.0 * p / np.linalg.norm(p, axis=1, keepdims=True)


def _split(rng, counts, protos, mixers, dims, prefix):
    emos = np.repeat(np.arange(len(CLASSES)), counts)
    rng.shuffle(emos)
    n = len(emos)
    val_dev = rng.normal(0, 0.8, n)
    vals = np.clip(np.array(VALENCE_MEAN)[emos] + val_dev, -5, 5).round(2)
    shared = protos[emos] + rng.normal(0, 0.6, (n, LATENT))
    shared[:, 0] += 0.6 * val_dev  # valence within a class is visible in the signal too
    inputs = []
    for (a, b), strength, d in zip(mixers, STRENGTH, dims):
        view = strength * shared + rng.normal(0, 1.0, (n, LATENT))
        x = view @ a + 0.5 * np.tanh(view @ b) + rng.normal(0, 0.3, (n, d))
        inputs.append(x.astype(np.float32))
    names = np.array([f"{prefix}_{i:08d}" for i in range(n)])
    return names, emos, vals, inputs


def _corrupt_like_mer_noise(rng, inputs):
    """test2: noisy audio, blurred (shrunk, noisy) video, and about 15% of samples missing one modality."""
    audio, text, video = inputs
    n = len(audio)
    audio += rng.normal(0, 1.2 * audio.std(), audio.shape).astype(np.float32)
    video *= 0.5
    video += rng.normal(0, 0.8 * video.std(), video.shape).astype(np.float32)
    missing = rng.random(n) < 0.15
    which = rng.choice(3, size=n, p=[0.3, 0.2, 0.5])  # a missing face is the most common case
    for m, x in enumerate((audio, text, video)):
        x[missing & (which == m)] = 0


def generate(out, profile="small", seed=0):
    """Write a MERBench root at `out` (atomically: a half-written folder never appears)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    out = Path(out)
    dims = PROFILES[profile]
    rng = np.random.default_rng(seed)
    protos = _prototypes(rng)
    mixers = [(rng.normal(0, 1 / np.sqrt(LATENT), (LATENT, d)), rng.normal(0, 1 / np.sqrt(LATENT), (LATENT, d)))
              for d in dims]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        feat_dirs = [tmp / "features" / f for f in FEATURES[profile]]
        for d in feat_dirs:
            d.mkdir(parents=True)
        labels = {}
        for split, counts in CLASS_COUNTS.items():
            prefix = "samplenew" if split == "test3" else f"sample_{split}"
            counts = [max(2, round(c * SIZE[profile])) for c in counts]
            names, emos, vals, inputs = _split(rng, counts, protos, mixers, dims, prefix)
            if split == "train":  # a few missing faces and empty transcripts, as in MER2023
                inputs[2][rng.random(len(names)) < 0.03] = 0
                inputs[1][rng.random(len(names)) < 0.01] = 0
            if split == "test2":
                _corrupt_like_mer_noise(rng, inputs)
            if split == "test3":
                vals = np.full(len(names), NO_VALENCE)
            labels[f"{split}_corpus"] = np.array(
                {name: {"emo": CLASSES[e], "val": float(v)} for name, e, v in zip(names, emos, vals)}, dtype=object)
            for d, x in zip(feat_dirs, inputs):
                for name, row in zip(names, x):
                    np.save(d / f"{name}.npy", row)
        np.savez(tmp / "label-6way.npz", **labels)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def cache_dir() -> Path:
    """Where generated sets and measured timings are kept (PRMF_DATA_DIR, else ~/.cache/prmf)."""
    return Path(os.environ.get("PRMF_DATA_DIR", Path.home() / ".cache" / "prmf"))


def default_root(profile="small", seed=0) -> Path:
    """Where `--data synthetic` keeps its generated set."""
    return cache_dir() / f"synthetic-{profile}-seed{seed}"


def ensure(profile="small", seed=0) -> Path:
    """Generate the built-in set once; later calls reuse it."""
    root = default_root(profile, seed)
    if not (root / "label-6way.npz").is_file():
        generate(root, profile, seed)
    return root


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m prmf.data.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to write the MERBench root to")
    ap.add_argument("--profile", default="small", choices=sorted(PROFILES), help="feature sizes (default: small)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    root = generate(args.out, args.profile, args.seed)
    print(f"wrote {root} (profile {args.profile}, features {', '.join(FEATURES[args.profile])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
