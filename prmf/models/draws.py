"""Every random draw of training, from a stream that belongs to one member.

A member's draws (dropout masks, modality-dropout decisions and patterns, the VAE's noise) are a
function of its key (seed, fold), the step (epoch, batch) and the draw site (the k-th draw of the
forward), never of its pack-mates: the numbers are counter-based, as JAX's keys are, hashed in a few
vectorised integer ops (SplitMix64's finaliser over a Weyl sequence), so a whole pack still draws
as one tensor op per site. A trial therefore trains to the same numbers alone, in any pack, at any
position, and when its pack-mates stop or are left out on a resume. The integer draws (dropout and
modality-dropout masks) are the same bits on any device; the normals go through float64 log and
cos, which may differ in the last bit between CPU and CUDA math libraries.

A site is taken even where a draw is skipped (a rate of 0 for every member), so the sites after it
keep their numbers whatever the pack-mates' rates are.
"""
import math

import torch

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # the Weyl increment of SplitMix64
_MUL1, _MUL2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_TAG = 0x5052_4D46  # "PRMF": the domain of these streams
_WEYL_CACHE = {}  # (n, device) -> [n] int64, (i + 1) * golden: the offsets of a member's words
SITES = 64  # the sites whose per-member bases a step computes at once (more are computed one by one)
CHUNK = 1 << 15  # words hashed at a time on a CPU: the ~11 passes of a chunk stay in cache


def _signed(c: int) -> int:
    c &= _MASK64
    return c - (1 << 64) if c >> 63 else c


def mix64(z: int) -> int:
    """SplitMix64's finaliser on a Python int (exact), as a signed int64."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _MUL1) & _MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & _MASK64
    return _signed(z ^ (z >> 31))


def _mix(z: torch.Tensor, t=None) -> torch.Tensor:
    """mix64 on an int64 tensor, in place (`t`: scratch of z's shape): logical right shifts as
    arithmetic shift + mask, and multiplication wrapping modulo 2^64 (torch's int64 arithmetic on
    every backend)."""
    t = torch.empty_like(z) if t is None else t
    for shift, mul in ((30, _MUL1), (27, _MUL2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=t).bitwise_and_((1 << (64 - shift)) - 1)
        z.bitwise_xor_(t)
        if mul is not None:
            z.mul_(_signed(mul))
    return z


def member_key(seed: int, fold: int) -> int:
    """The stream of member (seed, fold): the same key wherever the member trains."""
    return mix64(mix64((int(seed) & _MASK64) ^ _TAG) + int(fold))


def step_counter(epoch: int, batch: int) -> int:
    return epoch << 24 | batch


class Draws:
    """The draws of one forward of a training step, for the members whose keys are given ([M]
    int64): each call takes the next site. `subset(index)` is the same step for some members."""

    def __init__(self, keys: torch.Tensor, step: int, bases=None):
        self.keys, self.step, self.site, self.bases = keys, step, 0, bases

    @classmethod
    def from_global(cls, n_members, device):
        """Keys drawn from torch's global generator: a model trained outside the engine is random as
        an nn.Module is, reproducible by torch.manual_seed."""
        keys = torch.randint(-2 ** 63, 2 ** 63 - 1, (n_members,), dtype=torch.int64).to(device)
        return cls(keys, 0)

    def subset(self, index) -> "Draws":
        bases = None if self.bases is None else self.bases.index_select(0, index)
        return Draws(self.keys.index_select(0, index), self.step, bases)

    def _base(self, site):
        """[M] the members' streams at this step and site: mix(key ^ mix(step, site))."""
        if site >= SITES:
            return _mix(self.keys ^ mix64(self.step << 12 | site))
        if self.bases is None:  # every site's at once: one op instead of a dozen per site
            counters = torch.tensor([mix64(self.step << 12 | s) for s in range(SITES)], device=self.keys.device)
            self.bases = _mix(self.keys[:, None] ^ counters)
        return self.bases[:, site]

    def words(self, n) -> torch.Tensor:
        """[M, n] random int64 words of this site, member m's word i = mix(base_m + (i + 1) * golden)
        (SplitMix64's i-th output from seed base_m)."""
        base = self._base(self.site)[:, None]
        self.site += 1
        device = self.keys.device
        if (n, device) not in _WEYL_CACHE:
            if len(_WEYL_CACHE) > 64:
                _WEYL_CACHE.clear()
            _WEYL_CACHE[n, device] = torch.arange(1, n + 1, dtype=torch.int64, device=device).mul_(_signed(_GOLDEN))
        weyl = _WEYL_CACHE[n, device]
        out = torch.empty(len(base), n, dtype=torch.int64, device=device)
        cols = n if device.type != "cpu" else max(256, CHUNK // max(1, len(base)))
        scratch = torch.empty(len(base), min(cols, n), dtype=torch.int64, device=device)
        for start in range(0, n, cols):
            z = out[:, start:start + cols]
            torch.add(base, weyl[start:start + cols], out=z)
            _mix(z, scratch[:, :z.shape[1]])
        return out

    def skip(self):
        """Take a site without drawing (every member's rate is 0)."""
        self.site += 1

    def keep_mask(self, x, rate) -> torch.Tensor:
        """Dropout's keep mask for x [M, ...] (probability 1 - rate; rate a float or float64 [M]),
        from 16 bits per element: p resolved to 2^-16, the threshold computed in float64."""
        per = x[0].numel()
        bits = self.words((per + 3) // 4).view(torch.int16)[:, :per].view(x.shape)
        if isinstance(rate, float):
            return bits < round((1 - rate) * 65536) - 32768
        threshold = torch.round((1 - rate.double()) * 65536).to(torch.int32) - 32768
        return bits < threshold.view(-1, *[1] * (x.dim() - 1))

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normals shaped and typed like `like` [M, ...] (Box-Muller, float64)."""
        per = like[0].numel()
        w = self.words(per)
        hi = torch.bitwise_right_shift(w, 32).bitwise_and_(0xFFFFFFFF).double()
        lo = w.bitwise_and(0xFFFFFFFF).double()
        u1 = (hi + 1.0) * 2.0 ** -32  # (0, 1]
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2 * math.pi * 2.0 ** -32) * lo)
        return z.view(like.shape).to(like.dtype)

    def uniform32(self, shape):
        """(u [M, ...] in [0, 2^32) as int64, v [M, ...] in [0, 2^32) as int64): two independent
        32-bit integers per element."""
        per = math.prod(shape[1:])
        w = self.words(per).view(shape)
        return torch.bitwise_right_shift(w, 32).bitwise_and_(0xFFFFFFFF), w.bitwise_and(0xFFFFFFFF)
