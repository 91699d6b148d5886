"""Multiply-accumulate counts of a network's forward pass (convolutions and linear layers)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import UpBlock


@torch.no_grad()
def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """MACs of one ``model(*inputs)`` call, counted from every Conv2d / Linear actually run (a decoder's
    ``UpBlock`` by its plain definition: its 3x3 conv on the upsampled map)."""
    total = 0

    def conv_hook(mod: nn.Conv2d, _inp, out):
        nonlocal total
        kh, kw = mod.kernel_size
        total += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() * mod.in_features

    def up_hook(mod: UpBlock, _inp, out):   # its 3x3 conv as defined (on the upsampled map), however it ran
        nonlocal total
        total += out.numel() * mod[2].in_channels * 9

    handles = []
    inside_up = {id(m[2]) for m in model.modules() if isinstance(m, UpBlock)}
    for m in model.modules():
        if isinstance(m, UpBlock):
            handles.append(m.register_forward_hook(up_hook))
        elif isinstance(m, nn.Conv2d) and id(m) not in inside_up:
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total
