"""The synthetic talking face's geometry and motion: a face mesh in MediaPipe's layout, moved by a seed.

What the synthetic dancer (models/motion.py) is for bodies: landmarks known exactly, in the layout the real
pipeline uses (MediaPipe Face Mesh: 468 points, 478 with the irises), so the face pipeline can be trained,
evaluated and demoed without footage.

**The template** (:func:`face_template`). The mediapipe wheel ships the mesh's topology
(``FACEMESH_TESSELATION``) but no canonical face, so one is built here from that topology: the curves a face is
drawn with — the face oval, the eyes' lids, the eyebrows, the nose, the outer and inner lips — are placed by
hand-written rules in a face-centred frame (x right in the image, y down, the face ~1 wide), and every other point
is the average of its mesh neighbours (the harmonic fill of the pinned curves: a Laplace solve over the mesh
graph), so the whole mesh keeps MediaPipe's neighbourhoods. Depth is a rounded head with a nose and eye sockets.
The eyes' lids and the inner lips are where the mesh has holes (its boundary), so opening them moves only pinned
points and the fill around them.

**The motion** (:class:`FaceMotion`): head turns (yaw), nods (pitch), tilts (roll), a slow drift and scale, the
mouth opening and closing in syllable-like bursts with pauses, blinks every few seconds, all smooth and
deterministic from the seed. :meth:`FaceMotion.landmarks` gives the frame's (478, 3) landmarks in normalised image
coordinates, MediaPipe's convention (x, y in [0, 1] of the frame; z in units of the frame's width, smaller is
nearer).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from .landmarks import FACE_CONTOURS, FACE_NUM_LANDMARKS, FACE_NUM_LANDMARKS_REFINED

# Iris points of the refined mesh: centre then four around (the person's right eye first).
RIGHT_IRIS = (468, 469, 470, 471, 472)
LEFT_IRIS = (473, 474, 475, 476, 477)
_RIGHT_EYE, _LEFT_EYE = FACE_CONTOURS["right_eye"][0][:-1], FACE_CONTOURS["left_eye"][0][:-1]
_LIPS_INNER, _LIPS_OUTER = FACE_CONTOURS["lips_inner"][0][:-1], FACE_CONTOURS["lips_outer"][0][:-1]

EYE_HALF_WIDTH = 0.085
EYE_OPEN = 0.065          # lid to lid, fully open (the template's units: face width ~1)
MOUTH_OPEN_MAX = 0.16     # inner lip to inner lip, mouth wide open


@functools.lru_cache(maxsize=1)
def mesh_triangles() -> np.ndarray:
    """The face mesh's triangles, (T, 3) landmark indices: the 3-cliques of MediaPipe's tessellation edges."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    adj: dict[int, set[int]] = {}
    for a, b in FACEMESH_TESSELATION:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    tris = {tuple(sorted((a, b, c))) for a, b in FACEMESH_TESSELATION for c in adj[a] & adj[b]}
    return np.array(sorted(tris), dtype=np.int32)


def _eye(points: tuple, cx: float, cy: float, opening: float, outer_sign: float) -> dict[int, tuple]:
    """Lid points of one eye: outer corner, 7 on the lower lid to the inner corner, 7 on the upper lid back."""
    out = {}
    outer, inner = cx + outer_sign * EYE_HALF_WIDTH, cx - outer_sign * EYE_HALF_WIDTH
    for k, idx in enumerate(points):
        if k <= 8:                                   # lower lid, outer -> inner
            t = k / 8
            y = cy + 0.42 * opening * math.sin(math.pi * t) ** 0.8
        else:                                        # upper lid, inner -> outer
            t = 1 - (k - 8) / 8
            y = cy - 0.58 * opening * math.sin(math.pi * t) ** 0.8
        x = outer + (inner - outer) * t
        out[idx] = (x, y - 0.006 * math.sin(math.pi * t))          # lids a little higher toward the middle
    return out


def _lips(points: tuple, cx: float, cy: float, half_width: float, upper: float, lower: float,
          bow: float = 0.0) -> dict[int, tuple]:
    """A lip contour: corner, 9 on the lower lip to the other corner, 9 on the upper lip back. ``upper`` and
    ``lower``: how far above / below ``cy`` the middle of the upper / lower lip is."""
    out = {}
    for k, idx in enumerate(points):
        if k <= 10:                                  # lower, from the person's right corner (image left)
            t = k / 10
            y = cy + lower * math.sin(math.pi * t) ** 0.7
        else:
            t = 1 - (k - 10) / 10
            s = math.sin(math.pi * t) ** 0.7
            y = cy - upper * s + bow * math.exp(-((t - 0.5) / 0.08) ** 2)        # the cupid's bow dip
        out[idx] = (cx - half_width + 2 * half_width * t, y)
    return out


def _pinned(eyes_open: float = 1.0, mouth_open: float = 0.0, smile: float = 0.0) -> dict[int, tuple]:
    """Hand-placed 2-D positions of the curves (face frame: x right, y down, nose bridge near 0)."""
    p: dict[int, tuple] = {}
    oval = FACE_CONTOURS["face_oval"][0][:-1]
    for k, idx in enumerate(oval):                   # from the forehead's top, toward the image right (clockwise)
        th = 2 * math.pi * k / len(oval)
        y = -0.5 * math.cos(th) + 0.05
        taper = 1.0 - 0.3 * max(0.0, y / 0.55) ** 2  # the jaw narrows to the chin
        p[idx] = (0.41 * math.sin(th) * taper, y)
    p.update(_eye(_RIGHT_EYE, -0.19, -0.05, EYE_OPEN * eyes_open, -1.0))
    p.update(_eye(_LEFT_EYE, 0.19, -0.05, EYE_OPEN * eyes_open, 1.0))
    brows = {"right_eyebrow": -1.0, "left_eyebrow": 1.0}
    for name, side in brows.items():
        lower, upper = FACE_CONTOURS[name]           # each from the outer end to the inner end
        for line, lift in ((lower, 0.0), (upper, 0.03)):
            for k, idx in enumerate(line):
                t = k / (len(line) - 1)
                x = side * (0.30 - 0.21 * t)
                p[idx] = (x, -0.15 - lift - 0.035 * math.sin(math.pi * (0.3 + 0.7 * t)) + 0.01 * t)
    bridge, base = FACE_CONTOURS["nose"]
    for k, idx in enumerate(bridge):                 # 168 between the eyes down to 2 under the tip
        p[idx] = (0.0, -0.07 + 0.30 * k / (len(bridge) - 1))
    ring = base[:-1]                                 # tip 4, round the right nostril to 2, round the left back
    for k, idx in enumerate(ring):
        if idx in p:
            continue
        th = 2 * math.pi * k / len(ring)
        p[idx] = (-0.085 * math.sin(th), 0.17 - 0.05 * math.cos(th))
    opening = MOUTH_OPEN_MAX * mouth_open
    cy, hw = 0.34 + 0.25 * opening, 0.13 + 0.02 * smile - 0.015 * mouth_open
    p.update(_lips(_LIPS_INNER, 0.0, cy - 0.01 * smile, hw - 0.01, opening / 2 + 0.002, opening / 2 + 0.002))
    p.update(_lips(_LIPS_OUTER, 0.0, cy - 0.01 * smile, hw + 0.015, opening / 2 + 0.045, opening / 2 + 0.055,
                   bow=0.012))
    return p


@functools.lru_cache(maxsize=1)
def _harmonic_fill() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pinned indices, free indices, F): the free points' positions are ``F @ pinned positions`` (each free
    point the average of its mesh neighbours; the graph Laplacian solved once)."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    n = FACE_NUM_LANDMARKS
    adj = np.zeros((n, n))
    for i, j in FACEMESH_TESSELATION:
        adj[i, j] = adj[j, i] = 1.0
    lap = np.diag(adj.sum(1)) - adj
    fixed = np.array(sorted(_pinned()))
    free = np.setdiff1d(np.arange(n), fixed)
    return fixed, free, np.linalg.solve(lap[np.ix_(free, free)], -lap[np.ix_(free, fixed)])


def _fill(pinned: dict[int, tuple]) -> np.ndarray:
    """(468, 2): the pinned points where given, every other point the average of its mesh neighbours."""
    fixed, free, f = _harmonic_fill()
    xy = np.zeros((FACE_NUM_LANDMARKS, 2))
    xy[fixed] = [pinned[i] for i in fixed]
    xy[free] = f @ xy[fixed]
    return xy


def _depth(xy: np.ndarray) -> np.ndarray:
    """z (smaller is nearer) for face-frame points: a rounded head, the nose forward, the eyes set back."""
    x, y = xy[:, 0], xy[:, 1]
    r2 = np.clip((x / 0.5) ** 2 + ((y - 0.05) / 0.7) ** 2, 0, 1)
    z = -0.32 * np.sqrt(1 - r2)
    z -= 0.10 * np.exp(-(x ** 2 / 0.006 + (y - 0.13) ** 2 / 0.03))          # the nose
    z += 0.025 * np.exp(-((np.abs(x) - 0.19) ** 2 / 0.006 + (y + 0.05) ** 2 / 0.004))   # eye sockets
    z -= 0.02 * np.exp(-(x ** 2 / 0.02 + (y - 0.34) ** 2 / 0.004))          # the lips
    return z + 0.2     # MediaPipe's origin is near the head's centre: the oval ~0, the nose tip ~-0.25


def face_template(eyes_open: float = 1.0, mouth_open: float = 0.0, smile: float = 0.0) -> np.ndarray:
    """(478, 3) face-frame points of the mesh (irises included) with these openings (0 closed, 1 open)."""
    xy = _fill(_pinned(eyes_open, mouth_open, smile))
    pts = np.concatenate([xy, _depth(xy)[:, None]], 1)
    out = np.zeros((FACE_NUM_LANDMARKS_REFINED, 3))
    out[:FACE_NUM_LANDMARKS] = pts
    for iris, eye in ((RIGHT_IRIS, _RIGHT_EYE), (LEFT_IRIS, _LEFT_EYE)):
        c = pts[list(eye)].mean(0)
        r = 0.035
        out[iris[0]] = c
        for k, idx in enumerate(iris[1:]):             # right, top, left, bottom of the iris
            a = k * math.pi / 2
            out[idx] = c + (r * math.cos(a), -r * math.sin(a), 0.0)
    return out


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 rotation (radians): yaw turns the head to the image right, pitch nods it down, roll tilts it."""
    cy, sy, cp, sp, cr, sr = map(float, (np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch),
                                         np.cos(roll), np.sin(roll)))
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


@dataclasses.dataclass(frozen=True)
class FaceState:
    """One frame of the talking face: head pose (radians), placement (normalised) and the openings."""
    yaw: float
    pitch: float
    roll: float
    cx: float
    cy: float
    scale: float            # face width as a fraction of the frame's width
    mouth: float            # 0 closed .. 1 wide open
    eyes: float             # 0 closed .. 1 open
    smile: float


class FaceMotion:
    """The synthetic talking face's motion, deterministic from ``seed``: smooth head turns and nods, the mouth in
    bursts of syllables with pauses, blinks every 2-6 s."""

    def __init__(self, seed: int = 0, fps: float = 30.0):
        self.seed, self.fps = seed, float(fps)
        rng = np.random.default_rng(seed)
        # Sums of a few slow sines per head-pose channel (periods 2-9 s), random phases and amplitudes.
        self._waves = {name: (rng.uniform(2, 9, 3), rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.3, 1, 3) * amp)
                       for name, amp in (("yaw", 0.22), ("pitch", 0.09), ("roll", 0.05), ("cx", 0.02),
                                         ("cy", 0.015), ("scale", 0.02), ("smile", 0.4))}
        self._syllable = rng.uniform(0.16, 0.26)             # s a syllable
        self._talk = rng.uniform(1.2, 3.0, 64)                # alternate talk / pause lengths (s)
        self._pause = rng.uniform(0.3, 1.2, 64)
        self._heights = rng.uniform(0.25, 1.0, 4096)          # each syllable's opening
        self._blinks = np.cumsum(rng.uniform(2.0, 6.0, 512))   # blink times (s)

    def _wave(self, name: str, t: float) -> float:
        periods, phases, amps = self._waves[name]
        return float(np.sum(amps * np.sin(2 * np.pi * t / periods + phases)) / 1.6)

    def _mouth(self, t: float) -> float:
        period = self._talk + self._pause
        k, start = 0, 0.0
        total = float(period.sum())
        t = t % total
        while start + period[k] <= t:
            start += period[k]
            k += 1
        u = t - start
        if u >= self._talk[k]:
            return 0.0
        s = u / self._syllable
        h = self._heights[(int(s) + 37 * k) % len(self._heights)]
        fade = min(1.0, u / 0.15, (self._talk[k] - u) / 0.15)
        return float(h * math.sin(math.pi * (s % 1.0)) ** 2 * fade)

    def _eyes(self, t: float) -> float:
        t = t % float(self._blinks[-1])                     # (the blinks repeat after ~34 minutes)
        i = int(np.searchsorted(self._blinks, t))
        near = min(abs(t - self._blinks[j]) for j in (max(i - 1, 0), min(i, len(self._blinks) - 1)))
        return float(min(1.0, near / 0.09))                  # a blink: ~0.18 s closed and reopened

    def state(self, i: int) -> FaceState:
        t = i / self.fps
        w = self._wave
        return FaceState(yaw=w("yaw", t), pitch=w("pitch", t), roll=w("roll", t), cx=0.5 + w("cx", t),
                         cy=0.47 + w("cy", t), scale=0.46 + w("scale", t), mouth=self._mouth(t),
                         eyes=self._eyes(t), smile=max(0.0, w("smile", t)))

    def landmarks(self, i: int, aspect: float = 1.0) -> np.ndarray:
        """(478, 3) landmarks of frame ``i`` in MediaPipe's normalised convention; ``aspect``: width / height."""
        return place(self.state(i), aspect)


def place(s: FaceState, aspect: float = 1.0) -> np.ndarray:
    """The template posed by ``s`` and projected (weak perspective) into normalised image coordinates."""
    pts = face_template(s.eyes, s.mouth, s.smile) @ rotation(s.yaw, s.pitch, s.roll).T
    out = np.empty_like(pts)
    out[:, 0] = s.cx + s.scale * pts[:, 0]
    out[:, 1] = s.cy + s.scale * aspect * pts[:, 1]
    out[:, 2] = s.scale * pts[:, 2]
    return out.astype(np.float32)
