"""The float arithmetic of a run (config key `precision`): what a device can run, and the contexts
the engine trains and predicts in.

fp32 is the default (the published runs were fp32). bf16-mixed runs forwards and losses under
torch.autocast(bfloat16) with fp32 master weights, gradients and Adam moments (the parameters are
never cast; backward runs outside autocast, as torch recommends). tf32 keeps fp32 weights and math
but lets CUDA matmuls and convolutions use TF32, only while the engine runs.
"""
import contextlib

import torch

from .config import ConfigError
from .torch_private import cpu_capabilities


def native_bf16(device) -> bool:
    """Does the device compute bf16 in hardware (CUDA: Ampere or later; x86: AVX512-BF16 or AMX)?"""
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        caps = cpu_capabilities()  # x86 feature flags; {} elsewhere
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return False


def check(precision, device) -> str:
    """Refuse a precision the device cannot run (ConfigError, one line), before any work; else a
    note where it runs but slowly ('' if none)."""
    device = torch.device(device)
    if precision == "tf32" and device.type != "cuda":
        where = "the CPU" if device.type == "cpu" else device.type.upper()
        raise ConfigError(f"precision 'tf32' changes CUDA matmuls only; on {where} use fp32"
                          f"{' or bf16-mixed' if device.type == 'cpu' else ''}")
    if precision != "bf16-mixed":
        return ""
    if device.type == "mps":
        raise ConfigError("precision 'bf16-mixed' is not supported on MPS; use fp32")
    if device.type == "cuda" and not native_bf16(device):
        raise ConfigError(f"precision 'bf16-mixed': {torch.cuda.get_device_name(device)} has no bf16 "
                          f"(it needs compute capability 8.0 or later); use fp32")
    if device.type == "cpu" and not native_bf16(device):
        return (f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16: bf16-mixed runs "
                f"emulated by torch, slower than fp32")
    return ""


def autocast(precision, device):
    """The context of forwards and losses: bf16 autocast under bf16-mixed, else nothing."""
    if precision != "bf16-mixed":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def matmuls(precision, device):
    """The context of a whole training step or scoring (backward included): TF32 CUDA matmuls and
    convolutions under tf32, the global flags restored after; nothing otherwise."""
    if precision != "tf32" or torch.device(device).type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
