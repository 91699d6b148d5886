"""Body-scale statistics of a training subject, saved with the model, used to map a live person onto it."""

from __future__ import annotations

import numpy as np

L_SHOULDER, R_SHOULDER, L_HIP, R_HIP = 11, 12, 23, 24


def subject_stats(landmarks: np.ndarray, visibility_threshold: float = 0.5) -> dict | None:
    """Median shoulder width, shoulder/hip centres and torso length of pose landmarks (N, 33, 3).

    All values are in normalised frame coordinates. None when no frame shows both shoulders and hips.
    """
    lm = np.asarray(landmarks, np.float32)
    if lm.ndim != 3 or lm.shape[1] != 33:
        return None
    core = lm[:, [L_SHOULDER, R_SHOULDER, L_HIP, R_HIP]]
    ok = np.isfinite(core).all(axis=(1, 2)) & (core[:, :, 2] >= visibility_threshold).all(axis=1)
    if not ok.any():
        return None
    core = core[ok, :, :2]
    sh_c = core[:, :2].mean(axis=1)
    hip_c = core[:, 2:].mean(axis=1)
    return {
        "frames": int(ok.sum()),
        "shoulder_width": float(np.median(np.linalg.norm(core[:, 0] - core[:, 1], axis=1))),
        "torso_length": float(np.median(np.linalg.norm(sh_c - hip_c, axis=1))),
        "shoulder_center": [float(v) for v in np.median(sh_c, axis=0)],
        "hip_center": [float(v) for v in np.median(hip_c, axis=0)],
    }


# ------------------------------------------------------------------------------------------------------------
# Live pose normalisation: map the person in front of the camera onto the training subject's scale/position.

SCALE_BY = ("both", "torso", "shoulders")
_MIN_MEASURE = 1e-4     # body measures below this (normalised units) are treated as unusable


def to_square(landmarks: np.ndarray, aspect: float = 1.0) -> np.ndarray:
    """Landmarks normalised to a frame of width/height ``aspect`` -> isotropic units (x * aspect, y unchanged).

    Distances in the result mean the same thing along x and y (units of the frame height), which is what the
    square training crops use. A copy, float32; the 3rd column is kept.
    """
    out = np.array(landmarks, np.float32, copy=True)
    if aspect != 1.0:
        out[..., 0] *= np.float32(aspect)
    return out


def _anchor(stats: dict) -> np.ndarray:
    """Torso centre: the midpoint of the shoulder and hip centres."""
    return (np.asarray(stats["shoulder_center"], np.float64) + np.asarray(stats["hip_center"], np.float64)) / 2.0


def _measure(stats: dict, key: str) -> float | None:
    v = stats.get(key)
    return float(v) if v is not None and np.isfinite(v) and v > _MIN_MEASURE else None


def pose_scale(source_stats: dict, target_stats: dict, scale_by: str = "both") -> float:
    """The factor that brings the source body to the target's size.

    ``"torso"``: target/source torso length (shoulder centre to hip centre: unaffected by turning sideways);
    ``"shoulders"``: target/source shoulder width; ``"both"`` (default): the geometric mean of the two ratios
    (evens out the two people's differing body proportions), or whichever one is available.
    """
    if scale_by not in SCALE_BY:
        raise ValueError(f"scale_by must be one of {SCALE_BY}, got {scale_by!r}")
    ratios = []
    for key in {"both": ("torso_length", "shoulder_width"), "torso": ("torso_length",),
                "shoulders": ("shoulder_width",)}[scale_by]:
        s, t = _measure(source_stats, key), _measure(target_stats, key)
        if s is not None and t is not None:
            ratios.append(t / s)
    if not ratios:
        raise ValueError(f"cannot scale by {scale_by!r}: missing or degenerate body measures in the statistics")
    return float(np.exp(np.mean(np.log(ratios))))


def normalize_pose(landmarks: np.ndarray, source_stats: dict, target_stats: dict, *, aspect: float = 1.0,
                   scale_by: str = "both") -> np.ndarray:
    """Map pose landmarks (33, 3) of a source person onto the training subject's body scale and position.

    ``p' = c_target + s * (p - c_source)`` for the x, y columns, where ``c`` is the torso centre (midpoint of the
    median shoulder and hip centres of the statistics) and ``s`` is :func:`pose_scale`. The source statistics are
    fixed (measured once, e.g. by :class:`PoseNormalizer`), so the person's own movement -- stepping sideways,
    jumping, crouching -- is kept, only resized and re-centred.

    ``aspect``: width/height of the source frame. The landmarks are first made isotropic with :func:`to_square`,
    and ``source_stats`` must have been measured on such isotropic landmarks
    (``subject_stats(to_square(lms, aspect))``). ``target_stats`` are in the (square) training frame, as
    :func:`subject_stats` returns them. The 3rd column (visibility) is passed through untouched, so NaN and
    low-visibility landmarks stay missing. Returns float32 (33, 3).
    """
    lm = np.asarray(landmarks, np.float32)
    if lm.ndim != 2 or lm.shape[1] != 3:
        raise ValueError(f"expected pose landmarks of shape (33, 3), got {lm.shape}")
    s = pose_scale(source_stats, target_stats, scale_by)
    out = to_square(lm, aspect)
    c_src, c_tgt = _anchor(source_stats), _anchor(target_stats)
    out[:, :2] = ((out[:, :2].astype(np.float64) - c_src) * s + c_tgt).astype(np.float32)
    return out


class PoseNormalizer:
    """Online :func:`normalize_pose`: learns the live person's body statistics, then maps every frame.

    The source statistics are the robust (median) :func:`subject_stats` of the first ``warmup`` frames in which
    both shoulders and hips are visible (visibility >= ``visibility_threshold``); after that they are frozen.
    During the warm-up the estimate from the good frames seen so far is used, so the output is normalised from
    the first good frame on. Until then (or when ``target_stats`` is None) landmarks pass through unchanged.
    ``None`` (no detection) passes through as ``None``. :meth:`reset` starts the estimate over (a new person).

    Only pose landmarks (33) are normalised; anything else (face meshes) passes through unchanged -- the face
    crop is stabilised on the server side.
    """

    def __init__(self, target_stats: dict | None, *, warmup: int = 30, aspect: float = 1.0,
                 visibility_threshold: float = 0.5, scale_by: str = "both"):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 frame, got {warmup}")
        if scale_by not in SCALE_BY:
            raise ValueError(f"scale_by must be one of {SCALE_BY}, got {scale_by!r}")
        self.target_stats = target_stats if _usable(target_stats) else None
        self.warmup = int(warmup)
        self.aspect = float(aspect)
        self.visibility_threshold = float(visibility_threshold)
        self.scale_by = scale_by
        self.reset()

    def reset(self) -> None:
        self._good: list[np.ndarray] = []
        self.source_stats: dict | None = None

    @property
    def ready(self) -> bool:
        """True once the source statistics are frozen (``warmup`` good frames seen)."""
        return len(self._good) >= self.warmup and self.source_stats is not None

    @property
    def active(self) -> bool:
        return self.target_stats is not None

    def _observe(self, lm: np.ndarray) -> None:
        if len(self._good) >= self.warmup:
            return
        core = lm[[L_SHOULDER, R_SHOULDER, L_HIP, R_HIP]]
        if not (np.isfinite(core).all() and (core[:, 2] >= self.visibility_threshold).all()):
            return
        self._good.append(to_square(lm, self.aspect))
        stats = subject_stats(np.stack(self._good), self.visibility_threshold)
        if _usable(stats):
            self.source_stats = stats

    def __call__(self, landmarks: np.ndarray | None) -> np.ndarray | None:
        if landmarks is None:
            return None
        lm = np.asarray(landmarks, np.float32)
        if self.target_stats is None or lm.shape != (33, 3):
            return lm
        self._observe(lm)
        if self.source_stats is None:
            return lm
        return normalize_pose(lm, self.source_stats, self.target_stats, aspect=self.aspect, scale_by=self.scale_by)


def _usable(stats: dict | None) -> bool:
    """Statistics with both centres and at least one usable body measure."""
    if not isinstance(stats, dict):
        return False
    try:
        centres = [np.asarray(stats[k], np.float64) for k in ("shoulder_center", "hip_center")]
    except (KeyError, TypeError, ValueError):
        return False
    if any(c.shape != (2,) or not np.isfinite(c).all() for c in centres):
        return False
    return _measure(stats, "torso_length") is not None or _measure(stats, "shoulder_width") is not None
