"""Discriminators: a conditional multi-scale PatchGAN on single frames, and temporal PatchGANs on short clips.

Every discriminator returns, per scale, the list of its intermediate features with the patch logits last,
so the trainer can compute both the GAN loss and vid2vid's feature-matching loss from one call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import assert_shape, norm_layer
from .presets import ModelConfig


class PatchDiscriminator(nn.Module):
    """pix2pix / pix2pixHD N-layer PatchGAN (4x4 convs, LeakyReLU 0.2)."""

    def __init__(self, in_ch: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance"):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(in_ch, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2, True))]
        ch = ndf
        for i in range(1, n_layers + 1):
            nxt = min(ch * 2, 512)
            stride = 2 if i < n_layers else 1
            layers.append(nn.Sequential(nn.Conv2d(ch, nxt, 4, stride=stride, padding=2), norm_layer(norm, nxt),
                                        nn.LeakyReLU(0.2, True)))
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=2))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class MultiScaleDiscriminator(nn.Module):
    """``num_scales`` PatchGANs on the input downsampled by 1, 2, 4, ..."""

    def __init__(self, in_ch: int, ndf: int, n_layers: int, num_scales: int, norm: str = "instance"):
        super().__init__()
        self.in_ch = in_ch
        self.nets = nn.ModuleList(PatchDiscriminator(in_ch, ndf, n_layers, norm) for _ in range(num_scales))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        assert_shape(x, [None, self.in_ch, None, None])
        outs = []
        for i, net in enumerate(self.nets):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outs.append(net(x))
        return outs


class ImageDiscriminator(MultiScaleDiscriminator):
    """Conditional: judges (label map of frame t, frame t)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.label_nc + 3, cfg.ndf, cfg.d_layers, cfg.d_scales)

    def forward(self, labels: torch.Tensor, frame: torch.Tensor) -> list[list[torch.Tensor]]:
        return super().forward(torch.cat((labels, frame), 1))


class FaceDiscriminator(MultiScaleDiscriminator):
    """Everybody Dance Now's face GAN: a conditional PatchGAN of its own on the head window (label map + frame),
    one scale and two strided layers, so a 32-px window still yields a grid of patch logits. It judges the few
    pixels (eyes, mouth) that a whole-person discriminator averages away."""

    def __init__(self, cfg: ModelConfig, n_layers: int = 2):
        super().__init__(cfg.label_nc + 3, cfg.ndf, n_layers, 1)

    def forward(self, labels: torch.Tensor, frame: torch.Tensor) -> list[list[torch.Tensor]]:
        return super().forward(torch.cat((labels, frame), 1))


class TemporalDiscriminator(nn.Module):
    """vid2vid's D_T: K frames spaced ``s`` apart plus the K-1 flows between them, one PatchGAN per spacing.

    The flows are the ground-truth (reference) flows of the real clip for both real and generated frames, so
    the discriminator judges whether the frames move consistently with the motion.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.k = cfg.temporal_frames
        self.spacings = tuple(cfg.temporal_spacings)
        self.flow_norm = cfg.size / 64.0  # same pixel scale as the generator's flow head
        in_ch = self.k * 3 + (self.k - 1) * 2
        self.nets = nn.ModuleList(MultiScaleDiscriminator(in_ch, cfg.ndf, cfg.d_layers, 1) for _ in self.spacings)

    def clip_span(self, spacing_index: int) -> int:
        """Frames a clip must have for this spacing: (K-1)*s + 1."""
        return (self.k - 1) * self.spacings[spacing_index] + 1

    def forward(self, frames: torch.Tensor, flows: torch.Tensor, spacing_index: int) -> list[list[torch.Tensor]]:
        """frames (B, K*3, H, W), flows (B, (K-1)*2, H, W) in pixels."""
        return self.nets[spacing_index](torch.cat((frames, flows / self.flow_norm), 1))
