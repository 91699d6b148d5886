"""Optical-flow ground truth for the dataset: backward DIS flow plus a forward-backward confidence.

Convention (the dataset's): ``flow[t]`` is *backward* flow in pixels, ``frame[t](p) ~ frame[t-1](p + flow[t](p))``,
stored as ``(H, W, 2)`` with ``[..., 0] = dx`` and ``[..., 1] = dy`` -- the convention of models/warp.py ``warp``,
the one warp op, which training applies to these flows.
"""

from __future__ import annotations

import cv2
import numpy as np

from models.visualize import to_grey


class FlowEstimator:
    """Reusable DIS optical flow (OpenCV, preset MEDIUM); ``__call__`` = :func:`backward_flow`."""

    def __init__(self, *, fb_threshold_px: float = 1.0, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM):
        if fb_threshold_px <= 0:
            raise ValueError(f"fb_threshold_px must be > 0, got {fb_threshold_px}")
        self.fb_threshold_px = float(fb_threshold_px)
        self._dis = cv2.DISOpticalFlow_create(preset)
        self._grid: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None

    def _mesh(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        if self._grid is None or self._grid[0] != (h, w):
            gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            self._grid = ((h, w), gx, gy)
        return self._grid[1], self._grid[2]

    def __call__(self, prev_rgb: np.ndarray, cur_rgb: np.ndarray, *,
                 fb_threshold_px: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Backward flow ``cur -> prev`` (float32 (H, W, 2)) and its confidence (float32 (H, W) in [0, 1])."""
        thr = self.fb_threshold_px if fb_threshold_px is None else float(fb_threshold_px)
        if thr <= 0:
            raise ValueError(f"fb_threshold_px must be > 0, got {thr}")
        prev, cur = to_grey(prev_rgb), to_grey(cur_rgb)
        if prev.shape != cur.shape:
            raise ValueError(f"frames differ in size: {prev.shape} vs {cur.shape}")
        h, w = cur.shape
        # OpenCV: calc(I0, I1) gives f with I0(p) ~ I1(p + f(p)).
        bwd = self._dis.calc(cur, prev, None)   # cur(p)  ~ prev(p + bwd(p))
        fwd = self._dis.calc(prev, cur, None)   # prev(q) ~ cur(q + fwd(q))
        gx, gy = self._mesh(h, w)
        qx = gx + bwd[..., 0]
        qy = gy + bwd[..., 1]
        # Follow bwd to prev, then fwd back: a consistent pixel returns to where it started.
        fwd_at_q = cv2.remap(fwd, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        err = np.hypot(bwd[..., 0] + fwd_at_q[..., 0], bwd[..., 1] + fwd_at_q[..., 1])
        # Tolerance grows a little with the motion (large displacements are harder to match to the pixel).
        tol = thr + 0.05 * np.hypot(bwd[..., 0], bwd[..., 1])
        conf = np.clip(1.0 - (err - tol) / (2.0 * tol), 0.0, 1.0)  # 1 up to tol, 0 from 3 * tol
        # Pixels whose source lies outside the previous frame have no reliable correspondence.
        outside = (qx < -0.5) | (qx > w - 0.5) | (qy < -0.5) | (qy > h - 0.5)
        conf[outside] = 0.0
        return bwd.astype(np.float32, copy=False), conf.astype(np.float32, copy=False)


_DEFAULT: FlowEstimator | None = None


def backward_flow(prev_rgb: np.ndarray, cur_rgb: np.ndarray, *,
                  fb_threshold_px: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """DIS optical flow (OpenCV, preset MEDIUM) from cur to prev (so cur(p) ≈ prev(p + flow(p))), float32 (H,W,2),
    and a confidence float32 (H,W) in [0,1] from forward-backward consistency (1 where consistent, falling to 0
    at three times the threshold; 0 where the flow points outside the previous frame).

    Accepts RGB uint8 (H, W, 3) or grey uint8 (H, W) images of the same size.
    """
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = FlowEstimator()
    return _DEFAULT(prev_rgb, cur_rgb, fb_threshold_px=fb_threshold_px)
