"""Mixed precision for training: which one a run uses, and the autocast context of its forward passes.

``auto`` is bf16 autocast where the hardware does bf16 natively — a CUDA GPU that supports it, or a CPU with
AVX512-BF16 or AMX (read from the CPU's flags, never assumed: on AVX2-only CPUs bf16 autocast is *slower* than fp32,
and some bf16 convolutions fall to very slow paths) — fp16 with a GradScaler on older CUDA GPUs, fp32 elsewhere.
Only the forward passes of the networks run in the lower precision; losses, gradients' master copies (the
parameters), the optimisers' state and the EMA stay fp32.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    if not sys.platform.startswith("linux"):
        return set()
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    return bool(set(CPU_BF16_FLAGS) & (cpu_flags() if flags is None else flags))


def resolve_precision(name: str, device: torch.device, flags: set[str] | None = None) -> tuple[str, str]:
    """(the precision a run on ``device`` uses, why) for the asked ``name`` (one of PRECISIONS)."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    cuda = device.type == "cuda"
    if name == "fp16" and not cuda:
        raise ValueError("precision fp16 needs a CUDA GPU (on a CPU use bf16, or auto)")
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; use fp16")
    if name != "auto":
        return name, "asked for"
    if cuda:
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name(device)} supports bfloat16"
        return "fp16", f"auto: {torch.cuda.get_device_name(device)} lacks bfloat16 (fp16 with a gradient scaler)"
    found = sorted(set(CPU_BF16_FLAGS) & (cpu_flags() if flags is None else flags))
    if found:
        return "bf16", f"auto: this CPU does bfloat16 natively ({', '.join(found)})"
    return "fp32", "auto: this CPU has no native bfloat16 (AVX512-BF16 / AMX), where bf16 is slower than fp32"


def autocast(precision: str, device: torch.device):
    """The context the forward passes of a ``precision`` run go in (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 needs its gradients scaled (its range is small); a disabled scaler passes everything through."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
