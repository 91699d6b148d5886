"""Two synthetic dancers (different looks) in one wide video, crossing paths: footage with known tracks.

Each dancer is rendered by :class:`trainer.synth.DancerRenderer` with its own appearance seed and motion seed,
cut out by its part-id map and pasted onto one wide room at a horizontal offset that moves over time; dancer 0
walks right, dancer 1 walks left, and they cross in the middle of the video (dancer 1 in front). With
``side_by_side`` (pixels between their tiles' left edges) they walk together instead, side by side, left to right,
close enough (a small gap) for MediaPipe's single-person model to take the two for one. ``truth`` (a dict) receives
``masks``, each frame's true person mask (both dancers), and ``room``, the empty room.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from models.motion import DanceMotion, pose_landmarks
from trainer.synth import DancerRenderer


def render_duet(path: Path, *, frames: int = 60, size: int = 160, width_factor: float = 2.5, fps: float = 12.0,
                seeds=((11, 3), (12, 8)), side_by_side: float | None = None, truth: dict | None = None) -> np.ndarray:
    """Write the video; return the ground-truth landmarks (2, frames, 33, 3) normalised to the wide frame."""
    H, W = size, int(round(size * width_factor))
    dancers = [(DanceMotion(seed=m, fps=fps), DancerRenderer(size, a)) for m, a in seeds]
    room = cv2.resize(dancers[0][1].background, (W, H), interpolation=cv2.INTER_LINEAR)
    room = np.clip(room + 0.5, 0, 255).astype(np.uint8)
    gt = np.zeros((2, frames, 33, 3), np.float32)
    if truth is not None:
        truth.update(room=room.copy(), masks=[])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for i in range(frames):
        u = i / max(frames - 1, 1)
        if side_by_side is None:
            offsets = [(0.05 + 0.9 * u) * (W - size), (0.95 - 0.9 * u) * (W - size)]   # left edge, pixels
        else:
            left = (0.05 + 0.9 * u) * (W - size - side_by_side)
            offsets = [left, left + side_by_side]
        canvas = room.copy()
        everyone = np.zeros((H, W), bool)
        for k, ((motion, renderer), dx) in enumerate(zip(dancers, offsets)):
            pose = motion.pose(i)
            res = renderer.render(pose)
            x0 = int(round(dx))
            mask = res.ids > 0
            view = canvas[:, x0:x0 + size]
            view[mask] = res.frame[mask]
            everyone[:, x0:x0 + size] |= mask
            lm = pose_landmarks(pose)
            gt[k, i, :, 0] = (lm[:, 0] * size + x0) / W
            gt[k, i, :, 1] = lm[:, 1]
            gt[k, i, :, 2] = lm[:, 2]
        writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        if truth is not None:
            truth["masks"].append(everyone)
    writer.release()
    return gt
