"""Procedural dance motion of a 2D-projected human skeleton (pure numpy, deterministic from a seed).

The body is posed in 3D body coordinates (units of standing height; x = the person's left, y = down,
z = the person's forward), rotated about the vertical axis by the facing angle ``yaw`` (0 = facing the
camera) and projected orthographically. The dance is a sequence of 8-beat segments; each segment draws
an arm move, a leg move, a torso/head style and a facing change (quarter/half turns, spins) from an
RNG keyed by ``(seed, segment)``, so any frame can be computed on its own (random access). Segments are
cross-faded over their last beats, so the motion never pops. The tempo drifts smoothly.

Output: the 33 landmarks of MediaPipe Pose (same order and left/right convention) plus the extra
geometry the renderer (:mod:`trainer.synth`) needs, in :class:`Pose`.

It lives in models/ because two layers use the one body model: trainer/synth.py renders the synthetic dataset
from it, and the capture client's ``synthetic`` source (clients/sources.py) streams its landmarks live.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .landmarks import POSE_HEAD_LANDMARKS, POSE_INDEX, POSE_LANDMARK_NAMES, POSE_NUM_LANDMARKS

# The MediaPipe Pose layout, from the one table (models/landmarks.py), under this module's short names.
NUM_LANDMARKS = POSE_NUM_LANDMARKS
LANDMARK_NAMES = POSE_LANDMARK_NAMES
LM = POSE_INDEX                       # name -> index
_HEAD = list(POSE_HEAD_LANDMARKS)     # nose, eyes, ears, mouth
_BODY = [i for i in range(NUM_LANDMARKS) if i not in POSE_HEAD_LANDMARKS]

# Placement in the frame (normalised coordinates of a square frame).
FIGURE_SCALE = 0.64      # frame heights per body unit (standing height is ~1.11 units -> ~0.71 of the frame)
FLOOR_Y = 0.935          # normalised y of the floor (bottom of the shoes)
MARGIN_X = 0.025         # the figure is kept at least this far from the left/right frame edges

# Body dimensions in body units (standing height ~1.11).
HIP_HALF = 0.085
SHOULDER_HALF = 0.125
SHOULDER_Y = -0.31
NECK_Y = -0.345
HEAD_UP = 0.122          # neck base -> head centre
HEAD_RX, HEAD_RY = 0.068, 0.084
UPPER_ARM, FOREARM, HAND = 0.165, 0.150, 0.085
THIGH, SHIN = 0.245, 0.245
ANKLE_H = 0.068          # ankle above the floor
SOLE_UP = 0.026          # heel / foot_index landmarks above the floor
FOOT_BACK, FOOT_FWD = 0.035, 0.115
TORSO_TOP_Y, TORSO_BOTTOM_Y = -0.36, 0.075
# Torso cross-section profile along its axis (v = 0 top .. 1 bottom): half-width a(v); depth b = TORSO_DEPTH * a.
TORSO_V = np.array([0.0, 0.06, 0.13, 0.25, 0.55, 0.80, 1.0])
TORSO_A = np.array([0.070, 0.118, 0.138, 0.132, 0.108, 0.122, 0.120])
TORSO_DEPTH = 0.68

SEGMENT_BEATS = 8        # legs, facing and style change every 8 beats
ARM_BEATS = 4            # arm moves every 4 beats
BLEND_BEATS = 1.5

# -- parameter vector layout ---------------------------------------------------------------------------
# per arm: shoulder frontal angle (0 down, pi/2 out, pi up), upper-arm forward angle, elbow (frontal, added),
#          forearm forward angle, wrist (frontal, added)
# per leg: abduction, thigh flexion (forward), knee bend, turnout, toe pitch (down)
_ARM = ("sh", "fw", "el", "fw2", "wr")
_LEG = ("ab", "fl", "kn", "to", "tp")
_GLOBAL = ("dx", "roll", "hroll", "hyaw", "bounce")
_KEYS = tuple(f"{s}{k}" for s in "LR" for k in _ARM) + tuple(f"{s}{k}" for s in "LR" for k in _LEG) + _GLOBAL
_IDX = {k: i for i, k in enumerate(_KEYS)}
_N_ARM = 2 * len(_ARM)
_NP = len(_KEYS)

ARM_MOVES = ("sway", "raise", "wave", "circle", "pump", "hips", "swing", "clap", "disco")
LEG_MOVES = ("bounce", "step_touch", "knee_lift", "kick", "wide", "heel_tap", "march")


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF] + [(k + (1 << 31)) & 0xFFFFFFFF for k in keys])


def rot2(angle: float) -> np.ndarray:
    """2x2 rotation of image vectors (x right, y down); positive = clockwise on screen."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


@dataclasses.dataclass(frozen=True, eq=False)
class Pose:
    """One frame of the dance. Positions are normalised coordinates of a square frame (x, y in [0, 1]);
    depths are body units toward the camera; angles are radians."""

    frame_index: int
    time: float
    beat: float                 # continuous beat count since t = 0
    xy: np.ndarray              # (33, 2) landmark positions
    depth: np.ndarray           # (33,) landmark depth (toward the camera)
    visibility: np.ndarray      # (33,) in [0, 1]
    yaw: float                  # body facing: 0 = facing the camera, pi/2 = the person's left side toward the camera
    head_yaw: float             # facing of the head (yaw + head turn)
    head_roll: float            # on-screen tilt of the head (positive = clockwise)
    torso_roll: float           # on-screen tilt of the torso axis
    head_center: np.ndarray     # (2,)
    neck: np.ndarray            # (2,) neck base (top of the torso)
    torso_top: np.ndarray       # (2,) top of the torso axis
    torso_bottom: np.ndarray    # (2,) bottom of the torso axis (below the hips)
    scale: float                # frame heights per body unit
    arm_move: str = ""
    leg_move: str = ""

    def px(self, name_or_index, size: int) -> np.ndarray:
        i = LM[name_or_index] if isinstance(name_or_index, str) else int(name_or_index)
        return self.xy[i] * size


@dataclasses.dataclass(frozen=True)
class _Segment:
    arm: int
    leg: int
    lead: int            # +1 = left, -1 = right
    amp: float
    mirror: bool         # circle: symmetric (False) or windmill (True)
    roll_amp: float
    roll_phase: float
    head_phase: float
    facing: float        # facing held by the segment
    spin: float          # 0, +1 or -1 full turns during the segment
    spin_start: float
    spin_len: float


class DanceMotion:
    """Deterministic procedural dance. ``pose(i)`` / ``landmarks(i)`` are pure functions of (seed, fps, i)."""

    def __init__(self, seed: int = 0, fps: float = 30.0):
        self.seed = int(seed)
        self.fps = float(fps)
        r = _rng(self.seed, -1)
        self.bpm = float(r.uniform(96.0, 124.0))
        # tempo(t) = bpm * (1 + sum a sin(w t + c)): (a, w, c) of a slow and a faster drift
        self._tempo = [(float(r.uniform(0.08, 0.14)), 2 * math.pi / float(r.uniform(14.0, 22.0)),
                        float(r.uniform(0, 6.3))),
                       (float(r.uniform(0.03, 0.07)), 2 * math.pi / float(r.uniform(5.0, 8.0)),
                        float(r.uniform(0, 6.3)))]
        self._travel = (float(r.uniform(0.06, 0.10)), float(r.uniform(20.0, 32.0)), float(r.uniform(0, 6.3)))

    # -- time ------------------------------------------------------------------------------------------
    def beat_at(self, t: float) -> float:
        """Beats elapsed at time t (seconds): the integral of a drifting tempo (analytic, so random access)."""
        acc = t
        for a, w, c in self._tempo:
            acc += a * (math.cos(c) - math.cos(w * t + c)) / w
        return self.bpm / 60.0 * acc

    # -- choreography ----------------------------------------------------------------------------------
    def _segment(self, k: int) -> _Segment:
        r = _rng(self.seed, k)
        arm = int(r.integers(len(ARM_MOVES)))
        leg = int(r.integers(len(LEG_MOVES)))
        lead = 1 if r.random() < 0.5 else -1
        amp = float(r.uniform(0.8, 1.15))
        mirror = bool(r.random() < 0.5)
        roll_amp = float(r.uniform(0.03, 0.11))
        roll_phase = float(r.choice([0.0, math.pi]))
        head_phase = float(r.uniform(0, 2 * math.pi))
        u = r.random()
        if k <= 0:
            facing = 0.0
        elif u < 0.45:
            facing = 0.0
        elif u < 0.70:
            facing = float(r.choice([-0.55, 0.55]))
        elif u < 0.90:
            facing = float(r.choice([-math.pi / 2, math.pi / 2]))
        else:
            facing = math.pi
        spin = 0.0
        if k > 0 and facing != math.pi and r.random() < 0.2:
            spin = float(r.choice([-1.0, 1.0]))
        spin_start = float(r.uniform(2.5, 4.0))
        spin_len = float(r.choice([3.0, 4.0]))
        return _Segment(arm, leg, lead, amp, mirror, roll_amp, roll_phase, head_phase, facing, spin,
                        spin_start, spin_len)

    def _arm_segment(self, j: int) -> _Segment:
        """Arm move of the j-th 4-beat bar (drawn from its own RNG; avoids repeating the previous bar's move)."""
        first = lambda jj: int(_rng(self.seed, jj, 1).integers(len(ARM_MOVES)))  # noqa: E731
        r = _rng(self.seed, j, 1)
        arm = int(r.integers(len(ARM_MOVES)))
        if arm == first(j - 1):
            arm = (arm + 1 + int(r.integers(len(ARM_MOVES) - 1))) % len(ARM_MOVES)
        lead = 1 if r.random() < 0.5 else -1
        return _Segment(arm, 0, lead, float(r.uniform(0.8, 1.15)), bool(r.random() < 0.5), 0.0, 0.0, 0.0, 0.0,
                        0.0, 0.0, 1.0)

    def _yaw(self, k: int, u: float, seg: _Segment) -> float:
        prev = self._segment(k - 1).facing if k > 0 else 0.0
        d = seg.facing - prev
        if abs(d) > math.pi + 1e-6:  # turn the short way
            d -= math.copysign(2 * math.pi, d)
        yaw = prev + d * _smoothstep(u / 2.0)
        if seg.spin:
            yaw += seg.spin * 2 * math.pi * _smoothstep((u - seg.spin_start) / seg.spin_len)
        return yaw

    def _params(self, seg: _Segment, u: float, b: float) -> np.ndarray:
        """Parameter vector of one segment's moves at local beat u (global beat b)."""
        p = np.zeros(_NP)
        P = lambda key, val: p.__setitem__(_IDX[key], val)  # noqa: E731
        pi, A, lead = math.pi, seg.amp, seg.lead
        sin, cos = math.sin, math.cos

        def arm(side: int, sh, fw=0.05, el=0.15, fw2=None, wr=0.0):
            s = "L" if side > 0 else "R"
            P(s + "sh", sh); P(s + "fw", fw); P(s + "el", el); P(s + "fw2", fw if fw2 is None else fw2); P(s + "wr", wr)

        name = ARM_MOVES[seg.arm]
        for side in (1, -1):
            ph = 0.0 if side == lead else pi
            is_lead = side == lead
            if name == "sway":
                w = sin(pi * u + ph)
                arm(side, 0.24 + 0.14 * A * w, fw=0.35 * A * w, el=0.35 + 0.2 * w, fw2=0.45 + 0.35 * w, wr=0.1)
            elif name == "raise":
                w = sin(pi * u) * side
                arm(side, 2.55 + 0.22 * A * w, fw=0.12, el=0.18 + 0.14 * sin(2 * pi * u), wr=0.25 * sin(2 * pi * u))
            elif name == "wave":
                if is_lead:
                    arm(side, 1.45 + 0.1 * sin(pi * u), fw=0.15, el=1.25 + 0.5 * A * sin(2 * pi * u), fw2=0.1,
                        wr=0.35 * sin(2 * pi * u))
                else:
                    arm(side, 0.8 + 0.08 * sin(2 * pi * u), fw=0.05, el=-2.0, fw2=0.15, wr=0.9)
            elif name == "circle":
                ang = pi * u + (ph if seg.mirror else 0.0)
                arm(side, 1.55 + 1.0 * A * sin(ang), fw=0.55 * cos(ang), el=0.25, wr=0.1)
            elif name == "pump":
                q = sin(pi * u) ** 2
                if is_lead:
                    arm(side, 1.55 + 1.05 * A * q, fw=0.3, el=0.1 + 1.7 * (1 - q), fw2=0.3)
                else:
                    arm(side, 0.45 + 0.1 * q, fw=0.55, el=1.9, fw2=0.9)
            elif name == "hips":
                arm(side, 0.8 + 0.12 * A * sin(2 * pi * u + ph), fw=0.05, el=-2.0, fw2=0.15, wr=0.9)
            elif name == "swing":
                w = sin(pi * u + ph)
                arm(side, 0.2 + 0.05 * w, fw=0.8 * A * w, el=0.05, fw2=0.8 * A * w + 1.3)
            elif name == "clap":
                q = cos(pi * u) ** 2
                arm(side, 0.55 + 0.35 * (1 - q), fw=0.75, el=-(0.85 + 0.5 * q), fw2=0.95)
            elif name == "disco":
                m = sin(pi * u / 2) * (1 if is_lead else -1)
                arm(side, 1.55 + 0.95 * A * m, fw=0.1, el=0.08 + 0.1 * (1 - abs(m)), wr=0.1)

        # legs
        name = LEG_MOVES[seg.leg]
        bounce, dx = 0.25, 0.0
        for side in (1, -1):
            s = "L" if side > 0 else "R"
            ab, fl, kn, to, tp = 0.05, 0.0, 0.0, 0.28, 0.0
            if name == "bounce":
                bounce = 0.38 * A
            elif name == "step_touch":
                q = sin(pi * u)
                dx = 0.05 * A * q * lead
                act = max(0.0, q * lead * side)
                ab = 0.06 + 0.15 * act
                kn = 0.45 * act * (1 - act) * 2.5
                bounce = 0.25
            elif name in ("knee_lift", "march"):
                q = sin(pi * u) ** 2
                active = (1 if int(math.floor(u)) % 2 == 0 else -1) * lead
                if side == active:
                    if name == "knee_lift":
                        fl, kn, tp = 1.25 * A * q, 1.9 * q, 0.45 * q
                    else:
                        fl, kn, tp = 0.6 * A * q, 1.0 * q, 0.3 * q
                bounce = 0.18
            elif name == "kick":
                q = sin(pi * u / 2) ** 2
                active = (1 if int(math.floor(u / 2)) % 2 == 0 else -1) * lead
                if side == active:
                    fl, kn, tp = 0.95 * A * q, 0.35 * q * (1 - q) * 4, 0.5 * q
                bounce = 0.15
            elif name == "wide":
                ab, to = 0.2, 0.75
                bounce = 0.6 * A
                dx = 0.03 * sin(pi * u / 2)
            elif name == "heel_tap":
                q = sin(pi * u) ** 2
                active = (1 if int(math.floor(u)) % 2 == 0 else -1) * lead
                if side == active:
                    fl, kn, tp, ab = 0.38 * A * q, 0.05 * q, -0.5 * q, 0.05 + 0.08 * q
                bounce = 0.3
            P(s + "ab", ab); P(s + "fl", fl); P(s + "kn", kn); P(s + "to", to); P(s + "tp", tp)
        P("dx", dx)
        P("bounce", bounce)
        P("roll", seg.roll_amp * sin(pi * u + seg.roll_phase))
        P("hroll", 0.09 * sin(pi * u + seg.head_phase))
        P("hyaw", 0.18 * sin(pi * u / 2 + seg.head_phase))
        return p

    # -- pose ------------------------------------------------------------------------------------------
    def pose(self, frame_index: int) -> Pose:
        t = frame_index / self.fps
        b = self.beat_at(t)
        k = int(math.floor(b / SEGMENT_BEATS))
        u = b - k * SEGMENT_BEATS
        seg = self._segment(k)
        params = self._params(seg, u, b)
        yaw = self._yaw(k, u, seg)
        w = _smoothstep((u - (SEGMENT_BEATS - BLEND_BEATS)) / BLEND_BEATS)
        if w > 0:
            params = (1 - w) * params + w * self._params(self._segment(k + 1), u - SEGMENT_BEATS, b)
        # arms follow their own 4-beat bars
        j = int(math.floor(b / ARM_BEATS))
        ua = b - j * ARM_BEATS
        aseg = self._arm_segment(j)
        arms = self._params(aseg, ua, b)
        w = _smoothstep((ua - (ARM_BEATS - BLEND_BEATS)) / BLEND_BEATS)
        if w > 0:
            arms = (1 - w) * arms + w * self._params(self._arm_segment(j + 1), ua - ARM_BEATS, b)
        params[:_N_ARM] = arms[:_N_ARM]
        seg = dataclasses.replace(seg, arm=aseg.arm)
        return self._build(frame_index, t, b, params, yaw, seg)

    def _build(self, frame_index: int, t: float, b: float, p: np.ndarray, yaw: float, seg: _Segment) -> Pose:
        g = lambda key: float(p[_IDX[key]])  # noqa: E731
        sin, cos = math.sin, math.cos
        pts = np.zeros((NUM_LANDMARKS, 3))
        bounce_q = g("bounce") * (0.5 + 0.5 * cos(2 * math.pi * b))

        # legs (in the pelvis frame; the pelvis is at the origin)
        feet_low = []
        for side, s, names in ((1, "L", ("left_hip", "left_knee", "left_ankle", "left_heel", "left_foot_index")),
                               (-1, "R", ("right_hip", "right_knee", "right_ankle", "right_heel", "right_foot_index"))):
            ab, fl, kn, to, tp = (g(s + k) for k in _LEG)
            kn += bounce_q
            fl += 0.5 * bounce_q
            st, ct = sin(side * to), cos(to)
            sa, ca = sin(side * ab), cos(ab)

            def leg_dir(pitch):
                vy, vz = cos(pitch), sin(pitch)
                x, y, z = st * vz, vy, ct * vz          # turnout about the vertical axis
                return np.array([x * ca + y * sa, -x * sa + y * ca, z])  # abduction in the frontal plane

            hip = np.array([side * HIP_HALF, 0.0, 0.0])
            knee = hip + THIGH * leg_dir(fl)
            ankle = knee + SHIN * leg_dir(fl - kn)
            fd = np.array([st * cos(tp), sin(tp), ct * cos(tp)])
            base = ankle + np.array([0.0, ANKLE_H - SOLE_UP, 0.0])
            heel = base - FOOT_BACK * fd
            toe = base + FOOT_FWD * fd
            for name, v in zip(names, (hip, knee, ankle, heel, toe)):
                pts[LM[name]] = v
            feet_low.append(max(heel[1], toe[1]) + SOLE_UP)

        # upper body (rolled about the pelvis)
        sh_pts = {}
        for side, s in ((1, "L"), (-1, "R")):
            sh, fw, el, fw2, wr = (g(s + k) for k in _ARM)
            shoulder = np.array([side * SHOULDER_HALF, SHOULDER_Y, 0.0])
            d1 = np.array([side * sin(sh) * cos(fw), cos(sh) * cos(fw), sin(fw)])
            elbow = shoulder + UPPER_ARM * d1
            a2 = sh + el
            d2 = np.array([side * sin(a2) * cos(fw2), cos(a2) * cos(fw2), sin(fw2)])
            wrist = elbow + FOREARM * d2
            a3 = a2 + wr
            d3 = np.array([side * sin(a3) * cos(fw2), cos(a3) * cos(fw2), sin(fw2)])
            zf = np.array([0.0, 0.0, 1.0]) - d3[2] * d3
            n = np.linalg.norm(zf)
            zf = zf / n if n > 1e-6 else np.array([side * 1.0, 0.0, 0.0])
            lat = np.cross(d3, zf) * side
            sh_pts[s] = dict(shoulder=shoulder, elbow=elbow, wrist=wrist,
                             index=wrist + HAND * d3 + 0.010 * zf + 0.008 * lat,
                             pinky=wrist + 0.86 * HAND * d3 - 0.016 * zf - 0.010 * lat,
                             thumb=wrist + 0.5 * HAND * d3 + 0.035 * zf)
        for s, side_name in (("L", "left"), ("R", "right")):
            for j in ("shoulder", "elbow", "wrist", "index", "pinky", "thumb"):
                pts[LM[f"{side_name}_{j}"]] = sh_pts[s][j]

        neck = np.array([0.0, NECK_Y, 0.0])
        roll = g("roll")
        hroll = roll + g("hroll")
        head_c = neck.copy()   # the head tilts about the neck base (in the torso frame)
        head_c[:2] = neck[:2] + rot2(g("hroll")) @ np.array([0.0, -HEAD_UP])
        torso_top = np.array([0.0, TORSO_TOP_Y, 0.0])
        torso_bottom = np.array([0.0, TORSO_BOTTOM_Y, 0.0])

        upper = [LM[n] for n in LANDMARK_NAMES if n.split("_")[-1] in
                 ("shoulder", "elbow", "wrist", "pinky", "index", "thumb", "hip")]
        R = rot2(roll)
        pts[upper, :2] = pts[upper, :2] @ R.T
        extra = np.array([neck, head_c, torso_top, torso_bottom])
        extra[:, :2] = extra[:, :2] @ R.T

        # face on the head ellipsoid (yaw applied below together with the body)
        head_yaw_rel = g("hyaw") - 0.35 * math.sin(yaw)     # "spotting": the head keeps looking at the camera
        hyaw_total = yaw + head_yaw_rel
        face_dirs = _FACE_DIRS
        cy, sy = cos(hyaw_total), sin(hyaw_total)
        fu = face_dirs[:, 0] * cy + face_dirs[:, 2] * sy
        fz = -face_dirs[:, 0] * sy + face_dirs[:, 2] * cy
        fv = face_dirs[:, 1]
        face_off = np.stack([fu * HEAD_RX, fv * HEAD_RY], 1) @ rot2(hroll).T

        # body yaw about the vertical axis through the pelvis
        c, s_ = cos(yaw), sin(yaw)

        def yaw_rot(a):
            a = a.copy()
            x, z = a[..., 0].copy(), a[..., 2].copy()
            a[..., 0] = x * c + z * s_
            a[..., 2] = -x * s_ + z * c
            return a

        pts = yaw_rot(pts)
        extra = yaw_rot(extra)
        head_c = extra[1]
        pts[:11, :2] = head_c[:2] + face_off
        pts[:11, 2] = head_c[2] + fz * HEAD_RX

        # stand on the floor, travel, keep inside the frame
        ground = max(feet_low)
        travel_a, travel_p, travel_c = self._travel
        dx = g("dx") + travel_a * math.sin(2 * math.pi * b / travel_p + travel_c)
        S = FIGURE_SCALE

        def to_frame(a2d):
            return np.stack([0.5 + S * (a2d[..., 0] + dx), FLOOR_Y + S * (a2d[..., 1] - ground)], -1)

        xy = to_frame(pts[:, :2])
        ex = to_frame(extra[:, :2])
        reach = 0.06 * S
        lo = min(xy[:, 0].min(), ex[1, 0] - HEAD_RX * S) - reach
        hi = max(xy[:, 0].max(), ex[1, 0] + HEAD_RX * S) + reach
        shift = max(0.0, MARGIN_X - lo) - max(0.0, hi - (1 - MARGIN_X))
        xy[:, 0] += shift
        ex[:, 0] += shift

        # visibility
        vis = np.ones(NUM_LANDMARKS)
        vis[_HEAD] = 0.3 + 0.7 * np.clip((fz + 0.45) / 0.4, 0.0, 1.0)
        depth = pts[:, 2].copy()
        tt, tb = ex[2], ex[3]
        axis = tb - tt
        L2 = float(axis @ axis)
        R_torso = np.sqrt((np.interp(0.5, TORSO_V, TORSO_A) * c) ** 2 + (TORSO_DEPTH * 0.12 * s_) ** 2) * S
        for i in _BODY:
            if depth[i] < -0.035:
                rel = xy[i] - tt
                v = float(rel @ axis) / L2
                off = abs(float(rel @ np.array([axis[1], -axis[0]]))) / math.sqrt(L2)
                if -0.05 <= v <= 1.05 and off < R_torso:
                    vis[i] = 0.35
        return Pose(frame_index=frame_index, time=t, beat=b, xy=xy, depth=depth, visibility=vis, yaw=yaw,
                    head_yaw=hyaw_total, head_roll=hroll, torso_roll=roll, head_center=ex[1], neck=ex[0],
                    torso_top=ex[2], torso_bottom=ex[3], scale=S, arm_move=ARM_MOVES[seg.arm],
                    leg_move=LEG_MOVES[seg.leg])

    def landmarks(self, frame_index: int, aspect: float = 1.0) -> np.ndarray:
        """(33, 3) float32: x, y in [0, 1] of a frame of width/height = aspect, visibility in [0, 1]."""
        return pose_landmarks(self.pose(frame_index), aspect)


def pose_landmarks(pose: Pose, aspect: float = 1.0) -> np.ndarray:
    """Landmarks of a pose for a frame of width/height = aspect (the figure shrinks to fit narrow frames)."""
    k = min(1.0, float(aspect))
    x = 0.5 + (pose.xy[:, 0] - 0.5) * k / aspect
    y = FLOOR_Y + (pose.xy[:, 1] - FLOOR_Y) * k
    out = np.stack([np.clip(x, 0.0, 1.0), np.clip(y, 0.0, 1.0), pose.visibility], 1)
    return out.astype(np.float32)


def _face_dirs() -> np.ndarray:
    """Unit directions on the head ellipsoid (head frame: x = left, y = down, z = forward) of landmarks 0..10."""
    # (longitude: + toward the person's left, latitude: + down)
    ang = [(0.0, 0.12),                                  # nose
           (0.17, -0.06), (0.31, -0.07), (0.45, -0.06),  # left eye inner / eye / outer
           (-0.17, -0.06), (-0.31, -0.07), (-0.45, -0.06),
           (1.50, 0.02), (-1.50, 0.02),                  # ears
           (0.24, 0.40), (-0.24, 0.40)]                  # mouth left / right
    out = []
    for a, b in ang:
        out.append((math.sin(a) * math.cos(b), math.sin(b), math.cos(a) * math.cos(b)))
    return np.array(out)


_FACE_DIRS = _face_dirs()
