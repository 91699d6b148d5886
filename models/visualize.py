"""Turning tensors and label maps into viewable RGB images and videos (eval, capture, demo)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


def to_grey(img: np.ndarray) -> np.ndarray:
    """A uint8 RGB (H, W, 3) or grey (H, W) image as a contiguous grey one (a grey input comes back as it is, when
    contiguous: copy it to keep it)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {img.dtype}")
    if img.ndim == 2:
        return np.ascontiguousarray(img)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"expected an RGB (H, W, 3) or grey (H, W) image, got shape {img.shape}")


def label_preview(labels: np.ndarray) -> np.ndarray:
    """One frame's label map (C, H, W) in [0, 1] -> uint8 RGB (H, W, 3).

    3-channel maps (pose) are shown as they are; other maps show channel 0 (edges) in white over the
    remaining channels' maximum (distance transforms) in blue.
    """
    labels = np.asarray(labels, np.float32)
    if labels.shape[0] == 3:
        rgb = labels.transpose(1, 2, 0)
    else:
        edges = labels[0]
        rest = labels[1:].max(axis=0) if labels.shape[0] > 1 else np.zeros_like(edges)
        rgb = np.stack([np.maximum(edges, 0.15 * rest), np.maximum(edges, 0.3 * rest), np.maximum(edges, 0.6 * rest)], -1)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def to_uint8(frame: np.ndarray, out: np.ndarray | None = None, scratch: tuple | None = None) -> np.ndarray:
    """Generator output (3, H, W) in [-1, 1] -> uint8 RGB (H, W, 3): clip((x + 1) * 127.5 + 0.5, 0, 255), truncated.

    Works on contiguous planes and interleaves once (10x faster than on the transpose). The live server passes a
    preallocated ``out`` (H, W, 3) uint8 and ``scratch`` = (float32 (3, H, W), uint8 (3, H, W)) to allocate nothing.
    """
    frame = np.asarray(frame, np.float32)
    f, u = scratch if scratch is not None else (np.empty(frame.shape, np.float32), np.empty(frame.shape, np.uint8))
    np.add(frame, np.float32(1.0), out=f)
    np.multiply(f, np.float32(127.5), out=f)
    np.add(f, np.float32(0.5), out=f)
    np.clip(f, np.float32(0.0), np.float32(255.0), out=f)
    np.copyto(u, f, casting="unsafe")
    if out is None:
        out = np.empty((frame.shape[1], frame.shape[2], 3), np.uint8)
    return cv2.merge((u[0], u[1], u[2]), dst=out)


def side_by_side(*images: np.ndarray, gap: int = 2) -> np.ndarray:
    """Concatenate RGB images of equal height left to right with a thin dark gap."""
    h = images[0].shape[0]
    parts = []
    for i, im in enumerate(images):
        if im.shape[0] != h:
            im = cv2.resize(im, (round(im.shape[1] * h / im.shape[0]), h), interpolation=cv2.INTER_AREA)
        if i:
            parts.append(np.zeros((h, gap, 3), np.uint8))
        parts.append(im)
    return np.concatenate(parts, axis=1)


class VideoWriter:
    """mp4 writer for RGB frames; opened lazily on the first frame (its size fixes the video's)."""

    def __init__(self, path: str | os.PathLike, fps: float = 30.0):
        self.path = Path(path)
        self.fps = float(fps)
        self._w: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        if self._w is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = rgb.shape[:2]
            self._w = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._w.isOpened():
                raise OSError(f"cannot open {self.path} for writing (OpenCV mp4v)")
        self._w.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self._w is not None:
            self._w.release()
            self._w = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
