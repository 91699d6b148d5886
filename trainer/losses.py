"""Losses as small pure functions (vid2vid / pix2pixHD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# A discriminator output: per scale, a list of features with the patch logits last.
DOutput = list[list[torch.Tensor]]


def d_loss(real: DOutput, fake: DOutput, mode: str = "lsgan") -> torch.Tensor:
    """Discriminator loss, averaged over scales. lsgan: (D(x)-1)^2 + D(G)^2; hinge: relu(1-D(x)) + relu(1+D(G))."""
    total = 0.0
    for r, f in zip(real, fake):
        r, f = r[-1], f[-1]
        if mode == "lsgan":
            total = total + 0.5 * (F.mse_loss(r, torch.ones_like(r)) + F.mse_loss(f, torch.zeros_like(f)))
        elif mode == "hinge":
            total = total + F.relu(1 - r).mean() + F.relu(1 + f).mean()
        else:
            raise ValueError(f"unknown GAN mode {mode!r}")
    return total / len(real)


def g_adv_loss(fake: DOutput, mode: str = "lsgan") -> torch.Tensor:
    """Generator adversarial loss, averaged over scales."""
    total = 0.0
    for f in fake:
        f = f[-1]
        total = total + (F.mse_loss(f, torch.ones_like(f)) if mode == "lsgan" else -f.mean())
    return total / len(fake)


def feature_matching_loss(fake: DOutput, real: DOutput) -> torch.Tensor:
    """L1 between D features of generated and real inputs (real detached), averaged over layers and scales."""
    total, n = 0.0, 0
    for fs, rs in zip(fake, real):
        for f, r in zip(fs[:-1], rs[:-1]):
            total = total + F.l1_loss(f, r.detach())
            n += 1
    return total / max(n, 1)


def masked_l1(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean |a-b| over the pixels where weight > 0, weighted; weight broadcasts over channels."""
    w = weight.expand_as(a)
    return ((a - b).abs() * w).sum() / w.sum().clamp_min(1.0)
