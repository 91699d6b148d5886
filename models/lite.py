"""``lite``: a vid2vid generator designed for CPU inference (issue: real time on an ordinary CPU).

Same contract and structure as the vid2vid generator (labels of frames t-L..t and the L previous generated
frames -> hallucinated frame + backward flow + occlusion mask, blended with the one warp op at output
resolution), but the compute goes where it pays:

* space-to-depth on the inputs instead of full-resolution 7x7 convolutions: a 4x4 stride-4 convolution (the
  same function as pixel-unshuffle x4 + 1x1 conv, without the transposes that cost ONNX Runtime ~3.5 ms per
  input at 256²), so the network starts at S/4;
* depthwise-separable residual blocks at S/16 resolution, few channels at S/4;
* one shared decoder; 4x4 stride-4 transposed convolutions (= 1x1 conv + depth-to-space) emit the image and, from
  a one-block branch of its own, the flow and mask at full resolution;
* no normalisation layers (nothing to fold at inference; LayerScale-style residual gains keep training stable);
* a background plate for the fixed camera, added to the image head before its tanh: the plate is estimated from
  the training frames with the person masked out (trainer/clips.py ``ClipSource.background_plate``) and refined
  in training, so a tiny network spends its capacity on the person instead of memorising the room.

At 256² with the default widths it costs ~0.11 GMAC per frame versus ~21 GMAC for the `dance` preset (models/flops.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .generator import SequentialGenerator, register_arch
from .presets import ModelConfig
from .warp import warp

# The flow branch shares the decoder's features; at full strength its losses (flow L1 and warp, x10 each in
# vid2vid) swamp what those few channels learn about the image (held-out PSNR fell from 21.7 to 19.2 dB in a
# 300-iteration probe; 21.4 dB with this scale), so their gradient into the shared features is scaled by this factor.
FLOW_GRAD_SCALE = 0.1
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
    uses_background_plate = True

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
        # Heads, from S/4 features to full resolution: the image (3), and on a branch of its own (as in vid2vid)
        # the flow (2) + occlusion mask (1).
        self.head = nn.ConvTranspose2d(c1, 3, SHUFFLE, stride=SHUFFLE)
        if L:
            self.flow_body = nn.Sequential(SepConv(c1, c1), _act())
            self.flow_head = nn.ConvTranspose2d(c1, 3, SHUFFLE, stride=SHUFFLE)
        self._init_weights()
        # The static background, stored before the output tanh (grey until set_background() gives it the
        # data's estimate); the network adds the person to it.
        self.background = nn.Parameter(torch.zeros(1, 3, cfg.size, cfg.size))
        self.flow_scale = cfg.size / 64.0

    @torch.no_grad()
    def _init_weights(self) -> None:
        """He initialisation, so that the signal neither fades nor grows through a network without normalisation
        layers (with PyTorch's default it reached the head at ~1/4 of the input's scale); zero biases; small
        output heads (flow ~0, mask 0.5, the image adds ~nothing to the background plate at first)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                depthwise = m.groups > 1
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear" if depthwise else "relu")
                nn.init.zeros_(m.bias)
        for head in (self.head, getattr(self, "flow_head", None)):
            if head is not None:
                nn.init.normal_(head.weight, std=0.1 / head.in_channels ** 0.5)
                nn.init.zeros_(head.bias)

    @torch.no_grad()
    def set_background(self, plate: torch.Tensor) -> None:
        """Start the background from an estimate (3, S, S) in [-1, 1] (before training)."""
        want = tuple(self.background.shape[1:])
        if tuple(plate.shape) != want:
            raise ValueError(f"background plate of shape {tuple(plate.shape)}, expected {want}")
        self.background.copy_(torch.atanh(plate.clamp(-0.99, 0.99)).unsqueeze(0))

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
        hallucinated = torch.tanh(self.head(y) + self.background)    # (B, 3, S, S)
        if not L:
            zeros = torch.zeros_like(hallucinated[:, :1])
            return hallucinated, torch.cat((zeros, zeros), 1), zeros
        if self.training:  # the flow/warp losses reach the shared features 10x weaker (forward unchanged)
            y = y * FLOW_GRAD_SCALE + y.detach() * (1.0 - FLOW_GRAD_SCALE)
        fm = self.flow_head(self.flow_body(y))                         # (B, 3, S, S)
        flow = fm[:, :2] * self.flow_scale
        mask = torch.sigmoid(fm[:, 2:3])
        frame = mask * warp(previous[:, -3:], flow) + (1 - mask) * hallucinated
        return frame, flow, mask
