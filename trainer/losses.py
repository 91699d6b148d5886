"""Losses as small pure functions (vid2vid / pix2pixHD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.warp import warp

# A discriminator output: per scale, a list of features with the patch logits last.
DOutput = list[list[torch.Tensor]]


def flat_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) -> (B*T, ...): a batch of clips as one batch of frames."""
    return x.reshape(-1, *x.shape[2:])


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


def temporal_change_loss(fake: torch.Tensor, real: torch.Tensor, flow: torch.Tensor, conf: torch.Tensor,
                         threshold: float = 0.5) -> torch.Tensor:
    """Mean |(f_t - warp(f_{t-1}, flow_t)) - (r_t - warp(r_{t-1}, flow_t))| over the pixels whose flow confidence
    is above ``threshold``: the generated clip's frame-to-frame change along the true motion matched to the real
    clip's (what ``posecast eval`` reports as flicker), so noise that moves with no motion costs, and real change
    does not. fake, real (B, T, 3, H, W); flow (B, T, 2, H, W) backward flow t -> t-1; conf (B, T, 1, H, W)."""
    if fake.shape[1] < 2:
        return fake.new_zeros(())
    flat = flat_frames
    f_now, r_now, fl = flat(fake[:, 1:]), flat(real[:, 1:]), flat(flow[:, 1:])
    change_fake = f_now - warp(flat(fake[:, :-1]), fl)
    change_real = r_now - warp(flat(real[:, :-1]), fl)
    return masked_l1(change_fake, change_real, (flat(conf[:, 1:]) > threshold).float())
