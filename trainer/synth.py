"""The built-in synthetic dancer: frames, MediaPipe-layout landmarks and exact ground-truth optical flow.

The dancer (:class:`trainer.motion.DanceMotion`) is drawn as a set of rigid pieces over a static textured
background, composited far-to-near:

* limbs, hands, feet, neck, ears and joint discs are *affine* pieces: a part-local sprite (texture and
  shading baked in, anti-aliased by supersampling) mapped to the image by a 2x3 transform per frame;
* the torso is a tapered elliptic cylinder and the head an ellipsoid, both turning with the facing (yaw):
  their textures (striped / checked shirt, face, hair) live on the surface, so a pixel's surface point is
  known exactly and can be followed to the previous frame.

Every pixel therefore knows which part covers it (the part-id map, background = 0) and where its surface
point was one frame earlier, which gives the exact backward flow ``frame[t](p) ~ frame[t-1](p + flow[t](p))``
(background: 0). The confidence is 255 where that point was visible at t-1 (the part-id map at t-1 at
``p + flow`` equals the part, and the surface point faced the camera), else 0.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import cv2
import numpy as np

from models.landmarks import POSE_NUM_LANDMARKS
from models.motion import (
    FIGURE_SCALE, FOOT_BACK, FOOT_FWD, FOREARM, HAND, HEAD_RX, HEAD_RY, HEAD_UP, LM, SHIN, THIGH, TORSO_A,
    TORSO_BOTTOM_Y, TORSO_DEPTH, TORSO_TOP_Y, TORSO_V, UPPER_ARM, DanceMotion, Pose, pose_landmarks, rot2,
)

from .dataset import DatasetWriter

PART_NAMES = (
    "neck", "torso", "head", "ear_L", "ear_R",
    "shoulder_L", "upper_arm_L", "elbow_L", "forearm_L", "hand_L",
    "shoulder_R", "upper_arm_R", "elbow_R", "forearm_R", "hand_R",
    "thigh_L", "knee_L", "shin_L", "foot_L",
    "thigh_R", "knee_R", "shin_R", "foot_R",
)
PART_ID = {n: i + 1 for i, n in enumerate(PART_NAMES)}   # 0 = background

TORSO_LEN = TORSO_BOTTOM_Y - TORSO_TOP_Y
# light direction in view coords (x right, y down, z toward the camera): from the upper left front
_LIGHT = np.array([-0.45, -0.40, 0.80]) / np.linalg.norm([-0.45, -0.40, 0.80])
_SS = 3   # supersampling of sprites and textures

# limb sprites: (nominal length, half-width at start, at end, extension before start, after end)
_ARM_U = (UPPER_ARM, 0.036, 0.029, 0.0, 0.0)
_ARM_F = (FOREARM, 0.028, 0.021, 0.0, 0.012)
_LEG_T = (THIGH, 0.060, 0.044, 0.0, 0.0)
_LEG_S = (SHIN, 0.043, 0.030, 0.0, 0.035)
_NECK = (HEAD_UP, 0.029, 0.027, 0.03, 0.0)


# ------------------------------------------------------------------------------------------------------
# appearance
# ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Appearance:
    skin: tuple
    hair: tuple
    hair_long: bool
    eyes: tuple
    lips: tuple
    shirt1: tuple
    shirt2: tuple
    pattern: str        # "hstripes", "vstripes" or "checks"
    stripe: float       # pattern period in body units
    long_sleeves: bool
    trousers: tuple
    shorts: bool
    shoes: tuple
    soles: tuple
    wall1: tuple
    wall2: tuple
    grout: tuple
    wood: tuple
    tile: float
    poster: tuple


def make_appearance(seed: int) -> Appearance:
    r = np.random.default_rng([seed & 0xFFFFFFFF, 7919])

    def pick(palette, jitter=10):
        c = np.array(palette[int(r.integers(len(palette)))], float)
        return tuple(np.clip(c + r.uniform(-jitter, jitter, 3), 0, 255).tolist())

    shirts = [(200, 40, 50), (40, 90, 200), (30, 150, 90), (240, 190, 40), (130, 60, 170), (240, 120, 30),
              (20, 160, 170), (235, 235, 230), (45, 45, 55), (230, 90, 140)]
    i1 = int(r.integers(len(shirts)))
    i2 = (i1 + 1 + int(r.integers(len(shirts) - 1))) % len(shirts)
    jit = lambda c: tuple(np.clip(np.array(c, float) + r.uniform(-12, 12, 3), 0, 255).tolist())  # noqa: E731
    return Appearance(
        skin=pick([(250, 218, 190), (236, 188, 150), (220, 165, 120), (190, 130, 90), (140, 90, 60), (100, 64, 44)], 6),
        hair=pick([(28, 20, 16), (66, 42, 24), (112, 72, 36), (196, 156, 88), (150, 58, 30), (24, 24, 30)]),
        hair_long=bool(r.random() < 0.4),
        eyes=pick([(70, 45, 25), (55, 95, 150), (60, 105, 70)]),
        lips=pick([(180, 80, 80), (160, 70, 75), (200, 100, 100)]),
        shirt1=jit(shirts[i1]), shirt2=jit(shirts[i2]),
        pattern=("hstripes", "vstripes", "checks")[int(r.integers(3))],
        stripe=float(r.uniform(0.04, 0.06)),
        long_sleeves=bool(r.random() < 0.5),
        trousers=pick([(45, 60, 100), (32, 32, 38), (125, 104, 72), (92, 92, 98), (120, 40, 45), (40, 80, 60)]),
        shorts=bool(r.random() < 0.3),
        shoes=pick([(235, 235, 235), (30, 30, 30), (170, 40, 40), (40, 60, 150)]),
        soles=pick([(250, 250, 250), (60, 60, 60)]),
        wall1=pick([(200, 190, 170), (170, 190, 200), (205, 180, 175), (180, 200, 175), (215, 205, 190)], 15),
        wall2=pick([(150, 140, 130), (120, 135, 150), (160, 130, 120), (130, 150, 125)], 15),
        grout=pick([(235, 235, 230), (90, 85, 80)], 5),
        wood=pick([(160, 110, 65), (185, 140, 90), (120, 80, 50), (200, 175, 140)], 10),
        tile=float(r.uniform(0.07, 0.11)),
        poster=(float(r.uniform(0.06, 0.2)), float(r.uniform(0.12, 0.28)), float(r.random() < 0.5)),
    )


# ------------------------------------------------------------------------------------------------------
# sprites and textures
# ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Sprite:
    rgba: np.ndarray       # float32 (h, w, 4), premultiplied alpha, colours 0..255
    origin: tuple          # sprite-continuous coords (px) of local (0, 0)
    res: float             # sprite px per body unit

    def local_to_sprite(self) -> np.ndarray:
        return np.array([[self.res, 0, self.origin[0]], [0, self.res, self.origin[1]], [0, 0, 1.0]])


def _supersample(w: int, h: int, x0: float, y0: float, res: float, fn) -> np.ndarray:
    """Evaluate fn(X, Y) -> (rgb, alpha) on a supersampled grid of local coords, return premultiplied rgba."""
    xs = x0 + (np.arange(w * _SS) + 0.5) / (res * _SS)
    ys = y0 + (np.arange(h * _SS) + 0.5) / (res * _SS)
    X, Y = np.meshgrid(xs, ys)
    rgb, a = fn(X, Y)
    a = np.clip(a, 0.0, 1.0).astype(np.float32)
    pm = np.dstack([rgb.astype(np.float32) * a[..., None], a])
    return cv2.resize(pm, (w, h), interpolation=cv2.INTER_AREA)


def _make_sprite(x0, x1, y0, y1, res, fn) -> Sprite:
    pad = 1.5 / res
    x0, y0 = x0 - pad, y0 - pad
    w = int(math.ceil((x1 + pad - x0) * res))
    h = int(math.ceil((y1 + pad - y0) * res))
    rgba = _supersample(w, h, x0, y0, res, fn)
    return Sprite(rgba, (-x0 * res, -y0 * res), res)


def _col(c) -> np.ndarray:
    return np.asarray(c, np.float64)


def _mix(mask, c_in, base):
    m = np.asarray(mask, np.float64)[..., None]
    return base * (1 - m) + _col(c_in) * m


def _fill(shape, c) -> np.ndarray:
    return np.broadcast_to(_col(c), shape + (3,)).copy()


def _noise(shape, cells, rng, amp=1.0) -> np.ndarray:
    """Smooth value noise in [-amp, amp]."""
    h, w = shape
    g = rng.uniform(-1, 1, (max(2, int(h / cells) + 2), max(2, int(w / cells) + 2))).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC) * amp


def _pattern(app: Appearance, x, y, seamless_x: float | None = None):
    """Shirt pattern at local coords (units); returns rgb."""
    px = app.stripe
    if seamless_x:
        px = seamless_x / max(1, round(seamless_x / app.stripe))
    sx = (np.mod(x / px, 1.0) < 0.5).astype(np.float64)
    sy = (np.mod(y / app.stripe, 1.0) < 0.5).astype(np.float64)
    c1, c2 = _col(app.shirt1), _col(app.shirt2)
    if app.pattern == "hstripes":
        m = sy
    elif app.pattern == "vstripes":
        m = sx
    else:
        m = 0.5 * (sx + sy)
    return c1 * (1 - m[..., None]) + c2 * m[..., None]


def _cyl_shade(t):
    """Light-to-dark shading across a limb; t in [-1, 1] across its width."""
    t = np.clip(t, -1, 1)
    return 0.50 + 0.50 * np.sqrt(np.clip(1 - (t + 0.30) ** 2 / 1.69, 0, 1)) ** 0.8


# -- sprite shapes: fn(X, Y) -> (rgb, alpha) in part-local body units, for _make_sprite ----------------------------
def _limb_fn(L, w0, w1, e0, e1, colour_fn, round_end=False):
    """A tapered limb along +X (half-width w0 at 0 .. w1 at L, extended by e0 before and e1 after, the far end
    rounded if ``round_end``), coloured by ``colour_fn(X, Y, half_width)`` and shaded like a cylinder."""
    def fn(X, Y):
        hw = w0 + (w1 - w0) * np.clip(X / L, 0, 1)
        inside = (np.abs(Y) <= hw) & (X >= -e0) & (X <= L + e1)
        if round_end and e1 > 0:
            dx = np.maximum(X - (L + e1 - hw), 0)
            inside &= dx ** 2 + Y ** 2 <= hw ** 2
        rgb = colour_fn(X, Y, hw)
        return rgb * _cyl_shade(Y / hw)[..., None], inside.astype(np.float64)
    return fn


def _skin_colour(app: Appearance):
    """Limb colour: bare skin."""
    skin = _col(app.skin)
    return lambda X, Y, hw: _fill(X.shape, skin)


def _upper_sleeve_colour(app: Appearance):
    """Upper-arm colour: the shirt pattern; short sleeves end at 45 % of the upper arm with a trim."""
    skin = _col(app.skin)

    def fn(X, Y, hw):
        rgb = _pattern(app, Y * 1.3, X)
        if not app.long_sleeves:
            cut = UPPER_ARM * 0.45
            rgb = _mix(X > cut, skin, rgb)
            rgb = _mix((X > cut - 0.012) & (X <= cut), app.shirt2 if app.pattern != "hstripes" else app.shirt1, rgb)
        return rgb
    return fn


def _lower_sleeve_colour(app: Appearance):
    """Forearm colour: skin, or (long sleeves) the shirt pattern continued from the upper arm, with a cuff."""
    skin = _col(app.skin)

    def fn(X, Y, hw):
        if not app.long_sleeves:
            return _fill(X.shape, skin)
        rgb = _pattern(app, Y * 1.3, X + UPPER_ARM)
        return _mix(X > FOREARM - 0.018, app.shirt2, rgb)
    return fn


def _trouser_colour(app: Appearance, jean: np.ndarray, length: float, is_thigh: bool):
    """Thigh / shin colour: trousers with a denim-like noise (``jean``) and a seam; shorts leave the knee and
    the shin bare (white socks at the bottom)."""
    skin, tr = _col(app.skin), _col(app.trousers)

    def fn(X, Y, hw):
        n = cv2.resize(jean, (X.shape[1], X.shape[0]), interpolation=cv2.INTER_LINEAR)
        rgb = tr[None, None] * (1 + 0.05 * n[..., None])
        seam = np.abs(Y - 0.55 * hw) < 0.0035
        rgb = _mix(seam, tr * 0.75, rgb)
        if app.shorts:
            if is_thigh:
                rgb = _mix(X > 0.55 * THIGH, skin, rgb)
            else:
                rgb = _mix(X < length - 0.03, skin, _fill(X.shape, (235, 235, 235)))
        return rgb
    return fn


def _limb_sprite(spec, colour_fn, res: float, round_end: bool = False) -> Sprite:
    """The sprite of a limb ``spec = (length, half-width at start, at end, extension before, after)``."""
    L, w0, w1, e0, e1 = spec
    wm = max(w0, w1)
    return _make_sprite(-e0, L + e1, -wm, wm, res, _limb_fn(L, w0, w1, e0, e1, colour_fn, round_end))


def _disc_sprite(app: Appearance, r: float, colour, res: float) -> Sprite:
    """A shaded joint disc of radius ``r`` in ``colour`` (None: the shirt pattern)."""
    def fn(X, Y):
        rho = np.sqrt(X ** 2 + Y ** 2) / r
        rgb = _pattern(app, X, Y) if colour is None else _fill(X.shape, colour)
        return rgb * _cyl_shade(X / r)[..., None] * (1 - 0.1 * rho[..., None] ** 2), \
            (rho <= 1).astype(np.float64)
    return _make_sprite(-r, r, -r, r, res, fn)


def _hand_fn(side: int, skin: np.ndarray):
    """A hand along +X from the wrist (palm, wrist and thumb ellipses, finger gaps); ``side`` mirrors it."""
    def fn(X, Y):
        Yl = Y * side
        palm = ((X - 0.046) / 0.046) ** 2 + (Yl / 0.024) ** 2 <= 1
        wrist = (X >= -0.01) & (X <= 0.03) & (np.abs(Yl) <= 0.019)
        c, s = math.cos(0.6), math.sin(0.6)
        tx, ty = X - 0.030, Yl - 0.020
        thumb = ((tx * c + ty * s) / 0.026) ** 2 + ((-tx * s + ty * c) / 0.010) ** 2 <= 1
        inside = palm | wrist | thumb
        rgb = _fill(X.shape, skin) * _cyl_shade(Yl / 0.026)[..., None]
        gaps = (X > 0.062) & (np.abs(np.mod(Yl + 0.0125, 0.0125) - 0.00625) < 0.0011) & (np.abs(Yl) < 0.016)
        rgb = _mix(gaps, skin * 0.7, rgb)
        return rgb, inside.astype(np.float64)
    return fn


def _shoe_fn(app: Appearance):
    """A shoe in side view: X along heel -> toe (0 = heel landmark), +Y toward the sole; sole and laces."""
    shoe, sole = _col(app.shoes), _col(app.soles)
    FL = FOOT_BACK + FOOT_FWD

    def fn(X, Y):
        hh = 0.030 - 0.006 * np.clip(X / FL, 0, 1)
        xc = np.clip(X, -0.005 + hh, FL + 0.01 - hh)
        inside = (X - xc) ** 2 + (Y + 0.002) ** 2 * (hh / hh) <= hh ** 2
        inside |= (X >= -0.005 + hh) & (X <= FL + 0.01 - hh) & (np.abs(Y + 0.002) <= hh)
        rgb = _fill(X.shape, shoe) * _cyl_shade(-Y / 0.03)[..., None]
        rgb = _mix(Y > hh - 0.011, sole, rgb)
        laces = (X > 0.05) & (X < 0.10) & (Y < -0.012) & (np.abs(np.mod(X, 0.012) - 0.006) < 0.0018)
        rgb = _mix(laces, sole * 0.9, rgb)
        return rgb, inside.astype(np.float64)
    return fn


def _ear_fn(skin: np.ndarray):
    """An ear: a skin ellipse with a darker inner fold."""
    def fn(X, Y):
        rho = (X / 0.016) ** 2 + (Y / 0.026) ** 2
        inner = (X / 0.008) ** 2 + ((Y - 0.002) / 0.015) ** 2
        rgb = _fill(X.shape, skin) * (0.93 - 0.12 * np.exp(-inner)[..., None])
        return rgb, (rho <= 1).astype(np.float64)
    return fn


class DancerSprites:
    """All sprites/textures of one appearance at one frame size."""

    def __init__(self, app: Appearance, px_per_unit: float, seed: int):
        # keep the clothing pattern at >= ~7 px per period so it stays resolvable at small frame sizes
        app = dataclasses.replace(app, stripe=max(app.stripe, 7.0 / px_per_unit))
        self.app = app
        res = px_per_unit * 1.25
        self.res = res
        rng = np.random.default_rng([seed & 0xFFFFFFFF, 104729])   # draws in order: jeans, torso, head
        self._make_limbs(res, rng.uniform(-1, 1, (64, 64)).astype(np.float32))
        self._make_joints(res)
        skin = _col(app.skin)
        self.hand = {s: _make_sprite(-0.012, HAND + 0.01, -0.04, 0.04, res, _hand_fn(s, skin)) for s in (1, -1)}
        self.shoe = _make_sprite(-0.01, FOOT_BACK + FOOT_FWD + 0.015, -0.035, 0.035, res, _shoe_fn(app))
        self.ear = _make_sprite(-0.017, 0.017, -0.027, 0.027, res, _ear_fn(skin))
        self.torso_tex = self._torso_texture(px_per_unit * 1.4, rng)
        self.head_tex = self._head_texture(px_per_unit * 1.6, rng)

    def _make_limbs(self, res: float, jean: np.ndarray) -> None:
        """Sprites of the upper arm, forearm, thigh, shin and neck (``jean``: the trousers' noise)."""
        app = self.app
        self.upper_arm = _limb_sprite(_ARM_U, _upper_sleeve_colour(app), res)
        self.forearm = _limb_sprite(_ARM_F, _lower_sleeve_colour(app), res, round_end=True)
        self.thigh = _limb_sprite(_LEG_T, _trouser_colour(app, jean, THIGH, True), res)
        self.shin = _limb_sprite(_LEG_S, _trouser_colour(app, jean, SHIN, False), res, round_end=True)
        self.neck = _limb_sprite(_NECK, _skin_colour(app), res)

    def _make_joints(self, res: float) -> None:
        """Joint discs: shoulder (shirt), elbow (shirt or skin), knee (trousers or skin)."""
        app = self.app
        self.shoulder = _disc_sprite(app, _ARM_U[1], None, res)
        self.elbow = _disc_sprite(app, _ARM_F[1], None if app.long_sleeves else app.skin, res)
        self.knee = _disc_sprite(app, _LEG_T[2], app.skin if app.shorts else app.trousers, res)

    # -- surface textures (cylinder / ellipsoid), stored with 2 wrap-around columns on each side --------
    def _torso_texture(self, res: float, rng) -> np.ndarray:
        app = self.app
        circ = 2 * math.pi * 0.125
        w = max(16, int(round(circ * res)))
        h = max(8, int(round(TORSO_LEN * res)))
        skin = _col(app.skin)
        noise = _noise((h * _SS, w * _SS), 9 * _SS, rng, 1.0)
        noise = (noise + np.roll(noise[:, ::-1], 0, 1)) * 0.5   # (keeps it smooth; seam is at the back)

        def fn(Xn, Yn):
            psi = Xn * 2 * math.pi - math.pi            # Xn, Yn in [0, 1]
            v = Yn
            yu = v * TORSO_LEN
            xu = psi * 0.125
            rgb = _pattern(app, xu, yu, seamless_x=circ)
            rgb = rgb * (1 + 0.05 * noise[: Xn.shape[0], : Xn.shape[1], None])
            # neckline (front) and collar trim
            nf = 0.105 * np.sqrt(np.clip(1 - (psi / 0.6) ** 2, 0, 1))
            nb = 0.035 * np.sqrt(np.clip(1 - ((np.abs(psi) - math.pi) / 0.45) ** 2, 0, 1))
            neck_v = np.maximum(nf, nb)
            trim = app.shirt2 if app.pattern == "hstripes" else app.shirt1
            rgb = _mix((v < neck_v + 0.022) & (neck_v > 0), trim, rgb)
            rgb = _mix(v < neck_v, skin, rgb)
            # belt and trousers / shorts
            belt0, belt1 = 0.735, 0.775
            rgb = _mix(v > belt1, app.trousers, rgb)
            rgb = _mix((v >= belt0) & (v <= belt1), (70, 45, 30), rgb)
            rgb = _mix((v >= belt0 + 0.004) & (v <= belt1 - 0.004) & (np.abs(psi) < 0.13), (210, 190, 120), rgb)
            rgb = _mix((v > 0.83) & (np.abs(psi - 0.04) < 0.025), _col(app.trousers) * 0.7, rgb)
            return rgb, np.ones_like(v)

        tex = _supersample(w, h, 0.0, 0.0, 1.0, lambda X, Y: fn(X / w, Y / h))
        return np.concatenate([tex[:, -2:], tex, tex[:, :2]], 1)

    def _head_texture(self, res: float, rng) -> np.ndarray:
        app = self.app
        w = max(16, int(round(2 * math.pi * HEAD_RX * res)))
        h = max(8, int(round(math.pi * HEAD_RY * res)))
        skin, hair = _col(app.skin), _col(app.hair)
        strands = rng.uniform(-1, 1, (8, 64)).astype(np.float32)

        def fn(Xn, Yn):
            al = Xn * 2 * math.pi - math.pi          # longitude, + toward the person's left
            be = Yn * math.pi - math.pi / 2          # latitude, + down
            aa = np.abs(al)
            rgb = _fill(al.shape, skin)
            # cheeks, chin and eye sockets
            rgb = rgb * (1 - 0.06 * np.exp(-((aa - 0.32) ** 2 / 0.02 + (be + 0.05) ** 2 / 0.01)))[..., None]
            blush = np.exp(-((aa - 0.45) ** 2 / 0.02 + (be - 0.25) ** 2 / 0.01))
            rgb = rgb * (1 - 0.12 * blush[..., None]) + _col((230, 110, 110)) * 0.12 * blush[..., None]
            # eyes
            for side in (1, -1):
                da, db = al - side * 0.31, be + 0.07
                eye = (da / 0.115) ** 2 + (db / 0.052) ** 2 <= 1
                rgb = _mix(eye, (250, 250, 248), rgb)
                iris = (da / 0.055) ** 2 + (db / 0.05) ** 2 <= 1
                rgb = _mix(eye & iris, app.eyes, rgb)
                rgb = _mix(eye & ((da / 0.026) ** 2 + (db / 0.026) ** 2 <= 1), (15, 12, 12), rgb)
                lid = ((da / 0.125) ** 2 + (db / 0.062) ** 2 <= 1) & ~eye & (db < 0.0)
                rgb = _mix(lid, skin * 0.45, rgb)
                brow_c = -0.205 - 0.035 * np.cos(np.clip(da / 0.17, -1.4, 1.4))
                brow = (np.abs(be - brow_c - 0.03) < 0.022) & (np.abs(da) < 0.17)
                rgb = _mix(brow, hair * 0.8, rgb)
            # nose: shaded ridge, tip and nostrils
            nose = np.exp(-((al + 0.045) ** 2 / 0.0009)) * ((be > -0.02) & (be < 0.2))
            rgb = rgb * (1 - 0.22 * nose[..., None])
            nost = ((np.abs(aa - 0.05) / 0.03) ** 2 + ((be - 0.205) / 0.018) ** 2) <= 1
            rgb = _mix(nost, skin * 0.55, rgb)
            # mouth
            mouth = (al / 0.2) ** 2 + ((be - 0.39) / 0.05) ** 2 <= 1
            rgb = _mix(mouth, app.lips, rgb)
            rgb = _mix(mouth & (np.abs(be - 0.39 + 0.012 * np.cos(al / 0.2 * 1.5)) < 0.011), _col(app.lips) * 0.45, rgb)
            # hair: hairline (face), sides above the ears, back; long hair reaches the neck
            line = np.interp(aa, [0.0, 0.5, 0.9, 1.25, 1.75, 2.1, math.pi],
                             [-0.52, -0.5, -0.38, 0.0, 0.05, 0.9 if app.hair_long else 0.55,
                              1.6 if app.hair_long else 0.75])
            fringe = 0.05 * np.abs(np.sin(al * 9.0)) * (aa < 0.9)
            hair_m = be < line + fringe
            sn = cv2.resize(strands, (al.shape[1], al.shape[0]), interpolation=cv2.INTER_LINEAR)
            hrgb = hair[None, None] * (1 + 0.22 * sn[..., None] + 0.12 * np.sin(al * 40)[..., None])
            rgb = np.where(hair_m[..., None], hrgb, rgb)
            return rgb, np.ones_like(al)

        tex = _supersample(w, h, 0.0, 0.0, 1.0, lambda X, Y: fn(X / w, Y / h))
        return np.concatenate([tex[:, -2:], tex, tex[:, :2]], 1)


def make_background(size: int, app: Appearance, seed: int) -> np.ndarray:
    """Static background: tiled wall with a framed picture, skirting board and a wooden floor in perspective."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 31337])
    ss = 2
    n = size * ss
    c = (np.arange(n) + 0.5) / n
    X, Y = np.meshgrid(c, c)
    floor_y = 0.70
    # wall
    t = np.clip(Y / floor_y, 0, 1)[..., None]
    wall = _col(app.wall1) * (1 - t) + _col(app.wall2) * t
    wall = wall * (1 - 0.12 * ((X - 0.5) ** 2)[..., None] * 4)
    th = app.tile
    tw = th * 1.6
    row = np.floor(Y / th)
    xx = X / tw + 0.5 * np.mod(row, 2)
    col = np.floor(xx)
    lut = rng.uniform(0.9, 1.08, (64, 64))
    shade = lut[row.astype(int) % 64, col.astype(int) % 64]
    wall = wall * shade[..., None]
    gw = 0.006
    grout = (np.mod(Y, th) < gw) | (np.mod(xx, 1.0) * tw < gw)
    wall = _mix(grout, app.grout, wall)
    wall = wall * (1 + 0.04 * _noise((n, n), 6 * ss, rng)[..., None])
    # framed picture
    px0, pw, left = app.poster
    x0 = (0.06 if left else 0.94 - pw) + 0.0 * px0
    y0, ph = 0.10 + px0 * 0.5, pw * 0.8
    inside = (X >= x0) & (X <= x0 + pw) & (Y >= y0) & (Y <= y0 + ph)
    inner = (X >= x0 + 0.012) & (X <= x0 + pw - 0.012) & (Y >= y0 + 0.012) & (Y <= y0 + ph - 0.012)
    wall = _mix(inside, (60, 45, 35), wall)
    u = np.clip((Y - y0) / ph, 0, 1)
    sky = np.stack([120 + 100 * u, 160 + 60 * u, 230 - 40 * u], -1)
    hill = Y > y0 + ph * (0.65 + 0.12 * np.sin((X - x0) / pw * 7 + px0 * 20))
    pic = np.where(hill[..., None], _col((70, 130, 60)) * (1.1 - 0.4 * u[..., None]), sky)
    sun = (X - (x0 + pw * 0.72)) ** 2 + (Y - (y0 + ph * 0.3)) ** 2 < (pw * 0.1) ** 2
    pic = _mix(sun, (250, 220, 120), pic)
    wall = np.where(inner[..., None], pic, wall)
    # floor: planks converging to a vanishing point above the floor line
    vy = 0.30
    dy = np.maximum(Y - vy, 1e-3)
    fx = (X - 0.5) / dy
    fz = 1.0 / dy
    bw = 0.16
    board = np.floor(fx / bw)
    off = rng.uniform(0, 3, 256)[board.astype(int) % 256]
    plank = np.floor(fz / 1.3 + off)
    blut = rng.uniform(0.82, 1.1, (256, 256))[board.astype(int) % 256, plank.astype(int) % 256]
    grain = 1 + 0.06 * np.sin(fx * 90 + 3 * np.sin(fz * 4 + board))
    floor = _col(app.wood) * (blut * grain)[..., None]
    gap = (np.mod(fx / bw, 1.0) * bw * dy < 0.0035) | (np.mod(fz / 1.3 + off, 1.0) * 1.3 * dy * dy < 0.004 * dy)
    floor = _mix(gap, _col(app.wood) * 0.45, floor)
    fade = np.clip((Y - floor_y) / (1 - floor_y), 0, 1)[..., None]
    floor = floor * (0.72 + 0.38 * fade)
    img = np.where((Y >= floor_y)[..., None], floor, wall)
    skirting = (Y >= floor_y - 0.022) & (Y < floor_y)
    img = _mix(skirting, (238, 236, 230), img)
    img = _mix((Y >= floor_y - 0.024) & (Y < floor_y - 0.019), (150, 150, 145), img)
    img = cv2.resize(img.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(img, 0, 255).astype(np.float32)


# ------------------------------------------------------------------------------------------------------
# per-frame part geometry
# ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class AffinePart:
    name: str
    sprite: Sprite
    M: np.ndarray          # (2, 3): sprite-continuous coords -> image-continuous pixel coords
    z: float


@dataclasses.dataclass
class CylinderPart:        # the torso
    name: str
    top: np.ndarray        # (2,) px
    bottom: np.ndarray     # (2,) px
    yaw: float
    S: float               # px per body unit
    z: float


@dataclasses.dataclass
class EllipsoidPart:       # the head
    name: str
    center: np.ndarray     # (2,) px
    roll: float
    yaw: float
    S: float
    z: float


def _limb_M(sprite: Sprite, p0, p1, L, S, min_frac=0.2, fallback=(0.0, 1.0), sole_down=False) -> np.ndarray:
    d = np.asarray(p1, float) - np.asarray(p0, float)
    ln = float(np.hypot(*d))
    u = d / ln if ln > 1e-6 else np.asarray(fallback, float)
    if ln < min_frac * L * S:
        d = u * (min_frac * L * S)
    n = np.array([u[1], -u[0]])
    if sole_down and n[1] < 0:
        n = -n
    A = np.array([[d[0] / L, n[0] * S, p0[0]], [d[1] / L, n[1] * S, p0[1]]])
    return (np.vstack([A, [0, 0, 1]]) @ np.linalg.inv(sprite.local_to_sprite()))[:2]


def _sim_M(sprite: Sprite, c, angle, S, sx=1.0) -> np.ndarray:
    R = rot2(angle) * S
    A = np.hstack([R @ np.diag([sx, 1.0]), np.asarray(c, float)[:, None]])
    return (np.vstack([A, [0, 0, 1]]) @ np.linalg.inv(sprite.local_to_sprite()))[:2]


class DancerRenderer:
    """Renders poses of :class:`trainer.motion.DanceMotion` at one frame size with one appearance."""

    def __init__(self, size: int, seed: int = 0):
        self.size = int(size)
        self.seed = int(seed)
        self.app = make_appearance(seed)
        self.S = FIGURE_SCALE * self.size   # px per body unit
        self.sprites = DancerSprites(self.app, self.S, seed)
        self.background = make_background(self.size, self.app, seed)
        # pixel-centre grids (continuous coords)
        self._grid = np.arange(self.size, dtype=np.float32) + 0.5

    # -- geometry -------------------------------------------------------------------------------------
    def parts(self, pose: Pose) -> list:
        sz, S, sp = self.size, pose.scale * self.size, self.sprites
        P = lambda name: pose.xy[LM[name]] * sz  # noqa: E731
        D = lambda name: float(pose.depth[LM[name]])  # noqa: E731
        parts = [
            AffinePart("neck", sp.neck, _limb_M(sp.neck, pose.neck * sz, pose.head_center * sz, _NECK[0], S), -0.05),
            CylinderPart("torso", pose.torso_top * sz, pose.torso_bottom * sz, pose.yaw, S, 0.0),
            EllipsoidPart("head", pose.head_center * sz, pose.head_roll, pose.head_yaw, S, 0.02),
        ]
        for side, s, nm in ((1, "L", "left"), (-1, "R", "right")):
            # ears: thin when seen edge-on, in front of the head when turned toward the camera
            ear_facing = math.sin(pose.head_yaw) * side          # > 0: this ear turns toward the camera
            sx = 0.3 + 0.7 * abs(math.sin(pose.head_yaw))
            parts.append(AffinePart(f"ear_{s}", sp.ear, _sim_M(sp.ear, P(f"{nm}_ear"), pose.head_roll, S, sx),
                                    0.02 + (0.001 if ear_facing > 0.3 else -0.001)))
            b = 0.03
            sh, el, wr = P(f"{nm}_shoulder"), P(f"{nm}_elbow"), P(f"{nm}_wrist")
            tip = 0.5 * (P(f"{nm}_index") + P(f"{nm}_pinky"))
            parts += [
                AffinePart(f"shoulder_{s}", sp.shoulder, _sim_M(sp.shoulder, sh, pose.torso_roll, S),
                           D(f"{nm}_shoulder") + b),
                AffinePart(f"upper_arm_{s}", sp.upper_arm, _limb_M(sp.upper_arm, sh, el, UPPER_ARM, S),
                           0.5 * (D(f"{nm}_shoulder") + D(f"{nm}_elbow")) + b + 0.001),
                AffinePart(f"elbow_{s}", sp.elbow, _sim_M(sp.elbow, el, 0.0, S), D(f"{nm}_elbow") + b + 0.002),
                AffinePart(f"forearm_{s}", sp.forearm, _limb_M(sp.forearm, el, wr, FOREARM, S),
                           0.5 * (D(f"{nm}_elbow") + D(f"{nm}_wrist")) + b + 0.003),
                AffinePart(f"hand_{s}", sp.hand[side], _limb_M(sp.hand[side], wr, tip, HAND, S, 0.35),
                           0.5 * (D(f"{nm}_wrist") + D(f"{nm}_index")) + b + 0.004),
            ]
            hip, kn, an = P(f"{nm}_hip"), P(f"{nm}_knee"), P(f"{nm}_ankle")
            heel, toe = P(f"{nm}_heel"), P(f"{nm}_foot_index")
            b = -0.03
            parts += [
                AffinePart(f"thigh_{s}", sp.thigh, _limb_M(sp.thigh, hip, kn, THIGH, S),
                           0.5 * (D(f"{nm}_hip") + D(f"{nm}_knee")) + b),
                AffinePart(f"knee_{s}", sp.knee, _sim_M(sp.knee, kn, 0.0, S),
                           max(0.5 * (D(f"{nm}_hip") + D(f"{nm}_knee")), 0.5 * (D(f"{nm}_knee") + D(f"{nm}_ankle")))
                           + b + 0.002),
                AffinePart(f"shin_{s}", sp.shin, _limb_M(sp.shin, kn, an, SHIN, S),
                           0.5 * (D(f"{nm}_knee") + D(f"{nm}_ankle")) + b + 0.001),
                AffinePart(f"foot_{s}", sp.shoe, _limb_M(sp.shoe, heel, toe, FOOT_BACK + FOOT_FWD, S, 0.45,
                                                         fallback=(side * 1.0, 0.0), sole_down=True),
                           0.5 * (D(f"{nm}_heel") + D(f"{nm}_foot_index")) + b + 0.004),
            ]
        return parts

    # -- per-part sampling ----------------------------------------------------------------------------
    def _bbox(self, part) -> tuple[int, int, int, int] | None:
        if isinstance(part, AffinePart):
            h, w = part.sprite.rgba.shape[:2]
            corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], float) @ part.M.T
            lo, hi = corners.min(0), corners.max(0)
        elif isinstance(part, CylinderPart):
            r = TORSO_A.max() * part.S
            lo = np.minimum(part.top, part.bottom) - r
            hi = np.maximum(part.top, part.bottom) + r
        else:
            r = max(HEAD_RX, HEAD_RY) * part.S
            lo, hi = part.center - r, part.center + r
        x0, y0 = max(0, int(math.floor(lo[0])) - 1), max(0, int(math.floor(lo[1])) - 1)
        x1, y1 = min(self.size, int(math.ceil(hi[0])) + 1), min(self.size, int(math.ceil(hi[1])) + 1)
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1

    def _sample(self, part, prev, box):
        """-> premultiplied rgb (h, w, 3), alpha (h, w), flow (h, w, 2), visible-at-t-1 (h, w) bool."""
        x0, y0, x1, y1 = box
        gx, gy = self._grid[x0:x1], self._grid[y0:y1]
        if isinstance(part, AffinePart):
            Minv = cv2.invertAffineTransform(part.M)
            Q = Minv.copy()
            Q[:, 2] = Minv[:, :2] @ np.array([x0 + 0.5, y0 + 0.5]) + Minv[:, 2] - 0.5
            src = cv2.warpAffine(part.sprite.rgba, Q, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
            rgb, alpha = src[..., :3], src[..., 3]
            if prev is None:
                flow = np.zeros(alpha.shape + (2,), np.float32)
            else:
                F = prev.M[:, :2] @ Minv                       # (2, 3): image_t -> image_{t-1}
                F[:, 2] += prev.M[:, 2]
                fx = (F[0, 0] - 1) * gx[None, :] + F[0, 1] * gy[:, None] + F[0, 2]
                fy = F[1, 0] * gx[None, :] + (F[1, 1] - 1) * gy[:, None] + F[1, 2]
                flow = np.stack([fx, fy], -1).astype(np.float32)
            return rgb, alpha, flow, np.ones(alpha.shape, bool)
        X, Y = np.meshgrid(gx.astype(np.float64), gy.astype(np.float64))
        if isinstance(part, CylinderPart):
            return self._sample_torso(part, prev, X, Y)
        return self._sample_head(part, prev, X, Y)

    def _sample_torso(self, part: CylinderPart, prev: CylinderPart | None, X, Y):
        S = part.S
        ax = part.bottom - part.top
        Lpx = float(np.hypot(*ax))
        d = ax / Lpx
        n = np.array([d[1], -d[0]])
        rx, ry = X - part.top[0], Y - part.top[1]
        v = (rx * d[0] + ry * d[1]) / Lpx
        x = (rx * n[0] + ry * n[1]) / S
        a = np.interp(v, TORSO_V, TORSO_A)
        b = TORSO_DEPTH * a
        c, s = math.cos(part.yaw), math.sin(part.yaw)
        R = np.sqrt((a * c) ** 2 + (b * s) ** 2)
        delta = np.arctan2(b * s, a * c)
        asn = np.arcsin(np.clip(x / R, -1, 1))
        psi1, psi2 = asn - delta, math.pi - asn - delta
        z1 = -a * np.sin(psi1) * s + b * np.cos(psi1) * c
        z2 = -a * np.sin(psi2) * s + b * np.cos(psi2) * c
        psi = np.where(z1 >= z2, psi1, psi2)
        psi = np.mod(psi + math.pi, 2 * math.pi) - math.pi
        geo = np.clip(np.minimum(np.minimum((R - np.abs(x)) * S, v * Lpx), (1 - v) * Lpx) + 0.5, 0, 1)
        tex = self.sprites.torso_tex
        th, tw = tex.shape[0], tex.shape[1] - 4
        mx = ((psi / (2 * math.pi) + 0.5) * tw - 0.5 + 2).astype(np.float32)
        my = (np.clip(v, 0, 1) * th - 0.5).astype(np.float32)
        src = cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # view-dependent shading from the surface normal
        nbx, nbz = np.sin(psi) / a, np.cos(psi) / b
        nn = np.sqrt(nbx ** 2 + nbz ** 2)
        nbx, nbz = nbx / nn, nbz / nn
        nx, nz = nbx * c + nbz * s, -nbx * s + nbz * c
        lx = _LIGHT[0] * n[0] + _LIGHT[1] * n[1]     # light in the torso's lateral direction
        shade = 0.42 + 0.62 * np.clip(nx * lx + nz * _LIGHT[2], 0, 1) ** 0.8
        shade *= 1 - 0.18 * np.clip((v - 0.9) / 0.1, 0, 1)
        alpha = src[..., 3] * geo
        rgb = src[..., :3] * (geo * shade)[..., None]
        if prev is None:
            return rgb, alpha, np.zeros(alpha.shape + (2,), np.float32), np.ones(alpha.shape, bool)
        cp, sp_ = math.cos(prev.yaw), math.sin(prev.yaw)
        Xb, Zb = a * np.sin(psi), b * np.cos(psi)
        xp = Xb * cp + Zb * sp_
        visp = (-nbx * sp_ + nbz * cp) > 0
        axp = prev.bottom - prev.top
        dp = axp / float(np.hypot(*axp))
        np_ = np.array([dp[1], -dp[0]])
        px = prev.top[0] + v * axp[0] + xp * S * np_[0]
        py = prev.top[1] + v * axp[1] + xp * S * np_[1]
        flow = np.stack([px - X, py - Y], -1).astype(np.float32)
        return rgb, alpha, flow, visp

    def _sample_head(self, part: EllipsoidPart, prev: EllipsoidPart | None, X, Y):
        S = part.S
        cr, sr = math.cos(part.roll), math.sin(part.roll)
        rx, ry = X - part.center[0], Y - part.center[1]
        lx, ly = cr * rx + sr * ry, -sr * rx + cr * ry     # R(-roll)
        u, w = lx / (HEAD_RX * S), ly / (HEAD_RY * S)
        rho = np.sqrt(u * u + w * w)
        z = np.sqrt(np.clip(1 - rho * rho, 0, 1))
        c, s = math.cos(part.yaw), math.sin(part.yaw)
        xh, zh = u * c - z * s, u * s + z * c
        lon = np.arctan2(xh, zh)
        lat = np.arcsin(np.clip(w, -1, 1))
        geo = np.clip((1 - rho) * HEAD_RX * S + 0.5, 0, 1)
        tex = self.sprites.head_tex
        th, tw = tex.shape[0], tex.shape[1] - 4
        mx = ((lon / (2 * math.pi) + 0.5) * tw - 0.5 + 2).astype(np.float32)
        my = ((lat / math.pi + 0.5) * th - 0.5).astype(np.float32)
        src = cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        nx = u * cr - w * sr
        ny = u * sr + w * cr
        shade = 0.5 + 0.55 * np.clip(nx * _LIGHT[0] + ny * _LIGHT[1] + z * _LIGHT[2], 0, 1)
        alpha = src[..., 3] * geo
        rgb = src[..., :3] * (geo * shade)[..., None]
        if prev is None:
            return rgb, alpha, np.zeros(alpha.shape + (2,), np.float32), np.ones(alpha.shape, bool)
        cp, sp_ = math.cos(prev.yaw), math.sin(prev.yaw)
        up, zp = xh * cp + zh * sp_, -xh * sp_ + zh * cp
        crp, srp = math.cos(prev.roll), math.sin(prev.roll)
        ox, oy = up * HEAD_RX * S, w * HEAD_RY * S
        px = prev.center[0] + crp * ox - srp * oy
        py = prev.center[1] + srp * ox + crp * oy
        flow = np.stack([px - X, py - Y], -1).astype(np.float32)
        return rgb, alpha, flow, zp > 0

    # -- frame ------------------------------------------------------------------------------------------
    def render(self, pose: Pose, prev_pose: Pose | None = None, prev_ids: np.ndarray | None = None,
               parts: list | None = None, prev_parts: list | None = None) -> "RenderResult":
        """Render a pose; with the previous pose (and its part-id map) also the exact backward flow."""
        parts = self.parts(pose) if parts is None else parts
        if prev_parts is None and prev_pose is not None:
            prev_parts = self.parts(prev_pose)
        prev_by_name = {p.name: p for p in prev_parts} if prev_parts is not None else {}
        H = W = self.size
        img = self.background.copy()
        ids = np.zeros((H, W), np.uint8)
        room = np.ones((H, W), np.float64)         # how much of the room still shows through (1: untouched)
        flow = np.zeros((H, W, 2), np.float32)
        pvis = np.ones((H, W), bool)
        order = sorted(range(len(parts)), key=lambda i: (parts[i].z, i))
        for i in order:
            part = parts[i]
            box = self._bbox(part)
            if box is None:
                continue
            x0, y0, x1, y1 = box
            rgb, alpha, fl, vis = self._sample(part, prev_by_name.get(part.name), box)
            roi = img[y0:y1, x0:x1]
            roi *= (1 - alpha)[..., None]
            roi += rgb
            room[y0:y1, x0:x1] *= 1 - alpha
            m = alpha >= 0.5
            ids[y0:y1, x0:x1][m] = PART_ID[part.name]
            flow[y0:y1, x0:x1][m] = fl[m]
            pvis[y0:y1, x0:x1][m] = vis[m]
        frame = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        mask = (1 - room) * 255 >= 0.5             # the person moves the pixel by half a level or more
        if prev_parts is None:
            return RenderResult(frame, ids, np.zeros_like(flow), np.zeros((H, W), np.uint8), parts, mask)
        conf = flow_confidence(ids, flow, prev_ids, pvis) if prev_ids is not None else \
            (pvis.astype(np.uint8) * 255)
        return RenderResult(frame, ids, flow, conf, parts, mask)


@dataclasses.dataclass
class RenderResult:
    frame: np.ndarray      # uint8 (H, W, 3) RGB
    ids: np.ndarray        # uint8 (H, W) part id (0 = background), see PART_NAMES
    flow: np.ndarray       # float32 (H, W, 2) backward flow in pixels
    conf: np.ndarray       # uint8 (H, W) 255 where the point was visible in the previous frame
    parts: list            # part geometry (AffinePart.M is the per-part 2x3 transform)
    mask: np.ndarray       # bool (H, W): every pixel the person touches, its anti-aliased edge too (ids marks the
    #                        pixels a part covers at least half of: one pixel less around the figure)


def flow_confidence(ids: np.ndarray, flow: np.ndarray, prev_ids: np.ndarray, visible: np.ndarray | None = None):
    """255 where p + flow (nearest pixel) lands inside the frame on the same part in the previous frame."""
    H, W = ids.shape
    jx = np.floor(np.arange(W)[None, :] + 0.5 + flow[..., 0]).astype(np.int64)
    jy = np.floor(np.arange(H)[:, None] + 0.5 + flow[..., 1]).astype(np.int64)
    inside = (jx >= 0) & (jx < W) & (jy >= 0) & (jy < H)
    same = prev_ids[np.clip(jy, 0, H - 1), np.clip(jx, 0, W - 1)] == ids
    ok = inside & same
    if visible is not None:
        ok &= visible
    return ok.astype(np.uint8) * 255


def render_frame(pose: Pose, size: int, seed: int = 0, prev_pose: Pose | None = None) -> RenderResult:
    """One-off render (builds the sprites each call; use :class:`DancerRenderer` for sequences)."""
    r = DancerRenderer(size, seed)
    prev_ids = r.render(prev_pose).ids if prev_pose is not None else None
    return r.render(pose, prev_pose, prev_ids)


# ------------------------------------------------------------------------------------------------------
# dataset
# ------------------------------------------------------------------------------------------------------
def synthesize(out_dir, *, seed: int = 0, num_frames: int = 300, size: int = 256, fps: float = 30.0,
               clip_frames: int | None = None, overwrite: bool = False, progress: bool = True,
               appearance_seed: int = 0) -> Path:
    """Write a dataset folder (via DatasetWriter, kind="dance", num_landmarks=33; the dancer's exact mask in
    masks.npy) and return its path.

    ``seed`` drives the dance motion; ``appearance_seed`` the dancer's looks and the room. A model learns one
    person in one place, so held-out data for a model is another motion seed with the same appearance seed.
    clip_frames splits the sequence into clips of that many frames (None: one clip)."""
    check_synth_args(num_frames, size, clip_frames)
    motion = DanceMotion(seed=seed, fps=fps)
    renderer = DancerRenderer(size, appearance_seed)
    writer = DatasetWriter(out_dir, kind="dance", height=size, width=size, fps=fps, num_landmarks=POSE_NUM_LANDMARKS,
                           source=f"synth:seed={seed},appearance={appearance_seed}",
                           overwrite=overwrite)
    writer.manifest.extra = {"synth": {"seed": seed, "appearance_seed": appearance_seed, "size": size, "fps": fps, "clip_frames": clip_frames,
                                       "bpm": round(motion.bpm, 2), "appearance": dataclasses.asdict(renderer.app)}}
    prev = {"parts": None, "ids": None}

    def render(i: int, first: bool) -> dict:
        if first:
            prev.update(parts=None, ids=None)
        pose = motion.pose(i)
        parts = renderer.parts(pose)
        res = renderer.render(pose, parts=parts, prev_parts=prev["parts"], prev_ids=prev["ids"])
        prev.update(parts=parts, ids=res.ids)
        return dict(frame=res.frame, landmarks=pose_landmarks(pose), flow=res.flow.astype(np.float16),
                    flow_conf=res.conf, mask=res.mask)

    return write_frames(writer, num_frames, clip_frames, render, progress=progress, desc="synth")


def check_synth_args(num_frames: int, size: int, clip_frames: int | None, min_size: int = 16) -> None:
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    if size < min_size:
        raise ValueError(f"size must be >= {min_size}")
    if clip_frames is not None and clip_frames < 1:
        raise ValueError("clip_frames must be >= 1")


def write_frames(writer: DatasetWriter, num_frames: int, clip_frames: int | None, render, *, progress: bool,
                 desc: str) -> Path:
    """Frames ``0..num_frames-1`` into ``writer`` (one clip, or clips of ``clip_frames``) and close it (abort on any
    error): ``render(i, first_of_clip)`` gives each frame's :meth:`DatasetWriter.add` arguments."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    try:
        bar = tqdm(total=num_frames, desc=desc, unit="frame", disable=not progress)
        for i in range(num_frames):
            first = i == 0 or clip_frames is not None and i % clip_frames == 0
            if first:
                writer.begin_clip()
            writer.add(**render(i, first))
            bar.update(1)
        bar.close()
    except BaseException:
        writer.abort()
        raise
    path = writer.close()
    if progress:
        dt = time.perf_counter() - t0
        print(f"{desc}: {num_frames} frames at {writer.manifest.width}px in {dt:.1f}s "
              f"({num_frames / max(dt, 1e-9):.0f} frames/s)")
    return path

