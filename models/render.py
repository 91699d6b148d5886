"""Landmark -> label-map renderers: THE single implementation used by training and the live server.

Pure (no global state), deterministic (same input -> bit-identical output) and tolerant of
missing landmarks (NaN rows, low visibility, or a whole NaN array -> all-zero map).  Imports only
numpy and cv2 (no torch, no mediapipe).

Coordinates: landmarks are float ``(K, 3)`` with x, y normalised to [0, 1] of the target image.
Pixel ``i`` covers ``[i/W, (i+1)/W)`` (mediapipe's ``floor(x * W)`` convention), so its centre is
at ``x = (i + 0.5) / W`` and a landmark maps to the continuous pixel coordinate ``x * W - 0.5``.
Drawing uses cv2's fixed-point ``shift`` (1/16 px) and anti-aliasing.  Landmarks farther than
4 image sizes outside the frame are treated as missing (keeps cv2's fixed-point maths in range).

Label kinds:
  * ``"dance"``: 3-channel RGB colour-coded limb map from MediaPipe Pose (33 landmarks).
  * ``"face"``:  1 edge-map channel + one distance-transform channel per ``FACE_CONTOURS`` group
                 from MediaPipe Face Mesh (468 or 478 landmarks; irises ignored).
"""

from __future__ import annotations

import operator
from typing import Callable, NamedTuple

import cv2
import numpy as np

from models.landmarks import (
    FACE_CONTOURS,
    FACE_NUM_LANDMARKS,
    KINDS,
    POSE_DERIVED_POINTS,
    POSE_HEAD_LANDMARKS,
    POSE_JOINT_COLORS,
    POSE_LIMB_COLORS,
    POSE_LIMBS,
    POSE_NUM_LANDMARKS,
    POSE_NUM_POINTS,
    layout_of,
    validate_landmarks,
)

__all__ = [
    "LABEL_KINDS",
    "label_channels",
    "render_pose",
    "render_face",
    "render_labels",
    "check_landmarks",
    "pose_line_thickness",
    "pose_joint_radius",
    "face_line_thickness",
    "face_distance_scale",
]

LABEL_KINDS = KINDS  # one label kind per landmark layout (models/landmarks.py LAYOUTS)

_SHIFT = 4                      # cv2 fixed-point fractional bits (1/16 px)
_ONE = float(1 << _SHIFT)
_COORD_LIMIT = 4.0              # normalised coords outside [-4, 5] count as missing
_FACE_DIST_FRACTION = 1.0 / 8.0  # distance channel falls to 0 at min(H, W) / 8 px from the curve

_POSE_LIMB_A = np.array([a for a, _ in POSE_LIMBS], dtype=np.intp)
_POSE_LIMB_B = np.array([b for _, b in POSE_LIMBS], dtype=np.intp)
_POSE_HEAD = np.array(POSE_HEAD_LANDMARKS, dtype=np.intp)
_FACE_POLYLINES = tuple(
    tuple(np.array(line, dtype=np.intp) for line in lines) for lines in FACE_CONTOURS.values())
_FACE_CHANNELS = 1 + len(FACE_CONTOURS)


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------

def pose_line_thickness(height: int, width: int) -> int:
    """Limb line width in px: 3 px at 512, 2 px at 256, never below 1 px."""
    return max(1, int(round(3.0 * min(height, width) / 512.0)))


def pose_joint_radius(height: int, width: int) -> float:
    """Joint disk radius in px (slightly wider than the limb line): 2.0 at 256, 2.75 at 512."""
    return 0.75 * pose_line_thickness(height, width) + 0.5


def face_line_thickness(height: int, width: int) -> int:
    """Face edge-map line width in px: 1 px at 256, scaled with the image size."""
    return max(1, int(round(min(height, width) / 256.0)))


def face_distance_scale(height: int, width: int) -> float:
    """Distance (px) at which a face distance channel reaches 0."""
    return max(1.0, _FACE_DIST_FRACTION * min(height, width))


def _check_size(height, width) -> tuple[int, int]:
    try:
        h, w = operator.index(height), operator.index(width)
    except TypeError:
        raise ValueError(f"height and width must be integers, got {height!r} x {width!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"height and width must be >= 1, got {h} x {w}")
    return h, w


def _prepare_out(out, channels: int, h: int, w: int) -> np.ndarray:
    if out is None:
        return np.empty((channels, h, w), dtype=np.float32)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (channels, h, w):
        got = (f"{type(out).__name__} {getattr(out, 'dtype', '?')} {getattr(out, 'shape', '?')}")
        raise ValueError(f"out must be a float32 array of shape {(channels, h, w)}, got {got}")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    return out


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def check_landmarks(kind: str, landmarks) -> np.ndarray:
    """Validate a landmark array for ``kind`` and return it as float32 ``(K, 3)``.

    The one validator (``models.landmarks.validate_landmarks`` against ``kind``'s layout: NaN (missing) values
    are allowed, +-inf is not), plus: ``None`` means "no detection" and returns an all-NaN array of the
    layout's default K.  The returned array may share memory with the input: never modify it in place.
    Raises ValueError (LandmarkError) naming the problem.
    """
    layout = layout_of(kind)
    if landmarks is None:
        return np.full((layout.num_landmarks, 3), np.nan, dtype=np.float32)
    return validate_landmarks(landmarks, layout)


def _to_fixed(pts: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Continuous pixel coords (N, 2) -> cv2 fixed-point int32; invalid rows become 0."""
    return np.rint(np.where(valid[:, None], pts, 0.0) * _ONE).astype(np.int32)


def _pixel_coords(xy: np.ndarray, h: int, w: int) -> np.ndarray:
    pts = xy.astype(np.float64)
    pts[:, 0] *= w
    pts[:, 1] *= h
    pts -= 0.5
    return pts


def _in_range(pts: np.ndarray, h: int, w: int) -> np.ndarray:
    """Finite and within _COORD_LIMIT image sizes of the frame (pixel coordinates)."""
    lim = np.array([w, h], dtype=np.float64) * _COORD_LIMIT
    with np.errstate(invalid="ignore"):
        return np.all((pts >= -lim) & (pts <= lim + np.array([w, h])), axis=1)


# --------------------------------------------------------------------------------------------
# Pose ("dance")
# --------------------------------------------------------------------------------------------

def render_pose(landmarks, height: int, width: int, *, visibility_threshold: float = 0.5,
                rng: np.random.Generator | None = None, limb_drop_prob: float = 0.0,
                head_jitter_px: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
    """Colour-coded limb map, float32 ``(3, H, W)`` RGB in [0, 1].

    Each ``POSE_LIMBS`` segment is an anti-aliased line in its ``POSE_LIMB_COLORS`` colour, drawn
    only if both end points are finite and have visibility >= ``visibility_threshold`` (the neck
    point needs both shoulders).  Disks (``POSE_JOINT_COLORS``) are drawn at the end points of the
    drawn limbs, so a missing landmark removes exactly its limbs.

    Augmentation (training; only if ``rng`` is given, draws from ``rng`` only for the enabled
    augmentations): each limb is dropped with probability ``limb_drop_prob``; head landmarks
    (0-10) get Gaussian noise with std ``head_jitter_px`` pixels.
    ``out``: optional preallocated float32 ``(3, H, W)`` array that is filled and returned.
    """
    lm = check_landmarks("dance", landmarks)
    h, w = _check_size(height, width)
    out = _prepare_out(out, 3, h, w)

    pts = np.empty((POSE_NUM_POINTS, 2), dtype=np.float64)
    pts[:POSE_NUM_LANDMARKS] = _pixel_coords(lm[:, :2], h, w)
    with np.errstate(invalid="ignore"):
        present = np.zeros(POSE_NUM_POINTS, dtype=bool)
        present[:POSE_NUM_LANDMARKS] = lm[:, 2] >= visibility_threshold  # NaN -> False

    keep_limb = None
    if rng is not None:
        if head_jitter_px > 0:
            pts[_POSE_HEAD] += rng.normal(0.0, float(head_jitter_px), size=(_POSE_HEAD.size, 2))
        if limb_drop_prob > 0:
            keep_limb = rng.random(len(POSE_LIMBS)) >= limb_drop_prob

    for idx, sources in POSE_DERIVED_POINTS.items():
        src = list(sources)
        pts[idx] = pts[src].mean(axis=0)
        present[idx] = bool(present[src].all())
    present &= _in_range(pts, h, w)

    draw = present[_POSE_LIMB_A] & present[_POSE_LIMB_B]
    if keep_limb is not None:
        draw &= keep_limb

    canvas = np.zeros((h, w, 3), dtype=np.uint8)
    if draw.any():
        ipts = _to_fixed(pts, present).tolist()
        thickness = pose_line_thickness(h, w)
        joints: set[int] = set()
        for i in np.flatnonzero(draw).tolist():
            a, b = POSE_LIMBS[i]
            cv2.line(canvas, ipts[a], ipts[b], POSE_LIMB_COLORS[i], thickness, cv2.LINE_AA, _SHIFT)
            joints.add(a)
            joints.add(b)
        radius = int(round(pose_joint_radius(h, w) * _ONE))
        for j in sorted(joints):
            cv2.circle(canvas, ipts[j], radius, POSE_JOINT_COLORS[j], -1, cv2.LINE_AA, _SHIFT)
    np.divide(canvas.transpose(2, 0, 1), np.float32(255.0), out=out)
    return out


# --------------------------------------------------------------------------------------------
# Face
# --------------------------------------------------------------------------------------------

def _group_segments(lines: tuple[np.ndarray, ...], valid: np.ndarray,
                    ipts: np.ndarray) -> list[np.ndarray]:
    """Polylines of one group as cv2 point arrays, split at missing points (runs of >= 2)."""
    segs = []
    for line in lines:
        ok = valid[line]
        if ok.all():
            segs.append(ipts[line])
            continue
        # split into runs of consecutive valid points
        edges = np.diff(np.concatenate(([0], ok.view(np.int8), [0])))
        for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            if e - s >= 2:
                segs.append(ipts[line[s:e]])
    return segs


def render_face(landmarks, height: int, width: int, *, rng: np.random.Generator | None = None,
                jitter_px: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
    """Face label map, float32 ``(1 + len(FACE_CONTOURS), H, W)`` in [0, 1].

    Channel 0: edge map of all ``FACE_CONTOURS`` polylines (anti-aliased, ~1 px at 256).
    Channel 1 + g: distance map of group g, ``1 - clip(d / D, 0, 1)`` with d the distance (px) to
    the group's curves and ``D = min(H, W) / 8`` -> 1 on the curve, 0 far away; a group with no
    drawable segment gives an all-zero channel.  Segments with a missing (NaN) end point are
    skipped.  468 and 478 (refined) layouts give identical maps (irises are not used).

    Augmentation (only if ``rng`` is given and ``jitter_px > 0``): independent Gaussian noise with
    std ``jitter_px`` pixels on every landmark.  ``out``: optional preallocated float32 array.
    """
    lm = check_landmarks("face", landmarks)[:FACE_NUM_LANDMARKS]
    h, w = _check_size(height, width)
    out = _prepare_out(out, _FACE_CHANNELS, h, w)

    pts = _pixel_coords(lm[:, :2], h, w)
    if rng is not None and jitter_px > 0:
        pts += rng.normal(0.0, float(jitter_px), size=pts.shape)
    valid = _in_range(pts, h, w)  # NaN -> False

    edges = np.zeros((h, w), dtype=np.uint8)
    if not valid.any():
        out.fill(0.0)
        return out

    ipts = _to_fixed(pts, valid)
    thickness = face_line_thickness(h, w)
    inv_scale = np.float32(-1.0 / face_distance_scale(h, w))
    mask = np.empty((h, w), dtype=np.uint8)
    for g, lines in enumerate(_FACE_POLYLINES):
        segs = _group_segments(lines, valid, ipts)
        chan = out[1 + g]
        if not segs:
            chan.fill(0.0)
            continue
        cv2.polylines(edges, segs, False, 255, thickness, cv2.LINE_AA, _SHIFT)
        mask.fill(255)
        cv2.polylines(mask, segs, False, 0, 1, cv2.LINE_8, _SHIFT)
        dist = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_5)
        # 1 - d / D, clipped to [0, 1]
        np.multiply(dist, inv_scale, out=dist)
        dist += np.float32(1.0)
        np.maximum(dist, np.float32(0.0), out=chan)
    np.divide(edges, np.float32(255.0), out=out[0])
    return out


# --------------------------------------------------------------------------------------------
# Registry / dispatch
# --------------------------------------------------------------------------------------------

class _KindSpec(NamedTuple):
    channels: int
    render: Callable[..., np.ndarray]


_KINDS: dict[str, _KindSpec] = {
    "dance": _KindSpec(3, render_pose),
    "face": _KindSpec(_FACE_CHANNELS, render_face),
}
assert tuple(_KINDS) == LABEL_KINDS


def _kind_spec(kind: str) -> _KindSpec:
    layout_of(kind)  # unknown kinds: the one error naming the known ones
    return _KINDS[kind]


def label_channels(kind: str) -> int:
    """Number of label-map channels for ``kind`` (dance: 3, face: 1 + number of contour groups)."""
    return _kind_spec(kind).channels


def render_labels(kind: str, landmarks, height: int, width: int, **augment) -> np.ndarray:
    """Render the label map of ``kind``; keyword arguments go to that kind's renderer."""
    return _kind_spec(kind).render(landmarks, height, width, **augment)
