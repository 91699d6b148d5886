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
        """Parameter vector of one segment's moves at local beat u (global beat b): both arms (the segment's
        arm move), both legs (its leg move) and the global sway, bounce and head motion."""
        p = np.zeros(_NP)
        for side in (1, -1):
            ph = 0.0 if side == seg.lead else math.pi
            _set_limb(p, side, _ARM, _ARM_MOVE[ARM_MOVES[seg.arm]](u, side, side == seg.lead, ph, seg))
        bounce, dx = 0.25, 0.0
        for side in (1, -1):
            leg, bounce, dx = _LEG_MOVE[LEG_MOVES[seg.leg]](u, side, seg.lead, seg.amp)
            _set_limb(p, side, _LEG, leg)
        p[_IDX["dx"]] = dx
        p[_IDX["bounce"]] = bounce
        p[_IDX["roll"]] = seg.roll_amp * math.sin(math.pi * u + seg.roll_phase)
        p[_IDX["hroll"]] = 0.09 * math.sin(math.pi * u + seg.head_phase)
        p[_IDX["hyaw"]] = 0.18 * math.sin(math.pi * u / 2 + seg.head_phase)
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
        """The :class:`Pose` of one frame: the skeleton posed in body coordinates from the parameter vector
        ``p``, the upper body rolled, the face put on the head, everything turned by ``yaw``, placed in the frame
        and given visibilities."""
        pts = np.zeros((NUM_LANDMARKS, 3))
        feet_low = _pose_legs(pts, p, b)
        _pose_arms(pts, p)
        extra, roll, hroll = _roll_upper_body(pts, p)   # extra: neck, head centre, torso top, torso bottom
        # "spotting": the head keeps looking at the camera
        hyaw_total = yaw + (_param(p, "hyaw") - 0.35 * math.sin(yaw))
        fz, face_off = _face_on_head(hyaw_total, hroll)
        pts = _yaw_rotate(pts, yaw)
        extra = _yaw_rotate(extra, yaw)
        head_c = extra[1]
        pts[:11, :2] = head_c[:2] + face_off
        pts[:11, 2] = head_c[2] + fz * HEAD_RX
        xy, ex = self._place(pts[:, :2], extra[:, :2], max(feet_low), p, b)
        depth = pts[:, 2].copy()
        vis = _visibility(xy, ex, depth, fz, yaw)
        return Pose(frame_index=frame_index, time=t, beat=b, xy=xy, depth=depth, visibility=vis, yaw=yaw,
                    head_yaw=hyaw_total, head_roll=hroll, torso_roll=roll, head_center=ex[1], neck=ex[0],
                    torso_top=ex[2], torso_bottom=ex[3], scale=FIGURE_SCALE, arm_move=ARM_MOVES[seg.arm],
                    leg_move=LEG_MOVES[seg.leg])

    def _place(self, pts2d: np.ndarray, extra2d: np.ndarray, ground: float, p: np.ndarray, b: float):
        """Body-frame 2D points (landmarks, extra) -> normalised frame coordinates: the lowest sole on the floor,
        the sideways travel applied, and the whole figure shifted to stay ``MARGIN_X`` inside the frame."""
        travel_a, travel_p, travel_c = self._travel
        dx = _param(p, "dx") + travel_a * math.sin(2 * math.pi * b / travel_p + travel_c)
        S = FIGURE_SCALE

        def to_frame(a2d):
            return np.stack([0.5 + S * (a2d[..., 0] + dx), FLOOR_Y + S * (a2d[..., 1] - ground)], -1)

        xy = to_frame(pts2d)
        ex = to_frame(extra2d)
        reach = 0.06 * S
        lo = min(xy[:, 0].min(), ex[1, 0] - HEAD_RX * S) - reach
        hi = max(xy[:, 0].max(), ex[1, 0] + HEAD_RX * S) + reach
        shift = max(0.0, MARGIN_X - lo) - max(0.0, hi - (1 - MARGIN_X))
        xy[:, 0] += shift
        ex[:, 0] += shift
        return xy, ex

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


# -- moves -----------------------------------------------------------------------------------------------
# An arm move maps (local beat u, side +1 left / -1 right, is the lead arm, phase 0 or pi of this arm, segment)
# to that arm's parameters (_ARM order); a leg move maps (u, side, lead side, amplitude) to that leg's
# parameters (_LEG order), the body bounce and the sideways shift dx. One function per move, by name.

def _set_limb(p: np.ndarray, side: int, keys: tuple[str, ...], values) -> None:
    """Write one limb's parameters (``keys`` order) into the parameter vector ``p``."""
    s = "L" if side > 0 else "R"
    for k, v in zip(keys, values):
        p[_IDX[s + k]] = v


def _arm(sh, fw=0.05, el=0.15, fw2=None, wr=0.0) -> tuple:
    """Arm parameters in _ARM order (the forearm's forward angle defaults to the upper arm's)."""
    return sh, fw, el, fw if fw2 is None else fw2, wr


def _arm_sway(u, side, is_lead, ph, seg):
    """Both arms swing gently in counter-phase, low at the sides."""
    w = math.sin(math.pi * u + ph)
    A = seg.amp
    return _arm(0.24 + 0.14 * A * w, fw=0.35 * A * w, el=0.35 + 0.2 * w, fw2=0.45 + 0.35 * w, wr=0.1)


def _arm_raise(u, side, is_lead, ph, seg):
    """Both arms up, swaying overhead."""
    pi, sin = math.pi, math.sin
    w = sin(pi * u) * side
    return _arm(2.55 + 0.22 * seg.amp * w, fw=0.12, el=0.18 + 0.14 * sin(2 * pi * u), wr=0.25 * sin(2 * pi * u))


def _arm_wave(u, side, is_lead, ph, seg):
    """The lead arm waves at shoulder height, the other rests on the hip."""
    pi, sin = math.pi, math.sin
    if is_lead:
        return _arm(1.45 + 0.1 * sin(pi * u), fw=0.15, el=1.25 + 0.5 * seg.amp * sin(2 * pi * u), fw2=0.1,
                    wr=0.35 * sin(2 * pi * u))
    return _arm(0.8 + 0.08 * sin(2 * pi * u), fw=0.05, el=-2.0, fw2=0.15, wr=0.9)


def _arm_circle(u, side, is_lead, ph, seg):
    """Big arm circles, symmetric or windmill (``seg.mirror``)."""
    ang = math.pi * u + (ph if seg.mirror else 0.0)
    return _arm(1.55 + 1.0 * seg.amp * math.sin(ang), fw=0.55 * math.cos(ang), el=0.25, wr=0.1)


def _arm_pump(u, side, is_lead, ph, seg):
    """The lead arm pumps up and down, the other is held bent in front."""
    q = math.sin(math.pi * u) ** 2
    if is_lead:
        return _arm(1.55 + 1.05 * seg.amp * q, fw=0.3, el=0.1 + 1.7 * (1 - q), fw2=0.3)
    return _arm(0.45 + 0.1 * q, fw=0.55, el=1.9, fw2=0.9)


def _arm_hips(u, side, is_lead, ph, seg):
    """Hands on the hips, elbows swaying."""
    return _arm(0.8 + 0.12 * seg.amp * math.sin(2 * math.pi * u + ph), fw=0.05, el=-2.0, fw2=0.15, wr=0.9)


def _arm_swing(u, side, is_lead, ph, seg):
    """Arms swing forward and back like walking."""
    w = math.sin(math.pi * u + ph)
    A = seg.amp
    return _arm(0.2 + 0.05 * w, fw=0.8 * A * w, el=0.05, fw2=0.8 * A * w + 1.3)


def _arm_clap(u, side, is_lead, ph, seg):
    """Hands meet in front on the beat."""
    q = math.cos(math.pi * u) ** 2
    return _arm(0.55 + 0.35 * (1 - q), fw=0.75, el=-(0.85 + 0.5 * q), fw2=0.95)


def _arm_disco(u, side, is_lead, ph, seg):
    """Disco point: one arm up while the other goes down, slowly."""
    m = math.sin(math.pi * u / 2) * (1 if is_lead else -1)
    return _arm(1.55 + 0.95 * seg.amp * m, fw=0.1, el=0.08 + 0.1 * (1 - abs(m)), wr=0.1)


_ARM_MOVE = {"sway": _arm_sway, "raise": _arm_raise, "wave": _arm_wave, "circle": _arm_circle, "pump": _arm_pump,
             "hips": _arm_hips, "swing": _arm_swing, "clap": _arm_clap, "disco": _arm_disco}
assert tuple(_ARM_MOVE) == ARM_MOVES

_LEG_REST = (0.05, 0.0, 0.0, 0.28, 0.0)   # ab, fl, kn, to, tp of a standing leg


def _leg_bounce(u, side, lead, A):
    """Knees bounce on the beat (deeper than the default bounce)."""
    return _LEG_REST, 0.38 * A, 0.0


def _leg_step_touch(u, side, lead, A):
    """Step to one side and back, the moving leg lifted a little."""
    q = math.sin(math.pi * u)
    act = max(0.0, q * lead * side)
    ab, fl, kn, to, tp = _LEG_REST
    ab = 0.06 + 0.15 * act
    kn = 0.45 * act * (1 - act) * 2.5
    return (ab, fl, kn, to, tp), 0.25, 0.05 * A * q * lead


def _lifted_leg(u, side, lead, every_beats=1.0) -> tuple[float, bool]:
    """(sin^2 lift of the current beat, whether ``side`` is the leg that moves now: legs alternate every
    ``every_beats`` beats, the lead leg first)."""
    q = math.sin(math.pi * u / every_beats) ** 2
    active = (1 if int(math.floor(u / every_beats)) % 2 == 0 else -1) * lead
    return q, side == active


def _leg_knee_lift(u, side, lead, A):
    """Alternate high knee lifts."""
    q, moving = _lifted_leg(u, side, lead)
    fl, kn, tp = (1.25 * A * q, 1.9 * q, 0.45 * q) if moving else (0.0, 0.0, 0.0)
    return (0.05, fl, kn, 0.28, tp), 0.18, 0.0


def _leg_march(u, side, lead, A):
    """Marching on the spot (lower knee lifts)."""
    q, moving = _lifted_leg(u, side, lead)
    fl, kn, tp = (0.6 * A * q, 1.0 * q, 0.3 * q) if moving else (0.0, 0.0, 0.0)
    return (0.05, fl, kn, 0.28, tp), 0.18, 0.0


def _leg_kick(u, side, lead, A):
    """Alternate forward kicks, one every two beats."""
    q, moving = _lifted_leg(u, side, lead, every_beats=2.0)
    fl, kn, tp = (0.95 * A * q, 0.35 * q * (1 - q) * 4, 0.5 * q) if moving else (0.0, 0.0, 0.0)
    return (0.05, fl, kn, 0.28, tp), 0.15, 0.0


def _leg_wide(u, side, lead, A):
    """Wide stance, feet turned out, deep bounce and a slow sideways shift."""
    return (0.2, 0.0, 0.0, 0.75, 0.0), 0.6 * A, 0.03 * math.sin(math.pi * u / 2)


def _leg_heel_tap(u, side, lead, A):
    """Alternate heel taps in front, toes up."""
    q, moving = _lifted_leg(u, side, lead)
    if moving:
        return (0.05 + 0.08 * q, 0.38 * A * q, 0.05 * q, 0.28, -0.5 * q), 0.3, 0.0
    return _LEG_REST, 0.3, 0.0


_LEG_MOVE = {"bounce": _leg_bounce, "step_touch": _leg_step_touch, "knee_lift": _leg_knee_lift,
             "kick": _leg_kick, "wide": _leg_wide, "heel_tap": _leg_heel_tap, "march": _leg_march}
assert set(_LEG_MOVE) == set(LEG_MOVES)


# -- body ------------------------------------------------------------------------------------------------
# Stages of DanceMotion._build, in body coordinates (units of standing height; x = the person's left, y = down,
# z = forward; the pelvis at the origin).

_UPPER = [LM[n] for n in LANDMARK_NAMES if n.split("_")[-1] in
          ("shoulder", "elbow", "wrist", "pinky", "index", "thumb", "hip")]   # rolled with the torso


def _param(p: np.ndarray, key: str) -> float:
    """One named entry of the parameter vector."""
    return float(p[_IDX[key]])


def _leg_dir(pitch: float, st: float, ct: float, sa: float, ca: float) -> np.ndarray:
    """Unit direction of a leg bone pitched forward by ``pitch``, turned out (sin/cos ``st, ct``) about the
    vertical axis, then abducted (``sa, ca``) in the frontal plane."""
    vy, vz = math.cos(pitch), math.sin(pitch)
    x, y, z = st * vz, vy, ct * vz          # turnout about the vertical axis
    return np.array([x * ca + y * sa, -x * sa + y * ca, z])  # abduction in the frontal plane


def _leg_points(side: int, p: np.ndarray, bounce_q: float) -> tuple[np.ndarray, ...]:
    """hip, knee, ankle, heel, toe of one leg (``side`` +1 left, -1 right), the knees bent by the bounce."""
    ab, fl, kn, to, tp = (_param(p, ("L" if side > 0 else "R") + k) for k in _LEG)
    kn += bounce_q
    fl += 0.5 * bounce_q
    st, ct = math.sin(side * to), math.cos(to)
    sa, ca = math.sin(side * ab), math.cos(ab)
    hip = np.array([side * HIP_HALF, 0.0, 0.0])
    knee = hip + THIGH * _leg_dir(fl, st, ct, sa, ca)
    ankle = knee + SHIN * _leg_dir(fl - kn, st, ct, sa, ca)
    fd = np.array([st * math.cos(tp), math.sin(tp), ct * math.cos(tp)])
    base = ankle + np.array([0.0, ANKLE_H - SOLE_UP, 0.0])
    return hip, knee, ankle, base - FOOT_BACK * fd, base + FOOT_FWD * fd


def _pose_legs(pts: np.ndarray, p: np.ndarray, b: float) -> list[float]:
    """Write both legs' landmarks into ``pts`` (pelvis frame); return each foot's lowest point (the sole)."""
    bounce_q = _param(p, "bounce") * (0.5 + 0.5 * math.cos(2 * math.pi * b))
    feet_low = []
    for side, names in ((1, ("left_hip", "left_knee", "left_ankle", "left_heel", "left_foot_index")),
                        (-1, ("right_hip", "right_knee", "right_ankle", "right_heel", "right_foot_index"))):
        hip, knee, ankle, heel, toe = _leg_points(side, p, bounce_q)
        for name, v in zip(names, (hip, knee, ankle, heel, toe)):
            pts[LM[name]] = v
        feet_low.append(max(heel[1], toe[1]) + SOLE_UP)
    return feet_low


def _arm_points(side: int, p: np.ndarray) -> dict[str, np.ndarray]:
    """shoulder, elbow, wrist and the hand's index, pinky and thumb points of one arm (unrolled torso)."""
    sin, cos = math.sin, math.cos
    sh, fw, el, fw2, wr = (_param(p, ("L" if side > 0 else "R") + k) for k in _ARM)
    shoulder = np.array([side * SHOULDER_HALF, SHOULDER_Y, 0.0])
    d1 = np.array([side * sin(sh) * cos(fw), cos(sh) * cos(fw), sin(fw)])
    elbow = shoulder + UPPER_ARM * d1
    a2 = sh + el
    d2 = np.array([side * sin(a2) * cos(fw2), cos(a2) * cos(fw2), sin(fw2)])
    wrist = elbow + FOREARM * d2
    a3 = a2 + wr
    d3 = np.array([side * sin(a3) * cos(fw2), cos(a3) * cos(fw2), sin(fw2)])
    zf = np.array([0.0, 0.0, 1.0]) - d3[2] * d3           # the palm's normal, roughly toward the camera
    n = np.linalg.norm(zf)
    zf = zf / n if n > 1e-6 else np.array([side * 1.0, 0.0, 0.0])
    lat = np.cross(d3, zf) * side
    return dict(shoulder=shoulder, elbow=elbow, wrist=wrist,
                index=wrist + HAND * d3 + 0.010 * zf + 0.008 * lat,
                pinky=wrist + 0.86 * HAND * d3 - 0.016 * zf - 0.010 * lat,
                thumb=wrist + 0.5 * HAND * d3 + 0.035 * zf)


def _pose_arms(pts: np.ndarray, p: np.ndarray) -> None:
    """Write both arms' landmarks into ``pts`` (unrolled torso frame)."""
    for side, side_name in ((1, "left"), (-1, "right")):
        arm = _arm_points(side, p)
        for j in ("shoulder", "elbow", "wrist", "index", "pinky", "thumb"):
            pts[LM[f"{side_name}_{j}"]] = arm[j]


def _roll_upper_body(pts: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Roll the arms and hips in ``pts`` about the pelvis by the torso roll; return the rolled extra points
    (4, 3) -- neck base, head centre (tilted about the neck), torso top, torso bottom -- the torso roll and
    the head's on-screen tilt (torso roll + head roll)."""
    neck = np.array([0.0, NECK_Y, 0.0])
    roll = _param(p, "roll")
    hroll = roll + _param(p, "hroll")
    head_c = neck.copy()   # the head tilts about the neck base (in the torso frame)
    head_c[:2] = neck[:2] + rot2(_param(p, "hroll")) @ np.array([0.0, -HEAD_UP])
    torso_top = np.array([0.0, TORSO_TOP_Y, 0.0])
    torso_bottom = np.array([0.0, TORSO_BOTTOM_Y, 0.0])
    R = rot2(roll)
    pts[_UPPER, :2] = pts[_UPPER, :2] @ R.T
    extra = np.array([neck, head_c, torso_top, torso_bottom])
    extra[:, :2] = extra[:, :2] @ R.T
    return extra, roll, hroll


def _face_on_head(head_yaw: float, head_roll: float) -> tuple[np.ndarray, np.ndarray]:
    """Face landmarks 0..10 on the head ellipsoid turned by ``head_yaw`` and tilted by ``head_roll``: their
    depth toward the camera (unit sphere, (11,)) and their 2D offsets from the head centre (11, 2)."""
    cy, sy = math.cos(head_yaw), math.sin(head_yaw)
    fu = _FACE_DIRS[:, 0] * cy + _FACE_DIRS[:, 2] * sy
    fz = -_FACE_DIRS[:, 0] * sy + _FACE_DIRS[:, 2] * cy
    fv = _FACE_DIRS[:, 1]
    return fz, np.stack([fu * HEAD_RX, fv * HEAD_RY], 1) @ rot2(head_roll).T


def _yaw_rotate(a: np.ndarray, yaw: float) -> np.ndarray:
    """A copy of the (..., 3) points ``a`` turned by ``yaw`` about the vertical axis through the pelvis."""
    c, s_ = math.cos(yaw), math.sin(yaw)
    a = a.copy()
    x, z = a[..., 0].copy(), a[..., 2].copy()
    a[..., 0] = x * c + z * s_
    a[..., 2] = -x * s_ + z * c
    return a


def _visibility(xy: np.ndarray, ex: np.ndarray, depth: np.ndarray, fz: np.ndarray, yaw: float) -> np.ndarray:
    """(33,) visibilities: face points fade as they turn away; body points behind the torso (further than it
    and inside its on-screen outline) get 0.35."""
    vis = np.ones(NUM_LANDMARKS)
    vis[_HEAD] = 0.3 + 0.7 * np.clip((fz + 0.45) / 0.4, 0.0, 1.0)
    c, s_ = math.cos(yaw), math.sin(yaw)
    S = FIGURE_SCALE
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
    return vis


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
