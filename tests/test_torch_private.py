"""The private torch calls of prmf/torch_private.py that no other test pins to a public API."""
import platform
from pathlib import Path

import pytest

from prmf.torch_private import cpu_capabilities


def test_cpu_capabilities_name_the_bf16_flags_the_kernel_reports():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists() or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("needs an x86 Linux CPU (/proc/cpuinfo) to compare with")
    flags = set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split(":")[1].split())
    caps = cpu_capabilities()
    assert caps, "torch named no CPU capabilities on an x86 CPU"
    for flag in ("avx512_bf16", "amx_bf16", "avx2"):
        assert bool(caps.get(flag)) == (flag in flags), flag
