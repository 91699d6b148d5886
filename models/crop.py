"""Where the person is: region masks, shared by training, evaluation and serving.

**Regions** (``person_region``, ``head_region``, ``limb_region``, ``feature_region``): the pixels that belong to the
person (or its head, limbs, face features) in a frame, from its label map / landmarks. The background plate is
estimated outside ``person_region``; ``posecast eval`` scores PSNR/SSIM inside it, so a model that draws only the
room cannot look good; the training losses weight the others up. Where the generator *draws* (its window that
follows the person, and the head window inside it) is models/window.py.

Coordinates follow models/render.py: landmarks are ``(K, 3)`` with x, y normalised to [0, 1] of the frame.
Imports numpy and cv2 only (loaded by the live server).
"""

from __future__ import annotations


import cv2
import numpy as np

from models.landmarks import (FACE_CONTOURS, FACE_NUM_LANDMARKS, POSE_HEAD_LANDMARKS, POSE_LAYOUT, POSE_LIMB_NAMES,
                              POSE_LIMBS)

PERSON_MARGIN = 0.09         # person region: hull of the label map grown by this fraction of the frame side
HEAD_MARGIN = 0.05           # head region: hull of the head landmarks grown by this fraction of the frame side
FEATURE_RADIUS = 0.015      # face-feature region: disks this fraction of the frame side around eyes, nose, mouth
LIMB_WIDTH = 0.05           # limb region: a band this fraction of the frame side wide along arms, legs, hands, feet
VISIBLE = 0.5                # pose landmarks with visibility below this count as absent


_ANGLES = np.linspace(0, 2 * np.pi, 64, endpoint=False)
_DISK = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], 1)   # a 64-gon on the unit circle


def hull_mask(points_px: np.ndarray, height: int, width: int, grow_px: int) -> np.ndarray:
    """uint8 (H, W) mask, 1 inside the filled convex hull of ``points_px`` (N, 2) grown by ``grow_px``.

    A convex hull grown by a disk is the convex hull of a disk around each of its corners (their Minkowski sum),
    so the grown hull is drawn as one polygon (the disk a 64-gon: within 0.0012 x ``grow_px`` of the circle)
    instead of dilating the filled hull with a (2r+1)^2 kernel: 0.17 ms instead of 23 ms at 512 px, the same pixels
    but for a few on the border (a training data loader computes three of these a frame)."""
    mask = np.zeros((height, width), np.uint8)
    pts = np.asarray(points_px, np.float32).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(1)]
    if len(pts):
        hull = cv2.convexHull(np.round(pts).astype(np.int32)).reshape(-1, 2)
        if grow_px > 0:
            corners = hull[:, None, :] + grow_px * _DISK[None]
            hull = cv2.convexHull(np.round(corners.reshape(-1, 2)).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1)
    return mask


def person_region(label_map: np.ndarray, margin: float = PERSON_MARGIN) -> np.ndarray:
    """uint8 (H, W) mask of the person: the filled hull of the label map's drawn pixels, grown by ``margin`` x
    the frame side (so it covers the body where the skeleton is thin). Empty when nothing is drawn."""
    drawn = (np.asarray(label_map).max(0) > 0).astype(np.uint8)
    h, w = drawn.shape
    pts = cv2.findNonZero(drawn)
    if pts is None:
        return np.zeros((h, w), np.uint8)
    return hull_mask(pts.reshape(-1, 2), h, w, round(margin * min(h, w)))


def head_points(kind: str, landmarks: np.ndarray) -> np.ndarray:
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
    pts = head_points(kind, landmarks) * np.float32((width, height)) - 0.5
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


# Face-mesh groups whose pixels say most about a face's expression: the eyes and the mouth.
FACE_FEATURE_GROUPS: tuple[str, ...] = ("left_eye", "right_eye", "lips_outer")
FACE_FEATURE_POINTS: dict[str, tuple[int, ...]] = {
    g: tuple(sorted({i for line in FACE_CONTOURS[g] for i in line})) for g in FACE_FEATURE_GROUPS}
FACE_DETAIL_POINTS: tuple[int, ...] = tuple(sorted({i for pts in FACE_FEATURE_POINTS.values() for i in pts}))


def feature_region(landmarks: np.ndarray, height: int, width: int, radius: float = FEATURE_RADIUS,
                   kind: str = "dance") -> np.ndarray:
    """uint8 (H, W) mask of a frame's face features. dance: a disk of ``radius`` x the frame side around each
    visible eye, the nose and the mouth corners; face: the hull of each eye and of the lips, grown by ``radius``
    x the side. Empty when none is visible."""
    lm = np.asarray(landmarks, np.float32)
    if kind == "face":
        mask = np.zeros((height, width), np.uint8)
        for pts in FACE_FEATURE_POINTS.values():
            p = lm[list(pts), :2] if len(lm) >= FACE_NUM_LANDMARKS else np.empty((0, 2), np.float32)
            p = p[np.isfinite(p).all(1)]
            if len(p) >= 3:
                mask |= hull_mask(p * np.float32((width, height)) - 0.5, height, width,
                                  round(radius * min(height, width)))
        return mask
    mask = np.zeros((height, width), np.uint8)
    r = max(1, round(radius * min(height, width)))
    for i in FACE_FEATURES:
        x, y, v = lm[i]
        if v >= VISIBLE and np.isfinite(x) and np.isfinite(y):
            cv2.circle(mask, (round(float(x) * width - 0.5), round(float(y) * height - 0.5)), r, 1, -1)
    return mask


def face_region(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W) mask of a face frame's face: the filled convex hull of its face-mesh points (the 468 mesh
    points; the irises of a 478-point mesh lie inside). Empty without finite points."""
    lm = np.asarray(landmarks, np.float32)[:FACE_NUM_LANDMARKS, :2]
    lm = lm[np.isfinite(lm).all(1)]
    mask = np.zeros((height, width), np.uint8)
    if len(lm) >= 3:
        pts = np.round(lm * np.float32((width, height)) - 0.5).astype(np.int32)
        cv2.fillConvexPoly(mask, cv2.convexHull(pts), 1)
    return mask
