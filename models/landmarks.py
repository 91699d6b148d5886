"""Landmark layouts (MediaPipe Pose and Face Mesh): THE table every layer asks, and the one validator.

``LAYOUTS`` / ``layout_of(kind)`` give, per landmark kind, the wire layout name, the number of landmarks K (the
default and every accepted count), the landmark names and the head's indices; ``validate_landmarks`` is the one
check of a ``(K, 3)`` array (dtype, shape, K, inf, magnitude) that the renderers, the live sessions and the wire
decoder all call. Below them, the topology tables the label-map renderers draw.

Tables and numpy only: this module must import neither mediapipe nor cv2 (it is loaded by
the live server and by training workers).  The face polylines were derived once, offline, by
chaining the edges of mediapipe's ``face_mesh_connections`` sets into ordered paths;
``tests/test_render.py`` checks them (and ``POSE_CONNECTIONS``) against mediapipe.

Landmark convention (whole project): float32 ``(K, 3)``; x, y normalised to [0, 1] of the
target image (x right, y down); 3rd value = visibility in [0, 1] (pose) or z (face mesh).
Missing landmarks are NaN.  "Left" is the person's left.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import numpy as np

# --------------------------------------------------------------------------------------------
# Pose (MediaPipe Pose / BlazePose, 33 landmarks)
# --------------------------------------------------------------------------------------------

POSE_NUM_LANDMARKS = 33

POSE_LANDMARK_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye_inner", "left_eye", "left_eye_outer",
    "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear",
    "mouth_left", "mouth_right",
    "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow",
    "left_wrist", "right_wrist",
    "left_pinky", "right_pinky",
    "left_index", "right_index",
    "left_thumb", "right_thumb",
    "left_hip", "right_hip",
    "left_knee", "right_knee",
    "left_ankle", "right_ankle",
    "left_heel", "right_heel",
    "left_foot_index", "right_foot_index",
)
POSE_INDEX: MappingProxyType = MappingProxyType({n: i for i, n in enumerate(POSE_LANDMARK_NAMES)})

# Landmarks that belong to the head (jittered together by the head augmentation).
POSE_HEAD_LANDMARKS: tuple[int, ...] = tuple(range(0, 11))

# Identical to mediapipe's ``mp.solutions.pose.POSE_CONNECTIONS`` (35 edges).
POSE_CONNECTIONS: frozenset[tuple[int, int]] = frozenset({
    (0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10),
    (11, 12), (11, 13), (13, 15), (15, 17), (15, 19), (15, 21), (17, 19),
    (12, 14), (14, 16), (16, 18), (16, 20), (16, 22), (18, 20),
    (11, 23), (12, 24), (23, 24), (23, 25), (24, 26), (25, 27), (26, 28),
    (27, 29), (28, 30), (29, 31), (30, 32), (27, 31), (28, 32),
})

# Derived points appended after the 33 real landmarks when rendering: index -> the landmarks
# it is the midpoint of.  A derived point exists only if all of its sources are present.
POSE_NECK = 33
POSE_DERIVED_POINTS: MappingProxyType = MappingProxyType({POSE_NECK: (11, 12)})  # mid-shoulder
POSE_NUM_POINTS = POSE_NUM_LANDMARKS + len(POSE_DERIVED_POINTS)

# Limb segments of the colour-coded "dance" label map (vid2vid / OpenPose style), in draw order
# (later segments are drawn on top): torso, legs, feet, arms, hands, neck and head.
POSE_LIMB_NAMES: tuple[str, ...] = (
    "left_torso", "right_torso", "shoulders", "hips",
    "left_upper_leg", "left_lower_leg", "right_upper_leg", "right_lower_leg",
    "left_ankle_heel", "left_heel_toe", "right_ankle_heel", "right_heel_toe",
    "left_upper_arm", "left_lower_arm", "right_upper_arm", "right_lower_arm",
    "left_hand_index", "left_hand_pinky", "left_hand_thumb",
    "right_hand_index", "right_hand_pinky", "right_hand_thumb",
    "neck", "left_eye", "left_ear", "right_eye", "right_ear",
)
POSE_LIMBS: tuple[tuple[int, int], ...] = (
    (11, 23), (12, 24), (11, 12), (23, 24),
    (23, 25), (25, 27), (24, 26), (26, 28),
    (27, 29), (29, 31), (28, 30), (30, 32),
    (11, 13), (13, 15), (12, 14), (14, 16),
    (15, 19), (15, 17), (15, 21),
    (16, 20), (16, 18), (16, 22),
    (POSE_NECK, 0), (0, 2), (2, 7), (0, 5), (5, 8),
)
# One distinct RGB colour per limb: fully saturated hues on a 12-degree grid (30 hues, so pure
# primaries/secondaries are on it and any two colours differ by >= 51 in some channel), assigned
# with hue step 11/30 so neighbouring limbs and left/right counterparts get clearly different hues.
POSE_LIMB_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (0, 255, 51), (102, 0, 255), (255, 153, 0),
    (0, 255, 204), (255, 0, 255), (204, 255, 0), (0, 153, 255),
    (255, 0, 102), (51, 255, 0), (0, 0, 255), (255, 51, 0),
    (0, 255, 102), (153, 0, 255), (255, 204, 0), (0, 255, 255),
    (255, 0, 204), (153, 255, 0), (0, 102, 255),
    (255, 0, 51), (0, 255, 0), (51, 0, 255),
    (255, 102, 0), (0, 255, 153), (204, 0, 255), (255, 255, 0), (0, 204, 255),
)


def _joint_colors() -> dict[int, tuple[int, int, int]]:
    """Joint disk colour = colour of the first limb ending at the joint (else first touching it)."""
    colors: dict[int, tuple[int, int, int]] = {}
    for (a, b), c in zip(POSE_LIMBS, POSE_LIMB_COLORS):
        colors.setdefault(b, c)
    for (a, b), c in zip(POSE_LIMBS, POSE_LIMB_COLORS):
        colors.setdefault(a, c)
    return dict(sorted(colors.items()))


# Colour of the joint disk drawn at every endpoint of a drawn limb (point index -> RGB).
POSE_JOINT_COLORS: MappingProxyType = MappingProxyType(_joint_colors())

assert len(POSE_LANDMARK_NAMES) == POSE_NUM_LANDMARKS
assert len(POSE_LIMBS) == len(POSE_LIMB_COLORS) == len(POSE_LIMB_NAMES)
assert len(set(POSE_LIMB_COLORS)) == len(POSE_LIMB_COLORS)

# --------------------------------------------------------------------------------------------
# Face (MediaPipe Face Mesh, 468 landmarks; 478 with refined irises)
# --------------------------------------------------------------------------------------------

FACE_NUM_LANDMARKS = 468
FACE_NUM_LANDMARKS_REFINED = 478

# group name -> ordered polylines (tuples of landmark indices).  A closed curve repeats its first
# index at the end, so consecutive pairs of every polyline are exactly mediapipe's edges:
#   face_oval      = FACEMESH_FACE_OVAL
#   left_eyebrow   = FACEMESH_LEFT_EYEBROW   (lower and upper edge)
#   right_eyebrow  = FACEMESH_RIGHT_EYEBROW
#   left_eye       = FACEMESH_LEFT_EYE       (closed, starting at the outer corner)
#   right_eye      = FACEMESH_RIGHT_EYE
#   nose           = FACEMESH_NOSE           (bridge 168 -> 2, then the closed nostril/base curve
#                                             through the tip 4 and subnasale 2)
#   lips_outer + lips_inner = FACEMESH_LIPS  (both closed, starting at the mouth corner)
FACE_CONTOURS: MappingProxyType = MappingProxyType({
    "face_oval": (
        (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
         152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109, 10),
    ),
    "left_eyebrow": (
        (276, 283, 282, 295, 285),
        (300, 293, 334, 296, 336),
    ),
    "right_eyebrow": (
        (46, 53, 52, 65, 55),
        (70, 63, 105, 66, 107),
    ),
    "left_eye": (
        (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466, 263),
    ),
    "right_eye": (
        (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246, 33),
    ),
    "nose": (
        (168, 6, 197, 195, 5, 4, 1, 19, 94, 2),
        (4, 45, 220, 115, 48, 64, 98, 97, 2, 326, 327, 294, 278, 344, 440, 275, 4),
    ),
    "lips_outer": (
        (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40,
         185, 61),
    ),
    "lips_inner": (
        (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80,
         191, 78),
    ),
})
FACE_CONTOUR_GROUPS: tuple[str, ...] = tuple(FACE_CONTOURS)
# Groups whose polylines are closed curves.
FACE_CLOSED_GROUPS: frozenset[str] = frozenset(
    g for g, lines in FACE_CONTOURS.items() if all(p[0] == p[-1] for p in lines))

assert all(i < FACE_NUM_LANDMARKS for lines in FACE_CONTOURS.values() for p in lines for i in p)


# --------------------------------------------------------------------------------------------
# Face: named points (MediaPipe Face Mesh indices; "right" is the person's right)
# --------------------------------------------------------------------------------------------

FACE_POINTS: MappingProxyType = MappingProxyType({
    "forehead": 10,             # top of the face oval
    "chin": 152,
    "nose_tip": 1,
    "right_eye_outer": 33, "right_eye_inner": 133,
    "left_eye_outer": 263, "left_eye_inner": 362,
    "right_cheek": 234, "left_cheek": 454,   # the face oval's widest points
    "upper_lip_inner": 13, "lower_lip_inner": 14,             # the mouth's opening
    "right_eye_top": 159, "right_eye_bottom": 145,            # the eyes' openings (upper and lower lid)
    "left_eye_top": 386, "left_eye_bottom": 374,
})


# --------------------------------------------------------------------------------------------
# Layouts: one row per landmark kind
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LandmarkLayout:
    """What every layer needs to know about one kind's ``(K, 3)`` landmark arrays."""

    kind: str                     # the landmark / label kind: "dance" (MediaPipe Pose) or "face" (Face Mesh)
    name: str                     # wire name of the layout (protocol Welcome.layout)
    num_landmarks: int            # K a producer sends by default (the live server announces it)
    accepted: tuple[int, ...]     # every K accepted, ascending (face: 468, and 478 with refined irises)
    third: str                    # meaning of column 3: "visibility" (pose) or "z" (face)
    names: tuple[str, ...] = ()   # a name per landmark, where the layout has them (pose)
    head: tuple[int, ...] = ()    # indices of the landmarks that belong to the head (pose; a face mesh is all head)
    points: MappingProxyType = dataclasses.field(default_factory=lambda: MappingProxyType({}))  # named points

    def index(self, name: str) -> int:
        """The index of a named landmark or point (``"left_shoulder"``, ``"chin"``)."""
        if name in self.points:
            return self.points[name]
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no landmark {name!r} in the {self.kind} layout ({self.name})") from None


POSE_LAYOUT = LandmarkLayout(kind="dance", name="mediapipe-pose-33", num_landmarks=POSE_NUM_LANDMARKS,
                             accepted=(POSE_NUM_LANDMARKS,), third="visibility", names=POSE_LANDMARK_NAMES,
                             head=POSE_HEAD_LANDMARKS)
FACE_LAYOUT = LandmarkLayout(kind="face", name="mediapipe-face-mesh", num_landmarks=FACE_NUM_LANDMARKS_REFINED,
                             accepted=(FACE_NUM_LANDMARKS, FACE_NUM_LANDMARKS_REFINED), third="z",
                             points=FACE_POINTS)

#: landmark kind -> its layout; the kinds are the label kinds of models/render.py.
LAYOUTS: MappingProxyType = MappingProxyType({lay.kind: lay for lay in (POSE_LAYOUT, FACE_LAYOUT)})
KINDS: tuple[str, ...] = tuple(LAYOUTS)


def layout_of(kind: str) -> LandmarkLayout:
    """The layout of a landmark kind; ValueError naming the known kinds otherwise."""
    try:
        return LAYOUTS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown label kind {kind!r}; expected one of {KINDS}") from None


# --------------------------------------------------------------------------------------------
# Validation: the one check of a (K, 3) landmark array
# --------------------------------------------------------------------------------------------

class LandmarkError(ValueError):
    """A landmark array is malformed. ``problem`` names what: "dtype", "shape", "count", "inf" or "range"."""

    def __init__(self, problem: str, message: str):
        super().__init__(message)
        self.problem = problem


def validate_landmarks(landmarks, layout: LandmarkLayout | str | None = None, *, max_count: int | None = None,
                       max_abs: float | None = None, values: bool = True) -> np.ndarray:
    """Check a landmark array and return it as float32 ``(K, 3)`` (it may share memory with the input: never
    modify it in place); raises LandmarkError (a ValueError) whose message names the problem.

    ``layout``    a LandmarkLayout or its kind: K must be one of ``layout.accepted``. None: any 0 < K.
    ``max_count`` K must not exceed this (the wire's limit, for checks without a layout).
    ``max_abs``   reject values beyond +-max_abs (the live server's guard against pixel coordinates and garbage).
    ``values``    False: dtype and shape only (the wire decoder checks the shape before the values are read).

    NaN marks a missing value and always passes; +-inf never does (when ``values``).
    """
    if isinstance(layout, str):
        layout = layout_of(layout)
    what = f"{layout.kind} landmarks" if layout else "landmarks"
    try:
        arr = np.asarray(landmarks)
    except Exception:  # noqa: BLE001 - anything that is not array-like (ragged lists, objects)
        raise LandmarkError("dtype", f"{what} are not a numeric array") from None
    if arr.dtype.kind not in "fiu":
        raise LandmarkError("dtype", f"{what} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise LandmarkError("shape", f"{what} must be a 2-D (K, 3) array, got ndim={arr.ndim} with shape "
                                     f"{arr.shape}")
    if arr.shape[1] != 3:
        raise LandmarkError("shape", f"{what} must have 3 columns (x, y, {layout.third if layout else 'visibility/z'})"
                                     f", got shape {arr.shape}")
    k = arr.shape[0]
    if layout is not None and k not in layout.accepted:
        expected = " or ".join(map(str, layout.accepted))
        raise LandmarkError("count", f"{what}: wrong number of landmarks K={k}, expected {expected} ({layout.name})")
    if k == 0 or (max_count is not None and k > max_count):
        bound = f"0 < K <= {max_count}" if max_count is not None else "0 < K"
        raise LandmarkError("count", f"{what}: wrong number of landmarks K={k}, expected {bound}")
    arr = arr.astype(np.float32, copy=False)
    if not values:
        return arr
    with np.errstate(invalid="ignore"):
        bad = np.isinf(arr) if max_abs is None else np.abs(arr) > max_abs  # NaN -> False (allowed)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        listed = f"rows {rows[:8].tolist()}{'...' if rows.size > 8 else ''}"
        n_inf = int(np.isinf(arr).sum())
        if n_inf:
            raise LandmarkError("inf", f"{what} contain {n_inf} inf value(s) ({listed}); missing landmarks must "
                                       f"be NaN, not inf")
        raise LandmarkError("range", f"{what} contain values beyond +-{max_abs:g} ({listed}); x, y must be "
                                     f"normalised to [0, 1] and missing landmarks sent as NaN")
    return arr
