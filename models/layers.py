"""Building blocks shared by every network (one definition each)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


# "x2 nearest upsample, reflection pad 1, 3x3 conv" is a stride-2 transposed convolution with a 4x4 kernel on the
# input itself (its sub-pixel form): output row 2i reads upsampled rows 2i-1, 2i, 2i+1 = input rows i-1, i, i,
# so the 3x3 kernel's rows fold into 2 taps on input rows (i-1, i); output row 2i+1 reads input rows i, i, i+1:
# taps on (i, i+1). The four taps of the 4x4 kernel (its rows k = 0..3, in conv_transpose2d's order) as sums of
# the 3x3 kernel's rows; the same for columns. Reflection at the upsampled border is replication at the input's
# (row -1 of the upsampled image mirrors row 1, which is input row 0).
_FOLD = torch.tensor([[0.0, 0.0, 1.0],       # k=0: odd output rows, input row i+1: kernel row 2
                      [0.0, 1.0, 1.0],       # k=1: even rows, input row i: kernel rows 1 + 2
                      [1.0, 1.0, 0.0],       # k=2: odd rows, input row i: kernel rows 0 + 1
                      [1.0, 0.0, 0.0]])      # k=3: even rows, input row i-1: kernel row 0


_FOLDS: dict[tuple, torch.Tensor] = {}     # _FOLD on each (device, dtype) used, copied there once


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv3x3(reflect_pad1(upsample_nearest_x2(x)))`` computed on ``x`` itself, as one stride-2 transposed
    convolution: the same function to float rounding, with 4/9 of the multiply-adds and no upsampled or padded
    full-size copy (one decoder step of dance's generator, forward + backward, 2x faster in fp32 and bf16 on a
    CPU). The kernel is folded in fp32 even under autocast. x (B, Ci, H, W), weight (Co, Ci, 3, 3) -> (B, Co, 2H, 2W)."""
    key = (weight.device, weight.dtype)
    fold = _FOLDS.get(key)
    if fold is None:
        fold = _FOLDS[key] = _FOLD.to(weight)
    with torch.autocast(weight.device.type, enabled=False):
        kernel = torch.einsum("kr,oirc,lc->iokl", fold, weight, fold)      # (Ci, Co, 4, 4)
    return F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, bias, stride=2, padding=3)


class UpBlock(nn.Sequential):
    """x2 nearest upsample, reflection pad, 3x3 conv, norm, ReLU (no checkerboard artefacts, exports cleanly).

    The module tree (and so the state dict) is that plain sequence; ``forward`` runs its first three steps in
    their sub-pixel form (``upsample_conv3x3``) — except while traced for export (ONNX, TorchScript), where the
    plain sequence is what the graph records: Upsample, Pad and Conv, the ops every runtime (TensorRT's parser
    included) takes with its weights as constants."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return super().forward(x)
        _, _, conv, *rest = self
        x = upsample_conv3x3(x, conv.weight, conv.bias)
        for layer in rest:
            x = layer(x)
        return x


def up_block(in_ch: int, out_ch: int, *, norm: str = "instance") -> UpBlock:
    """x2 nearest upsample + 3x3 conv (``UpBlock``)."""
    return UpBlock(nn.Upsample(scale_factor=2, mode="nearest"), *conv_block(in_ch, out_ch, 3, norm=norm))


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
