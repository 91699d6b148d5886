"""``lite``: a vid2vid generator designed for CPU inference (issue: real time on an ordinary CPU).

Same contract and structure as the vid2vid generator (labels of frames t-L..t and the L previous generated
frames -> hallucinated frame + backward flow + occlusion mask, blended with the one warp op at output
resolution), but the compute goes where it pays:

* space-to-depth on the inputs instead of full-resolution 7x7 convolutions: a 4x4 stride-4 convolution (the
  same function as pixel-unshuffle x4 + 1x1 conv, without the transposes that cost ONNX Runtime ~3.5 ms per
  input at 256²), so the network starts at S/4;
* depthwise-separable residual blocks at S/16 resolution, few channels at S/4;
* one shared decoder whose last layer, a 4x4 stride-4 transposed convolution (= 1x1 conv + depth-to-space),
  emits image, flow and mask together at full resolution;
* no normalisation layers (nothing to fold at inference; LayerScale-style residual gains keep training stable);
* a learned static canvas (see ``canvas``) for the fixed camera's background.

At 256² with the default widths it costs ~0.10 GMAC per frame versus ~21 GMAC for the `dance` preset (models/flops.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .generator import SequentialGenerator, register_arch
from .presets import ModelConfig
from .warp import warp

# The canvas is one parameter per output pixel; Adam moves each parameter by about the learning rate per step,
# so it is stored scaled down by this gain (its effective step is CANVAS_GAIN x the learning rate).
CANVAS_GAIN = 32.0
SHUFFLE = 4  # space-to-depth factor at the input (stride-4 conv) and depth-to-space at the output


def _act() -> nn.Module:
    return nn.ReLU(inplace=True)


class SepConv(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 (MobileNet)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.dw = nn.Conv2d(in_ch, in_ch, 3, stride=stride, padding=1, groups=in_ch)
        self.pw = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x):
        return self.pw(self.dw(x))


class SepResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(SepConv(ch, ch), _act(), SepConv(ch, ch))
        self.gain = nn.Parameter(torch.full((1, ch, 1, 1), 0.1))

    def forward(self, x):
        return x + self.gain * self.body(x)


@register_arch("lite")
class LiteGenerator(SequentialGenerator):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        if cfg.n_local:
            raise ValueError("the lite generator has no local enhancer (n_local must be 0)")
        if cfg.size % (SHUFFLE * 4):
            raise ValueError(f"lite needs a size divisible by {SHUFFLE * 4}, got {cfg.size}")
        self.cfg = cfg
        L, C = cfg.history_frames, cfg.label_nc
        c1, c2, c3 = cfg.ngf, cfg.ngf * 2, cfg.ngf * 4       # widths at S/4, S/8, S/16
        # Encoders: space-to-depth, 1x1 projection, summed (vid2vid's two encoders), then two stride-2 steps.
        self.in_label = nn.Conv2d((L + 1) * C, c1, SHUFFLE, stride=SHUFFLE)
        self.in_image = nn.Conv2d(L * 3, c1, SHUFFLE, stride=SHUFFLE) if L else None
        self.stem = nn.Sequential(_act(), SepConv(c1, c1), _act())           # S/4
        self.down1 = nn.Sequential(SepConv(c1, c2, stride=2), _act())         # S/8
        self.down2 = nn.Sequential(SepConv(c2, c3, stride=2), _act())         # S/16
        self.blocks = nn.Sequential(*[SepResBlock(c3) for _ in range(cfg.n_blocks)])
        self.up1 = SepConv(c3, c2)
        self.up2 = SepConv(c2 + c2, c1)      # + skip from S/8
        self.fuse = SepConv(c1 + c1, c1)     # + skip from S/4
        # Heads: image (3) + flow (2) + mask (1) per output pixel, from S/4 features to full resolution.
        self.out_ch = 3 + (3 if L else 0)
        self.head = nn.ConvTranspose2d(c1, self.out_ch, SHUFFLE, stride=SHUFFLE)
        with torch.no_grad():
            if L:  # start with small flows and a neutral mask
                self.head.weight[:, 3:5].mul_(1e-2)
                self.head.bias[3:].zero_()
        # A learned static canvas added to the head's output: a positional prior that lets a tiny network
        # reproduce a fixed camera's background without memorising it in its convolutions (one add at inference).
        self.canvas = nn.Parameter(torch.zeros(1, self.out_ch, cfg.size, cfg.size))
        self.flow_scale = cfg.size / 64.0

    def forward(self, labels: torch.Tensor, previous: torch.Tensor | None = None):
        cfg = self.cfg
        L = cfg.history_frames
        x = self.in_label(labels)
        if L:
            if previous is None:
                raise ValueError(f"this generator needs previous frames (history_frames={L})")
            x = x + self.in_image(previous)
        s4 = self.stem(x)                            # (B, c1, S/4, S/4)
        s8 = self.down1(s4)                          # (B, c2, S/8, S/8)
        s16 = self.blocks(self.down2(s8))            # (B, c3, S/16, S/16)
        y = F.relu(self.up1(F.interpolate(s16, scale_factor=2.0, mode="nearest")))
        y = F.relu(self.up2(torch.cat((y, s8), 1)))
        y = F.relu(self.fuse(torch.cat((F.interpolate(y, scale_factor=2.0, mode="nearest"), s4), 1)))
        out = self.head(y) + self.canvas * CANVAS_GAIN  # (B, out_ch, S, S)
        hallucinated = torch.tanh(out[:, :3])
        if not L:
            zeros = torch.zeros_like(hallucinated[:, :1])
            return hallucinated, torch.cat((zeros, zeros), 1), zeros
        flow = out[:, 3:5] * self.flow_scale
        mask = torch.sigmoid(out[:, 5:6])
        frame = mask * warp(previous[:, -3:], flow) + (1 - mask) * hallucinated
        return frame, flow, mask
