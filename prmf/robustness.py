"""Robustness scenarios for evaluation: missing modalities and Gaussian feature noise.

`scenarios()` gives name -> transform(inputs) for `TrialRunner.finish`; each transform takes the
three input tensors (audio, text, video; [N, D] or [N, T, D]) and returns three new ones.

- 'all' (every modality present) is the clean input: the store's clean test rows are its rows, so
  `scenarios()` does not score it a second time (analysis shows it under that name).
- '-a', '-t', '-v', '-a-t', '-a-v', '-t-v' zero the named modalities: an all-zero input is how
  MERBench (and the models here) encode a missing modality.
- 'noise:L' adds N(0, (L * per-feature std)^2) to every modality. The std is taken over the present
  rows of that input (all but the last axis); rows that are all zero (missing samples, frame
  padding) stay zero so they still read as missing. The noise is drawn on the CPU from a generator
  seeded by (seed, modality, shape), so repeated calls and every device give the same noise.
"""
import itertools
import zlib

import torch

MODALITY_KEYS = ("a", "t", "v")  # input order: audio, text, video
DEFAULT_NOISE_LEVELS = (0.5, 1.0, 2.0)


def missing_patterns() -> list:
    """['all', '-a', '-t', '-v', '-a-t', '-a-v', '-t-v']: at least one modality always remains."""
    names = ["all"]
    for k in (1, 2):
        names += ["".join(f"-{m}" for m in combo) for combo in itertools.combinations(MODALITY_KEYS, k)]
    return names


def noise_name(level: float) -> str:
    return f"noise:{level:g}"


def noise_level(name: str) -> float | None:
    """The level of a 'noise:L' scenario name, else None."""
    return float(name.split(":", 1)[1]) if name.startswith("noise:") else None


def drop_modalities(drop: tuple):
    """Transform zeroing the modalities whose index is in `drop`."""
    def transform(inputs):
        return [torch.zeros_like(x) if i in drop else x for i, x in enumerate(inputs)]
    return transform


def _generator(seed: int, modality: int, shape) -> torch.Generator:
    key = f"{seed}:{modality}:{tuple(shape)}".encode()
    return torch.Generator(device="cpu").manual_seed(zlib.crc32(key))


def add_noise(level: float, seed: int = 0, memo=None):
    """Transform adding Gaussian noise of std level x per-feature std to every present row. The
    noise pattern depends on (seed, modality, shape) only, so the levels of one `scenarios()` share
    it, and its per-feature std, through `memo` (computed once per input)."""
    def transform(inputs):
        out = []
        for i, x in enumerate(inputs):
            key = (i, x.data_ptr(), tuple(x.shape))
            if memo is None or key not in memo:
                present = (x != 0).any(dim=-1, keepdim=True)  # [N, 1] or [N, T, 1]
                rows = x[present.expand_as(x)].reshape(-1, x.shape[-1]).float()
                std = rows.std(dim=0, unbiased=False) if len(rows) > 1 else torch.zeros(x.shape[-1], device=x.device)
                eps = torch.randn(tuple(x.shape), generator=_generator(seed, i, x.shape)).to(x.device)
                value = (x, present, (std * eps).to(x.dtype))  # x kept: its address stays its own
                if memo is not None:
                    memo[key] = value
            _, present, noise = memo[key] if memo is not None else value
            out.append(torch.where(present, x + level * noise, x))
        return out
    return transform


def scenarios(noise_levels=DEFAULT_NOISE_LEVELS, seed: int = 0) -> dict:
    """name -> transform: the 6 patterns with a modality missing, then one 'noise:L' per level
    ('all' is the clean input, scored as such)."""
    out = {}
    for name in missing_patterns():
        drop = tuple(MODALITY_KEYS.index(m) for m in name.split("-")[1:])
        if drop:
            out[name] = drop_modalities(drop)
    memo = {}
    for level in noise_levels:
        out[noise_name(level)] = add_noise(float(level), seed, memo)
    return out
