"""Evaluation on held-out clips: generate from labels alone (zero history), compare with the real frames.

Figures (all over every generated frame of every selected clip):
    psnr          mean per-frame PSNR in dB of the generated vs the real frame (8-bit RGB)
    ssim          mean per-frame SSIM (OpenCV quality module, averaged over RGB)
    flicker       mean |out_t - warp(out_{t-1}, gt_flow_t)| in 8-bit grey levels over confident pixels
    flicker_real  the same figure for the real clip (the floor a perfect model would reach)
    frames        frames generated
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from models.checkpoint import load_generator
from models.visualize import VideoWriter, label_preview, side_by_side, to_uint8
from models.warp import warp

from .clips import ClipSource
from .dataset import Dataset

CONFIDENT = 0.5  # flow confidence above which a pixel counts for flicker


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.PSNR(a, b))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    score = cv2.quality.QualitySSIM_compute(a, b)[0]
    return float(np.mean(score[:3]))


def flicker(frames: torch.Tensor, gt_flow: torch.Tensor, conf: torch.Tensor) -> tuple[float, float]:
    """(sum of |f_t - warp(f_{t-1}, flow_t)| over confident pixels in 8-bit levels, pixel count).

    frames (T, 3, S, S) in [-1, 1]; gt_flow (T, 2, S, S); conf (T, 1, S, S).
    """
    if frames.shape[0] < 2:
        return 0.0, 0.0
    warped = warp(frames[:-1], gt_flow[1:])
    diff = (frames[1:] - warped).abs().mean(1, keepdim=True) * 127.5
    w = (conf[1:] > CONFIDENT).float()
    return float((diff * w).sum()), float(w.sum())


@torch.no_grad()
def evaluate(run: str | os.PathLike, data: str | os.PathLike, *, frame_range: tuple[int, int] | None = None,
             video: str | os.PathLike | None = None, max_frames: int | None = None, device: str = "cpu",
             progress: bool = True) -> dict:
    """Evaluate the generator of ``run`` on ``data``; optionally write a label | generated | real video."""
    from tqdm import tqdm

    G, meta = load_generator(run, device)
    cfg = G.cfg
    ds = Dataset(data)
    if ds.kind != cfg.kind:
        raise ValueError(f"{data} is a {ds.kind!r} dataset but the model in {run} is a {cfg.kind!r} model")
    source = ClipSource(ds, cfg.size, frame_range)
    clips = source.clips
    total = source.num_frames if max_frames is None else min(max_frames, source.num_frames)
    writer = VideoWriter(video, fps=ds.manifest.fps or 30.0) if video else None
    psnrs, ssims = [], []
    fl = [0.0, 0.0]
    fl_real = [0.0, 0.0]
    bar = tqdm(total=total, disable=not progress, unit="frame", desc="eval")
    try:
        for a, b in clips:
            b = min(b, a + total - len(psnrs))
            if b <= a:
                break
            clip = source.load(a, b)
            fake = G.rollout(clip["labels"].unsqueeze(0).to(device))[0][0].cpu()
            for t in range(b - a):
                gen = to_uint8(fake[t].numpy())
                real = to_uint8(clip["frames"][t].numpy())
                psnrs.append(psnr(gen, real))
                ssims.append(ssim(gen, real))
                if writer:
                    writer.write(side_by_side(label_preview(clip["labels"][t].numpy()), gen, real))
                bar.update(1)
            for acc, frames in ((fl, fake), (fl_real, clip["frames"])):
                s, n = flicker(frames, clip["flow"], clip["conf"])
                acc[0] += s
                acc[1] += n
    finally:
        bar.close()
        if writer:
            writer.close()
    if not psnrs:
        raise ValueError(f"{data}: no frames to evaluate")
    result = {
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean(ssims)),
        "flicker": fl[0] / fl[1] if fl[1] else 0.0,
        "flicker_real": fl_real[0] / fl_real[1] if fl_real[1] else 0.0,
        "frames": len(psnrs),
        "preset": cfg.name,
        "size": cfg.size,
    }
    if video:
        result["video"] = str(Path(video))
    return result


@torch.no_grad()
def mean_frame_baseline(data: str | os.PathLike, size: int, frame_range=None, reference_range=None) -> dict:
    """PSNR/SSIM of always predicting the mean frame (of ``reference_range``, default: the evaluated frames)."""
    ds = Dataset(data)
    ref = ClipSource(ds, size, reference_range or frame_range)
    mean = np.zeros((size, size, 3), np.float64)
    n = 0
    for a, b in ref.clips:
        for i in range(a, b):
            mean += ref.load(i, i + 1)["frames"][0].permute(1, 2, 0).numpy()
            n += 1
    mean_u8 = np.clip((mean / n + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    src = ClipSource(ds, size, frame_range)
    ps, ss = [], []
    for a, b in src.clips:
        for i in range(a, b):
            real = to_uint8(src.load(i, i + 1)["frames"][0].numpy())
            ps.append(psnr(mean_u8, real))
            ss.append(ssim(mean_u8, real))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "frames": len(ps)}
