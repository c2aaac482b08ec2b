"""What the machine can do, probed once: the bottom of the package (imports nothing of it)."""

from __future__ import annotations

import torch


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check and check()) or (amx and amx()))
