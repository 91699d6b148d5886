"""Mixed precision for training (trainer/precision.py): what ``auto`` picks, from the CPU's flags, and what a
bf16 run keeps in fp32."""

from __future__ import annotations

import pytest
import torch

from trainer.precision import autocast, cpu_flags, resolve_precision

CPU = torch.device("cpu")


def test_auto_uses_bf16_only_where_the_cpu_does_it_natively(tmp_path):
    assert resolve_precision("auto", CPU, flags={"avx2", "avx512f", "avx512_bf16"})[0] == "bf16"
    assert resolve_precision("auto", CPU, flags={"avx2", "amx_bf16", "amx_tile"})[0] == "bf16"
    used, why = resolve_precision("auto", CPU, flags={"avx2", "fma", "avx512f"})
    assert used == "fp32" and "no native bfloat16" in why
    assert resolve_precision("fp32", CPU, flags=set()) == ("fp32", "asked for")
    assert resolve_precision("bf16", CPU, flags=set())[0] == "bf16"      # asked for: honoured (slow, but asked)
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        resolve_precision("fp8", CPU)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16 avx2\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "sse", "avx512_bf16", "avx2"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_bf16_autocast_runs_convolutions_in_bf16_and_leaves_fp32_alone():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with autocast("bf16", CPU):
        assert conv(x).dtype == torch.bfloat16
    with autocast("fp32", CPU):
        assert conv(x).dtype == torch.float32
    assert conv.weight.dtype == torch.float32                            # the parameters stay fp32
