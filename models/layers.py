"""Building blocks shared by every network (one definition each)."""

from __future__ import annotations

import torch
from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


def conv_block(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, norm: str = "instance",
               act: bool = True) -> nn.Sequential:
    """[reflection pad] conv -> norm -> ReLU. Odd kernels keep the size (stride 1) or halve it (stride 2).

    A convolution followed by a norm has no bias: the norm subtracts it anyway, and without it an all-zero
    input (the zero history of the first frame, a frame with nobody in it) stays exactly zero through the
    encoder. With a bias, instance norm would divide the float rounding noise of a constant map by
    sqrt(eps) and amplify it ~300x per layer, making the first frame differ between backends.
    """
    pad = kernel // 2
    bias = norm == "none"
    layers: list[nn.Module] = []
    if pad and stride == 1:
        layers += [nn.ReflectionPad2d(pad), nn.Conv2d(in_ch, out_ch, kernel, stride=1, bias=bias)]
    else:
        layers += [nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=pad, bias=bias)]
    layers.append(norm_layer(norm, out_ch))
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def up_block(in_ch: int, out_ch: int, *, norm: str = "instance") -> nn.Sequential:
    """x2 nearest upsample + 3x3 conv (no checkerboard artefacts, exports cleanly)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *conv_block(in_ch, out_ch, 3, norm=norm))


class ResBlock(nn.Module):
    def __init__(self, channels: int, norm: str = "instance"):
        super().__init__()
        self.body = nn.Sequential(conv_block(channels, channels, 3, norm=norm),
                                  conv_block(channels, channels, 3, norm=norm, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def encoder(in_ch: int, ngf: int, n_down: int, max_ch: int, norm: str) -> tuple[nn.Sequential, int]:
    """7x7 conv then ``n_down`` stride-2 3x3 convs doubling channels. Returns (module, out channels)."""
    layers = [conv_block(in_ch, ngf, 7, norm=norm)]
    ch = ngf
    for _ in range(n_down):
        nxt = min(ch * 2, max_ch)
        layers.append(conv_block(ch, nxt, 3, stride=2, norm=norm))
        ch = nxt
    return nn.Sequential(*layers), ch


def decoder(in_ch: int, n_up: int, min_ch: int, norm: str) -> tuple[nn.Sequential, int]:
    """``n_up`` x2 upsampling blocks halving channels. Returns (module, out channels)."""
    layers = []
    ch = in_ch
    for _ in range(n_up):
        nxt = max(ch // 2, min_ch)
        layers.append(up_block(ch, nxt, norm=norm))
        ch = nxt
    return nn.Sequential(*layers), ch


def assert_shape(x: torch.Tensor, shape: list) -> None:
    """Shape contract: ``shape`` entries of None match anything."""
    if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        raise ValueError(f"expected shape {shape}, got {list(x.shape)}")
