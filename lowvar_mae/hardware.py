"""What the machine can do, probed once: the bottom of the package (imports nothing of it)."""

from __future__ import annotations

import torch


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX) that torch's
    kernels use: False when torch dispatches to AVX2 or less (``ATEN_CPU_CAPABILITY=avx2``
    makes an AVX-512 machine compute as an AVX2 one)."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check and check()) or cpu_has_amx()


def cpu_has_amx() -> bool:
    """True on CPUs with AMX tiles (Intel Sapphire Rapids and later) that torch can use."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(amx and amx())


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it ("" where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""
