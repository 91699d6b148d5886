"""Live landmarks -> the coordinates a model was trained on: crops, subject statistics, normalisation modes.

One home for every transform between "landmarks as MediaPipe found them in a frame" and "landmarks as the
training label maps were drawn from", used by ``posecast prepare`` (training data) and by the capture client
(live), so that both sides apply the very same arithmetic:

* the **crop** a dataset was made with: a fixed square for dance videos (``(x0, y0, side)``, below), a causally
  stabilised square that follows the face for face videos (:class:`FaceCrop`);
* the training **subject's statistics** (body measures for pose, face proportions for faces), saved with the
  model (``subject_stats`` in its metadata, announced by the server in the Welcome);
* the live **normalisation modes** (:data:`NORMALIZE_MODES`): ``same-camera`` (only the crop transform),
  ``retarget`` (the live person mapped onto the training subject's scale, position and proportions) and ``off``.

Coordinates: "height units" are a frame's normalised coordinates made isotropic -- ``(x * aspect, y)`` with
``aspect = width / height`` -- so a square crop is a square there. Crop boxes are ``(x0, y0, side)`` in height
units of the source frame.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .landmarks import FACE_NUM_LANDMARKS, FACE_POINTS, POSE_INDEX, POSE_NUM_LANDMARKS
from .window import LowPass

L_SHOULDER, R_SHOULDER, L_HIP, R_HIP = (POSE_INDEX[n] for n in ("left_shoulder", "right_shoulder", "left_hip",
                                                                 "right_hip"))


def subject_stats(landmarks: np.ndarray, visibility_threshold: float = 0.5) -> dict | None:
    """Median shoulder width, shoulder/hip centres and torso length of pose landmarks (N, 33, 3).

    All values are in normalised frame coordinates. None when no frame shows both shoulders and hips.
    """
    lm = np.asarray(landmarks, np.float32)
    if lm.ndim != 3 or lm.shape[1] != POSE_NUM_LANDMARKS:
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

    Only pose landmarks (33) are handled; anything else passes through unchanged. Face meshes have their own
    path, :class:`FaceNormalizer` (the same stabilised crop as ``posecast prepare``, then face proportions).
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
        if self.target_stats is None or lm.shape != (POSE_NUM_LANDMARKS, 3):
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


# ------------------------------------------------------------------------------------------------------------
# Crops: the one implementation of "source landmarks -> training crop coordinates" (prepare and live alike).

def crop_landmarks(landmarks: np.ndarray, box, aspect: float = 1.0, *, scale_z: bool = False) -> np.ndarray:
    """Landmarks normalised to a frame of width/height ``aspect`` -> normalised coordinates of the square ``box``.

    ``box = (x0, y0, side)`` in height units of that frame (see the module docstring): ``x' = (x * aspect - x0) /
    side``, ``y' = (y - y0) / side``. Points outside the box fall outside [0, 1] (not clipped). The 3rd column is
    kept (pose visibility) or, with ``scale_z`` (face-mesh z, in units of the frame width like x), rescaled to
    the box: ``z * aspect / side``. NaN stays NaN. Returns float32 (K, 3).
    """
    lm = np.asarray(landmarks, np.float32)
    if lm.ndim != 2 or lm.shape[1] != 3:
        raise ValueError(f"expected landmarks of shape (K, 3), got {lm.shape}")
    x0, y0, side = (float(v) for v in box)
    if not side > 0:
        raise ValueError(f"crop side must be > 0, got {side}")
    out = lm.copy()
    out[:, 0] = ((lm[:, 0].astype(np.float64) * aspect - x0) / side).astype(np.float32)
    out[:, 1] = ((lm[:, 1].astype(np.float64) - y0) / side).astype(np.float32)
    if scale_z:
        out[:, 2] = (lm[:, 2].astype(np.float64) * aspect / side).astype(np.float32)
    return out


@dataclasses.dataclass(frozen=True)
class FaceCropConfig:
    """How face videos are cropped: a square around the face mesh, stabilised causally over time.

    Saved in the dataset manifest and with the model (``subject_stats["crop"]``), so the live client rebuilds
    exactly the crop the training frames had.
    """
    scale: float = 1.8           # crop side / max(face-mesh bbox width, height)
    shift_up: float = 0.06       # crop centre moved up by this fraction of the crop side (room for hair)
    tau_center_s: float = 0.1    # time constant (seconds) of the one-pole low-pass on the crop centre
    tau_side_s: float = 0.3      # ... and on the crop side
    jump: float = 0.5            # a raw box whose centre moves more than jump * side, or whose side changes by
                                 # more than a factor (1 + jump), in one frame restarts the filter (a new shot)
    fps: float = 30.0            # frame rate the time constants are converted with (the training video's)

    def to_dict(self) -> dict:
        return {"mode": "face", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict | None, fps: float | None = None) -> "FaceCropConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: float(v) for k, v in (d or {}).items() if k in names and isinstance(v, (int, float))}
        if fps is not None and "fps" not in kw:
            kw["fps"] = float(fps)
        return cls(**kw)


def face_box(landmarks: np.ndarray, aspect: float, cfg: FaceCropConfig) -> np.ndarray:
    """The raw (unfiltered) face crop ``(cx, cy, side)`` in height units of a face mesh (K, 3)."""
    xy = np.asarray(landmarks, np.float64)[:, :2] * (aspect, 1.0)
    (x0, y0), (x1, y1) = np.nanmin(xy, axis=0), np.nanmax(xy, axis=0)
    side = max(x1 - x0, y1 - y0) * cfg.scale
    return np.array([0.5 * (x0 + x1), 0.5 * (y0 + y1) - cfg.shift_up * side, side])


class FaceCrop:
    """The stabilised face crop, frame by frame and causal, so that live serving can apply it exactly as training.

    ``update(landmarks, aspect)`` -> ``(box, restarted)``: ``box = (x0, y0, side)`` in height units; the centre and
    side of :func:`face_box` go through models.window.LowPass filters (time constants of ``cfg`` at ``cfg.fps``),
    which start over (``restarted``) on the first frame, after :meth:`reset` and on a jump of the raw box (see
    ``FaceCropConfig.jump``). ``__call__`` returns the landmarks in that crop's normalised coordinates
    (:func:`crop_landmarks`), or None (and resets) for no detection.
    """

    def __init__(self, cfg: FaceCropConfig | None = None):
        self.cfg = cfg or FaceCropConfig()
        fps = self.cfg.fps if self.cfg.fps > 0 else 30.0
        # the smoothing every placement goes through (models/window.py), in seconds here: a face video has a rate
        self._centre = LowPass.from_time_constant(self.cfg.tau_center_s, fps)
        self._side = LowPass.from_time_constant(self.cfg.tau_side_s, fps)

    def reset(self) -> None:
        self._centre.reset()
        self._side.reset()

    def is_jump(self, raw: np.ndarray) -> bool:
        """Whether a raw box is a jump from the current filtered box (a cut, another face)."""
        if self._centre.value is None:
            return False
        (cx, cy), side = self._centre.value, float(self._side.value[0])
        moved = math.hypot(raw[0] - cx, raw[1] - cy) > self.cfg.jump * side
        resized = not (1.0 / (1.0 + self.cfg.jump) < raw[2] / side < 1.0 + self.cfg.jump)
        return moved or resized

    def update(self, landmarks: np.ndarray, aspect: float = 1.0) -> tuple[tuple[float, float, float], bool]:
        raw = face_box(landmarks, aspect, self.cfg)
        restarted = self._centre.value is None or self.is_jump(raw)
        if restarted:
            self.reset()
        (cx, cy), (side,) = self._centre.update(raw[:2]), self._side.update(raw[2:])
        cx, cy, side = float(cx), float(cy), float(side)
        return (cx - side / 2, cy - side / 2, side), restarted

    def __call__(self, landmarks: np.ndarray | None, aspect: float = 1.0) -> np.ndarray | None:
        if landmarks is None:
            self.reset()
            return None
        box, _ = self.update(landmarks, aspect)
        return crop_landmarks(landmarks, box, aspect, scale_z=True)


# MediaPipe face-mesh landmark indices of the face statistics.
FACE_EYE_OUTER = (FACE_POINTS["right_eye_outer"], FACE_POINTS["left_eye_outer"])    # 33, 263
FACE_TOP, FACE_CHIN = FACE_POINTS["forehead"], FACE_POINTS["chin"]                 # 10, 152


def face_stats(landmarks: np.ndarray) -> dict | None:
    """Median face proportions of face meshes (N, K, 3) in (crop) normalised coordinates; None without frames.

    ``eye_distance`` (outer eye corners 33-263: the face's width scale), ``face_height`` (forehead 10 - chin 152)
    and ``face_center`` (mean of all landmarks).
    """
    lm = np.asarray(landmarks, np.float32)
    if lm.ndim != 3 or lm.shape[1] < FACE_NUM_LANDMARKS:
        return None
    lm = lm[np.isfinite(lm[:, :, :2]).all(axis=(1, 2))]
    if not len(lm):
        return None
    a, b = FACE_EYE_OUTER
    ed = np.linalg.norm(lm[:, a, :2] - lm[:, b, :2], axis=1)
    fh = np.linalg.norm(lm[:, FACE_TOP, :2] - lm[:, FACE_CHIN, :2], axis=1)
    fc = lm[:, :, :2].mean(axis=1)
    return {"frames": int(len(lm)), "eye_distance": float(np.median(ed)), "face_height": float(np.median(fh)),
            "face_center": [float(v) for v in np.median(fc, axis=0)]}


def _face_usable(stats: dict | None) -> bool:
    if not isinstance(stats, dict):
        return False
    try:
        c = np.asarray(stats["face_center"], np.float64)
    except (KeyError, TypeError, ValueError):
        return False
    return (c.shape == (2,) and bool(np.isfinite(c).all()) and _measure(stats, "eye_distance") is not None
            and _measure(stats, "face_height") is not None)


def normalize_face(landmarks: np.ndarray, source_stats: dict, target_stats: dict) -> np.ndarray:
    """Map a (cropped) face mesh onto the training subject's face proportions.

    ``p' = c_t + (p - c_s) * (sx, sy)`` with ``sx`` the ratio of the eye distances (target / source) and ``sy``
    that of the face heights, ``c`` the face centres; z is scaled by ``sx``. Both statistics are
    :func:`face_stats` in crop coordinates. Returns float32 (K, 3).
    """
    lm = np.asarray(landmarks, np.float32)
    sx = target_stats["eye_distance"] / source_stats["eye_distance"]
    sy = target_stats["face_height"] / source_stats["face_height"]
    c_s = np.asarray(source_stats["face_center"], np.float64)
    c_t = np.asarray(target_stats["face_center"], np.float64)
    out = lm.copy()
    out[:, :2] = ((lm[:, :2].astype(np.float64) - c_s) * (sx, sy) + c_t).astype(np.float32)
    out[:, 2] = (lm[:, 2].astype(np.float64) * sx).astype(np.float32)
    return out


# ------------------------------------------------------------------------------------------------------------
# Live normalisation modes: what the capture client does to landmarks before sending them.

NORMALIZE_MODES: dict[str, str] = {
    "retarget": "map the live person onto the training subject: body scale and torso position (pose), "
                "face proportions (face), after the training crop",
    "same-camera": "the live camera is the training camera: apply only the training crop transform",
    "off": "no person mapping; the crop transform a crop-trained model needs is still applied "
           "(same as same-camera)",
}


def model_crop(kind: str, stats: dict | None, fps: float | None = None) -> dict | None:
    """The crop a model's training frames were made with, from its ``subject_stats`` (None: the full frame)."""
    crop = stats.get("crop") if isinstance(stats, dict) else None
    if kind == "face":  # face models are always trained on face crops (posecast prepare --kind face)
        return FaceCropConfig.from_dict(crop if isinstance(crop, dict) else None, fps).to_dict()
    if isinstance(crop, dict) and crop.get("mode") == "fixed":
        return crop
    return None


class CropTransform:
    """A dance model's fixed training crop applied to live landmarks (``crop`` from :func:`model_crop`)."""

    def __init__(self, crop: dict, aspect: float = 1.0):
        self.box = tuple(float(v) for v in crop["box"])
        self.train_aspect = float(crop.get("aspect", aspect))
        self.aspect = float(aspect)

    def __call__(self, landmarks: np.ndarray | None) -> np.ndarray | None:
        if landmarks is None:
            return None
        return crop_landmarks(landmarks, self.box, self.aspect)


class FaceNormalizer:
    """Live face meshes -> the training crop (:class:`FaceCrop`, as ``posecast prepare`` did), then with
    ``retarget`` the training subject's proportions (:func:`normalize_face`; the live face's statistics are the
    median of its first ``warmup`` cropped frames, then frozen)."""

    def __init__(self, target_stats: dict | None, mode: str = "retarget", *, aspect: float = 1.0,
                 warmup: int = 30, fps: float | None = None):
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"unknown normalisation mode {mode!r}: expected one of {', '.join(NORMALIZE_MODES)}")
        self.mode, self.aspect, self.warmup = mode, float(aspect), int(warmup)
        self.crop = FaceCrop(FaceCropConfig.from_dict(model_crop("face", target_stats, fps)))
        self.target_stats = target_stats if mode == "retarget" and _face_usable(target_stats) else None
        self._seen: list[np.ndarray] = []
        self.source_stats: dict | None = None

    @property
    def retargeting(self) -> bool:
        return self.target_stats is not None

    def __call__(self, landmarks: np.ndarray | None) -> np.ndarray | None:
        lm = self.crop(landmarks, self.aspect)
        if lm is None or self.target_stats is None:
            return lm
        if len(self._seen) < self.warmup:
            self._seen.append(lm)
            stats = face_stats(np.stack(self._seen))
            if _face_usable(stats):
                self.source_stats = stats
        if self.source_stats is None:
            return lm
        return normalize_face(lm, self.source_stats, self.target_stats)


def live_normalizer(kind: str, stats: dict | None, mode: str = "retarget", *, aspect: float = 1.0,
                    warmup: int = 30, fps: float | None = None):
    """``(fn, description)``: the landmark transform the capture client applies for ``mode`` to a model of
    ``kind`` with ``subject_stats`` ``stats``; ``fn(landmarks or None) -> landmarks or None``."""
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"unknown normalisation mode {mode!r}: expected one of {', '.join(NORMALIZE_MODES)}")
    if kind == "face":
        fn = FaceNormalizer(stats, mode, aspect=aspect, warmup=warmup, fps=fps)
        crop = "the training face crop (stabilised as posecast prepare did)"
        if fn.retargeting:
            return fn, (f"retarget: {crop}, then your face mapped onto the training face's proportions (learnt "
                        f"from your first {warmup} frames)")
        if mode == "retarget":
            return fn, f"retarget impossible (the model has no face proportions): {crop} only"
        return fn, f"{mode}: {crop} only"
    crop = model_crop(kind, stats)
    if mode == "retarget":
        norm = PoseNormalizer(stats, warmup=warmup, aspect=aspect)
        if norm.active:
            return norm, (f"retarget: your body size and position mapped onto the training subject's (learnt "
                          f"from the first {warmup} frames that show shoulders and hips)")
        mode_note = "retarget impossible (the model has no subject statistics); "
    else:
        mode_note = f"{mode}: "
    if crop is None:
        return (lambda lm: lm), mode_note + "landmarks sent as detected (the model was trained on full frames)"
    fn = CropTransform(crop, aspect)
    note = ""
    if abs(fn.train_aspect - aspect) > 0.01:
        note = (f" (warning: this frame is {aspect:.3f} wide per unit of height, the training video "
                f"{fn.train_aspect:.3f}: is this really the training camera?)")
    x0, y0, side = fn.box
    return fn, mode_note + f"the training crop (x0 {x0:.3f}, y0 {y0:.3f}, side {side:.3f} frame heights){note}"
