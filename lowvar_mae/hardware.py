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


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU as the kernel names it: model name, then family and model numbers, which tell
    apart CPUs of one name ("AMD EPYC" is family 25 on Zen 4 and 26 on Zen 5, whose bf16 step
    runs about 1.7x faster). "" where ``cpuinfo`` is missing or names no model."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return ""
    name = fields.get("model name", "")
    numbers = [f"{word} {fields[key]}" for key, word in (("cpu family", "family"), ("model", "model"))
               if fields.get(key, "").isdigit()]
    return f"{name} ({', '.join(numbers)})" if name and numbers else name
