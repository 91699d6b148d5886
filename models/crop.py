"""Where the person is: region masks and the person-centred crop, shared by training, evaluation and serving.

Two ideas live here, each in one place:

* **Regions** (``person_region``, ``head_region``): the pixels that belong to the person (or its head) in a frame,
  from its label map / landmarks. The background plate is estimated outside ``person_region``; ``posecast eval``
  scores PSNR/SSIM inside it, so a model that draws only the room cannot look good.
* **The person crop** (``CropBox``, ``BoxTracker``): a fixed-size window of the model frame that follows the person.
  Crop-aware generators (models/lite.py) draw only inside it and composite onto the plate. The window is an
  integer-pixel rectangle (a slice: training and serving crop exactly the same pixels), its position snapped to
  ``CROP_STRIDE`` pixels (the generator's input stride, so a move shifts its features by whole cells) and
  smoothed over time by the very tracker that the live session runs.

Coordinates follow models/render.py: landmarks are ``(K, 3)`` with x, y normalised to [0, 1] of the frame.
Imports numpy and cv2 only (loaded by the live server).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from models.landmarks import POSE_HEAD_LANDMARKS, POSE_LAYOUT, POSE_LIMB_NAMES, POSE_LIMBS

CROP_STRIDE = 4              # crop positions are multiples of this many pixels (lite's stride-4 input conv)
PERSON_MARGIN = 0.09         # person region: hull of the label map grown by this fraction of the frame side
HEAD_MARGIN = 0.05           # head region: hull of the head landmarks grown by this fraction of the frame side
FEATURE_RADIUS = 0.015      # face-feature region: disks this fraction of the frame side around eyes, nose, mouth
LIMB_WIDTH = 0.05           # limb region: a band this fraction of the frame side wide along arms, legs, hands, feet
VISIBLE = 0.5                # pose landmarks with visibility below this count as absent


def _grow(mask: np.ndarray, px: int) -> np.ndarray:
    if px <= 0:
        return mask
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1,) * 2))


def hull_mask(points_px: np.ndarray, height: int, width: int, grow_px: int) -> np.ndarray:
    """uint8 (H, W) mask, 1 inside the filled convex hull of ``points_px`` (N, 2) grown by ``grow_px``."""
    mask = np.zeros((height, width), np.uint8)
    pts = np.asarray(points_px, np.float32).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(1)]
    if len(pts):
        hull = cv2.convexHull(np.round(pts).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1)
    return _grow(mask, grow_px)


def person_region(label_map: np.ndarray, margin: float = PERSON_MARGIN) -> np.ndarray:
    """uint8 (H, W) mask of the person: the filled hull of the label map's drawn pixels, grown by ``margin`` x
    the frame side (so it covers the body where the skeleton is thin). Empty when nothing is drawn."""
    drawn = (np.asarray(label_map).max(0) > 0).astype(np.uint8)
    h, w = drawn.shape
    pts = cv2.findNonZero(drawn)
    if pts is None:
        return np.zeros((h, w), np.uint8)
    return hull_mask(pts.reshape(-1, 2), h, w, round(margin * min(h, w)))


def _head_points(kind: str, landmarks: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks, np.float32)
    if kind == "dance":
        head = lm[list(POSE_HEAD_LANDMARKS)]
        with np.errstate(invalid="ignore"):
            head = head[head[:, 2] >= VISIBLE]
        return head[:, :2]
    return lm[:, :2]  # a face model's frame is the head


def head_region(kind: str, landmarks: np.ndarray, height: int, width: int,
                margin: float = HEAD_MARGIN) -> np.ndarray:
    """uint8 (H, W) mask of the head: the hull of the head landmarks (pose 0-10; every face-mesh point) grown by
    ``margin`` x the frame side. Empty when no head landmark is present."""
    pts = _head_points(kind, landmarks) * np.float32((width, height)) - 0.5
    return hull_mask(pts, height, width, round(margin * min(height, width)))


# Arm, leg, hand and foot segments: the thin parts a regression blurs first and pose re-detection looks at.
LIMB_SEGMENTS: tuple[tuple[int, int], ...] = tuple(
    seg for seg, name in zip(POSE_LIMBS, POSE_LIMB_NAMES)
    if any(part in name for part in ("arm", "leg", "hand", "ankle", "heel")))


def limb_region(landmarks: np.ndarray, height: int, width: int, band: float = LIMB_WIDTH) -> np.ndarray:
    """uint8 (H, W) mask of a dance frame's limbs: a band ``band`` x the frame side wide along every arm, leg,
    hand and foot segment whose two ends are present (visibility >= VISIBLE). Empty when none is."""
    lm = np.asarray(landmarks, np.float32)
    mask = np.zeros((height, width), np.uint8)
    pts = lm[:, :2] * np.float32((width, height)) - 0.5
    with np.errstate(invalid="ignore"):
        ok = (lm[:, 2] >= VISIBLE) & np.isfinite(pts).all(1)
    thick = max(1, round(band * min(height, width)))
    for a, b in LIMB_SEGMENTS:
        if ok[a] and ok[b]:
            cv2.line(mask, tuple(np.round(pts[a]).astype(int).tolist()), tuple(np.round(pts[b]).astype(int).tolist()),
                     1, thick, cv2.LINE_8)
    return mask


# Eyes, nose and mouth of the pose layout: a few pixels that tell which way the person faces (pose re-detection
# reads the body mirrored when a face has no features).
FACE_FEATURES: tuple[int, ...] = tuple(POSE_LAYOUT.index(n) for n in
                                       ("nose", "left_eye", "right_eye", "mouth_left", "mouth_right"))


def feature_region(landmarks: np.ndarray, height: int, width: int, radius: float = FEATURE_RADIUS) -> np.ndarray:
    """uint8 (H, W) mask of a dance frame's face features: a disk of ``radius`` x the frame side around each
    visible eye, the nose and the mouth corners. Empty when none is visible."""
    lm = np.asarray(landmarks, np.float32)
    mask = np.zeros((height, width), np.uint8)
    r = max(1, round(radius * min(height, width)))
    for i in FACE_FEATURES:
        x, y, v = lm[i]
        if v >= VISIBLE and np.isfinite(x) and np.isfinite(y):
            cv2.circle(mask, (round(float(x) * width - 0.5), round(float(y) * height - 0.5)), r, 1, -1)
    return mask


# -- the person crop ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CropBox:
    """An integer-pixel window ``[y0, y0 + height) x [x0, x0 + width)`` of a frame."""

    x0: int
    y0: int
    height: int
    width: int

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.height), slice(self.x0, self.x0 + self.width)

    def to_crop(self, landmarks: np.ndarray, frame_size: int) -> np.ndarray:
        """Landmarks normalised to the frame -> normalised to this crop (same pixel convention as the renderer)."""
        out = np.array(landmarks, np.float32, copy=True)
        out[:, 0] = (out[:, 0] * frame_size - self.x0) / self.width
        out[:, 1] = (out[:, 1] * frame_size - self.y0) / self.height
        return out

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The window of an (..., H, W) array (a view)."""
        ys, xs = self.slices()
        return image[..., ys, xs]


def person_centre(landmarks: np.ndarray) -> np.ndarray | None:
    """(x, y) normalised centre of a pose: the middle of the present landmarks' bounding box; None when none is
    present. The bounding box (not the mean) keeps the crop steady while limbs swing."""
    lm = np.asarray(landmarks, np.float32)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(lm[:, :2]).all(1) & ((lm[:, 2] >= VISIBLE) if lm.shape[1] > 2 else True)
    if not ok.any():
        return None
    pts = lm[ok, :2]
    return (pts.min(0) + pts.max(0)) * 0.5


class BoxTracker:
    """Causal crop placement: ``update(landmarks) -> CropBox`` for one stream of frames (a training clip or a
    live session). The centre follows the person with an exponential moving average (``smoothing`` = weight of
    the old position), the box is snapped to ``CROP_STRIDE`` and clamped inside the frame. Frames without a
    person keep the last box (the frame centre before the first one)."""

    def __init__(self, frame_size: int, crop_height: int, crop_width: int, smoothing: float = 0.6):
        if not (0 < crop_height <= frame_size and 0 < crop_width <= frame_size):
            raise ValueError(f"crop {crop_height}x{crop_width} must fit the {frame_size}px frame")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.frame_size, self.crop_height, self.crop_width = frame_size, crop_height, crop_width
        self.smoothing = smoothing
        self.reset()

    def reset(self) -> None:
        self._centre: np.ndarray | None = None  # smoothed centre in frame pixels

    def _box(self, centre_px: np.ndarray) -> CropBox:
        S, h, w = self.frame_size, self.crop_height, self.crop_width
        x0 = int(np.clip(round((centre_px[0] - w / 2) / CROP_STRIDE) * CROP_STRIDE, 0, S - w))
        y0 = int(np.clip(round((centre_px[1] - h / 2) / CROP_STRIDE) * CROP_STRIDE, 0, S - h))
        return CropBox(x0, y0, h, w)

    def update(self, landmarks: np.ndarray | None) -> CropBox:
        c = None if landmarks is None else person_centre(landmarks)
        if c is not None:
            c = c.astype(np.float64) * self.frame_size
            self._centre = c if self._centre is None else self.smoothing * self._centre + (1 - self.smoothing) * c
        return self._box(self._centre if self._centre is not None else np.full(2, self.frame_size / 2.0))


def head_box(landmarks: np.ndarray | None, window: CropBox, frame_size: int, side: int) -> tuple[int, int]:
    """(x0, y0) in ``window`` pixels of the ``side`` x ``side`` head window: centred on the visible head landmarks
    (pose 0-10), clamped inside ``window``; at its top centre when no head landmark is visible. Stateless, so the
    live session and training place it identically."""
    pts = None if landmarks is None else _head_points("dance", landmarks)
    pts = None if pts is None else pts[np.isfinite(pts).all(1)]
    if pts is None or not len(pts):
        cx, cy = window.width / 2.0, side / 2.0
    else:
        c = pts.mean(0) * frame_size
        cx, cy = c[0] - window.x0, c[1] - window.y0
    x0 = int(np.clip(round(cx - side / 2.0), 0, window.width - side))
    y0 = int(np.clip(round(cy - side / 2.0), 0, window.height - side))
    return x0, y0


def typical_crop(frame_size: int) -> tuple[int, int]:
    """(height, width) of the person crop of a full-body dancer filling most of a frame (the built-in synthetic
    dancer's: the frame's height x 13/16 of its width): what benchmarks of an untrained crop model use."""
    return frame_size, (frame_size * 13 // 16) // 16 * 16


def crop_size_for(landmarks: np.ndarray, frame_size: int, aspect: float = 0.75, coverage: float = 98.0,
                  margin: float = 0.12, multiple: int = 16) -> tuple[int, int]:
    """(height, width) in pixels of a person crop that holds the person in ``coverage`` % of the frames of
    ``landmarks`` (N, K, 3), with ``margin`` to spare on each side, width = ``aspect`` x height (wider where the
    height is capped at the frame), rounded up to ``multiple`` and capped at the frame."""
    lm = np.asarray(landmarks, np.float32)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(lm[..., :2]).all(-1) & (lm[..., 2] >= VISIBLE)
    x = np.where(ok, lm[..., 0], np.nan)
    y = np.where(ok, lm[..., 1], np.nan)
    seen = ok.any(1)
    if not seen.any():
        raise ValueError("no frame has a visible landmark: cannot size the person crop")
    with np.errstate(invalid="ignore"):
        h = np.nanmax(y[seen], 1) - np.nanmin(y[seen], 1)
        w = np.nanmax(x[seen], 1) - np.nanmin(x[seen], 1)
    need_h = float(np.percentile(h, coverage)) * (1 + 2 * margin) * frame_size
    need_w = float(np.percentile(w, coverage)) * (1 + 2 * margin) * frame_size
    up = lambda v: min(frame_size, int(np.ceil(v / multiple) * multiple))  # noqa: E731
    height = up(max(need_h, need_w / aspect))
    return height, up(max(need_w, height * aspect))  # a frame-capped height does not narrow the window
