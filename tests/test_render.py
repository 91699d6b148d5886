"""Tests for models/landmarks.py (topology tables) and models/render.py (label-map renderers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import landmarks as L
from models.render import (
    LABEL_KINDS,
    check_landmarks,
    face_distance_scale,
    label_channels,
    pose_joint_radius,
    pose_line_thickness,
    render_face,
    render_labels,
    render_pose,
)

REPO = Path(__file__).resolve().parents[1]
SIZES = [(64, 64), (128, 128), (256, 256), (96, 160)]

# A synthetic standing pose with arms out (normalised x, y); limbs are well apart except the head.
_POSE_XY = {
    0: (0.50, 0.14), 1: (0.51, 0.12), 2: (0.52, 0.12), 3: (0.53, 0.12), 4: (0.49, 0.12),
    5: (0.48, 0.12), 6: (0.47, 0.12), 7: (0.55, 0.13), 8: (0.45, 0.13), 9: (0.51, 0.16),
    10: (0.49, 0.16), 11: (0.60, 0.25), 12: (0.40, 0.25), 13: (0.74, 0.30), 14: (0.26, 0.30),
    15: (0.86, 0.22), 16: (0.14, 0.22), 17: (0.90, 0.19), 18: (0.10, 0.19), 19: (0.89, 0.16),
    20: (0.11, 0.16), 21: (0.85, 0.17), 22: (0.15, 0.17), 23: (0.57, 0.52), 24: (0.43, 0.52),
    25: (0.62, 0.70), 26: (0.38, 0.70), 27: (0.64, 0.88), 28: (0.36, 0.88), 29: (0.63, 0.92),
    30: (0.37, 0.92), 31: (0.70, 0.94), 32: (0.30, 0.94),
}


def make_pose(vis: float = 0.99) -> np.ndarray:
    lm = np.array([[*_POSE_XY[i], vis] for i in range(33)], dtype=np.float32)
    # snap to pixel centres of a 256 image so that lines are pixel-exact there
    lm[:, :2] = (np.floor(lm[:, :2] * 256) + 0.5) / 256
    return lm


def make_face(k: int = 468, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lm = np.zeros((k, 3), dtype=np.float32)
    lm[:, :2] = rng.uniform(0.2, 0.8, size=(k, 2))
    lm[:, 2] = rng.normal(0, 0.05, size=k)
    return lm


def pose_point(lm, idx, h, w):
    """Continuous pixel coordinates (x, y) of pose point idx (incl. the derived neck)."""
    if idx == L.POSE_NECK:
        xy = lm[[11, 12], :2].mean(axis=0)
    else:
        xy = lm[idx, :2]
    return np.array([xy[0] * w - 0.5, xy[1] * h - 0.5])


def limb_mid_pixel(lm, limb, h, w):
    a, b = L.POSE_LIMBS[limb]
    mid = (pose_point(lm, a, h, w) + pose_point(lm, b, h, w)) / 2
    return int(round(mid[1])), int(round(mid[0]))


def limb_length(lm, limb, h, w):
    a, b = L.POSE_LIMBS[limb]
    return float(np.linalg.norm(pose_point(lm, a, h, w) - pose_point(lm, b, h, w)))


def mid_is_clear(lm, limb, h, w):
    """True if the limb's mid pixel is away from every joint disk and every other limb."""
    mid = np.array(limb_mid_pixel(lm, limb, h, w)[::-1], dtype=float)[None]
    r = pose_joint_radius(h, w) + 1.5
    half = pose_line_thickness(h, w) / 2 + 1.5
    for i, (a, b) in enumerate(L.POSE_LIMBS):
        pa, pb = pose_point(lm, a, h, w), pose_point(lm, b, h, w)
        if np.linalg.norm(mid - pa) < r or np.linalg.norm(mid - pb) < r:
            return False
        if i != limb and dist_to_segment(mid, pa, pb)[0] < half:
            return False
    return True


def dist_to_segment(px, p, q):
    """Distance of points px (N, 2) to segment p-q."""
    d = q - p
    t = np.clip(((px - p) @ d) / max(d @ d, 1e-12), 0, 1)
    return np.linalg.norm(px - (p + t[:, None] * d), axis=1)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

def test_pose_tables_consistent():
    assert L.POSE_NUM_LANDMARKS == len(L.POSE_LANDMARK_NAMES) == 33
    assert len(L.POSE_CONNECTIONS) == 35
    assert 20 <= len(L.POSE_LIMBS) <= 30
    assert len(L.POSE_LIMBS) == len(L.POSE_LIMB_COLORS) == len(L.POSE_LIMB_NAMES)
    assert len(set(L.POSE_LIMBS)) == len(L.POSE_LIMBS)
    cols = np.array(L.POSE_LIMB_COLORS, dtype=int)
    assert cols.min() >= 0 and cols.max() <= 255
    # visually distinct: every pair differs by >= 50 in some channel
    diff = np.abs(cols[:, None] - cols[None]).max(axis=2)
    np.fill_diagonal(diff, 255)
    assert diff.min() >= 50
    # left/right counterparts differ
    names = L.POSE_LIMB_NAMES
    for i, n in enumerate(names):
        if n.startswith("left_"):
            j = names.index("right_" + n[5:])
            assert L.POSE_LIMB_COLORS[i] != L.POSE_LIMB_COLORS[j]
    for a, b in L.POSE_LIMBS:
        assert 0 <= a < L.POSE_NUM_POINTS and 0 <= b < L.POSE_NUM_POINTS
        assert a in L.POSE_JOINT_COLORS and b in L.POSE_JOINT_COLORS


def test_face_tables_consistent():
    assert L.FACE_NUM_LANDMARKS == 468 and L.FACE_NUM_LANDMARKS_REFINED == 478
    assert tuple(L.FACE_CONTOURS) == ("face_oval", "left_eyebrow", "right_eyebrow", "left_eye",
                                      "right_eye", "nose", "lips_outer", "lips_inner")
    for g in ("face_oval", "left_eye", "right_eye", "lips_outer", "lips_inner"):
        assert g in L.FACE_CLOSED_GROUPS
    for lines in L.FACE_CONTOURS.values():
        for line in lines:
            assert len(line) >= 2
            assert all(0 <= i < 468 for i in line)


def _undirected(edges):
    return {frozenset(e) for e in edges}


def _polyline_edges(lines):
    pairs = [frozenset(p) for line in lines for p in zip(line[:-1], line[1:])]
    assert len(pairs) == len(set(pairs)), "a polyline repeats an edge"
    return set(pairs)


def test_tables_match_mediapipe():
    mp = pytest.importorskip("mediapipe")
    fmc = mp.solutions.face_mesh_connections
    assert L.POSE_CONNECTIONS == frozenset(mp.solutions.pose.POSE_CONNECTIONS)
    assert L.POSE_LANDMARK_NAMES == tuple(p.name.lower() for p in mp.solutions.pose.PoseLandmark)
    expected = {
        "face_oval": fmc.FACEMESH_FACE_OVAL,
        "left_eyebrow": fmc.FACEMESH_LEFT_EYEBROW,
        "right_eyebrow": fmc.FACEMESH_RIGHT_EYEBROW,
        "left_eye": fmc.FACEMESH_LEFT_EYE,
        "right_eye": fmc.FACEMESH_RIGHT_EYE,
        "nose": fmc.FACEMESH_NOSE,
    }
    for group, edges in expected.items():
        assert _polyline_edges(L.FACE_CONTOURS[group]) == _undirected(edges), group
    outer = _polyline_edges(L.FACE_CONTOURS["lips_outer"])
    inner = _polyline_edges(L.FACE_CONTOURS["lips_inner"])
    assert not outer & inner
    assert outer | inner == _undirected(fmc.FACEMESH_LIPS)
    # outer lip passes through the mouth corners 61/291, inner through 78/308
    assert {61, 291} <= set(L.FACE_CONTOURS["lips_outer"][0])
    assert {78, 308} <= set(L.FACE_CONTOURS["lips_inner"][0])


def test_landmarks_module_is_plain():
    code = ("import sys, models.landmarks; "
            "bad = [m for m in ('cv2', 'mediapipe', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_render_module_is_import_light():
    code = ("import sys, models; before = set(sys.modules); import models.render; "
            "new = set(sys.modules) - before; "
            "bad = sorted(m for m in new if m.split('.')[0] in ('torch', 'mediapipe')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --------------------------------------------------------------------------------------------
# Shapes, ranges, determinism
# --------------------------------------------------------------------------------------------

def test_label_channels():
    assert LABEL_KINDS == ("dance", "face")
    assert label_channels("dance") == 3
    assert label_channels("face") == 1 + len(L.FACE_CONTOURS) == 9
    with pytest.raises(ValueError, match="unknown label kind"):
        label_channels("hands")


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("kind", LABEL_KINDS)
def test_shapes_dtypes_ranges(kind, h, w):
    lm = make_pose() if kind == "dance" else make_face()
    out = render_labels(kind, lm, h, w)
    assert out.shape == (label_channels(kind), h, w)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() == 1.0  # something is drawn at full intensity
    for c in range(out.shape[0]):
        assert out[c].any(), f"channel {c} empty at {h}x{w}"


@pytest.mark.parametrize("kind", LABEL_KINDS)
def test_deterministic_and_out_param(kind):
    lm = make_pose() if kind == "dance" else make_face()
    a = render_labels(kind, lm, 96, 160)
    b = render_labels(kind, lm.copy(), 96, 160)
    assert a.tobytes() == b.tobytes()
    buf = np.full((label_channels(kind), 96, 160), 7.0, dtype=np.float32)  # garbage is overwritten
    res = render_labels(kind, lm, 96, 160, out=buf)
    assert res is buf
    assert buf.tobytes() == a.tobytes()
    with pytest.raises(ValueError, match="out must be"):
        render_labels(kind, lm, 96, 160, out=np.zeros((label_channels(kind), 96, 161), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        render_labels(kind, lm, 96, 160, out=np.zeros((label_channels(kind), 96, 160), np.float64))


def test_input_not_modified():
    lm = make_pose()
    ref = lm.copy()
    render_pose(lm, 128, 128, rng=np.random.default_rng(0), head_jitter_px=5, limb_drop_prob=0.3)
    assert np.array_equal(lm, ref)
    f = make_face()
    fref = f.copy()
    render_face(f, 128, 128, rng=np.random.default_rng(0), jitter_px=2)
    assert np.array_equal(f, fref)


@pytest.mark.parametrize("kind", LABEL_KINDS)
def test_all_nan_and_none_give_zeros(kind):
    k = 33 if kind == "dance" else 478
    for lm in (np.full((k, 3), np.nan, np.float32), None):
        out = render_labels(kind, lm, 64, 96)
        assert out.shape == (label_channels(kind), 64, 96)
        assert not out.any()


def test_bad_size():
    with pytest.raises(ValueError):
        render_pose(make_pose(), 0, 64)
    with pytest.raises(ValueError):
        render_pose(make_pose(), 64.5, 64)


# --------------------------------------------------------------------------------------------
# Pose content
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [256, 512])
def test_limb_colour_at_midpoint(size):
    lm = make_pose()
    img = render_pose(lm, size, size)
    tested = 0
    for i, colour in enumerate(L.POSE_LIMB_COLORS):
        if not mid_is_clear(lm, i, size, size):
            continue
        y, x = limb_mid_pixel(lm, i, size, size)
        got = img[:, y, x] * 255
        assert np.abs(got - colour).max() <= 3, (L.POSE_LIMB_NAMES[i], got, colour)
        tested += 1
    assert tested >= 20


def test_line_width_scales_and_visible_small():
    assert pose_line_thickness(512, 512) == 3
    assert pose_line_thickness(64, 64) >= 1
    lm = make_pose()
    for size in (64, 96):
        img = render_pose(lm, size, size)
        # every long limb leaves a clearly visible trace near its midpoint
        for i in range(len(L.POSE_LIMBS)):
            if limb_length(lm, i, size, size) < 8:
                continue
            y, x = limb_mid_pixel(lm, i, size, size)
            assert img[:, y - 1:y + 2, x - 1:x + 2].max() > 0.5, L.POSE_LIMB_NAMES[i]


def _limbs_using(points):
    return [i for i, (a, b) in enumerate(L.POSE_LIMBS) if a in points or b in points]


@pytest.mark.parametrize("missing,how", [
    ((13,), "nan"), ((13,), "lowvis"), ((12,), "lowvis"), ((26, 0), "nan"), ((11,), "nanxy"),
])
def test_missing_landmark_removes_exactly_its_limbs(missing, how):
    size = 256
    lm = make_pose()
    full = render_pose(lm, size, size)
    lm2 = lm.copy()
    for m in missing:
        if how == "nan":
            lm2[m] = np.nan
        elif how == "nanxy":
            lm2[m, :2] = np.nan
        else:
            lm2[m, 2] = 0.2
    part = render_pose(lm2, size, size)
    points = set(missing)
    if 11 in points or 12 in points:
        points.add(L.POSE_NECK)  # the derived neck needs both shoulders
    removed = _limbs_using(points)
    assert removed
    for i in range(len(L.POSE_LIMBS)):
        y, x = limb_mid_pixel(lm, i, size, size)
        if not mid_is_clear(lm, i, size, size):
            continue
        if i in removed:
            assert full[:, y, x].any() and not part[:, y, x].any(), L.POSE_LIMB_NAMES[i]
        else:
            assert np.array_equal(part[:, y, x], full[:, y, x]), L.POSE_LIMB_NAMES[i]
    # every changed pixel lies on a removed limb (line + joint disks)
    changed = np.argwhere((part != full).any(axis=0))[:, ::-1].astype(float)  # (x, y)
    assert len(changed)
    reach = pose_joint_radius(size, size) + 2.0  # disk + anti-aliasing fringe
    near = np.zeros(len(changed), dtype=bool)
    for i in removed:
        a, b = L.POSE_LIMBS[i]
        near |= dist_to_segment(changed, pose_point(lm, a, size, size),
                                pose_point(lm, b, size, size)) <= reach
    assert near.all()


def test_visibility_threshold_parameter():
    lm = make_pose(vis=0.4)
    assert not render_pose(lm, 64, 64).any()                       # default threshold 0.5
    assert render_pose(lm, 64, 64, visibility_threshold=0.3).any()
    assert np.array_equal(render_pose(lm, 64, 64, visibility_threshold=0.3),
                          render_pose(make_pose(), 64, 64))


def test_far_out_of_frame_points_do_not_crash():
    lm = make_pose()
    lm[15, :2] = (1e9, -1e9)
    lm[16, :2] = (1.3, -0.2)  # slightly outside the frame: still drawn (clipped by cv2)
    out = render_pose(lm, 128, 128)
    assert np.isfinite(out).all() and out.any()


def test_pose_augmentation():
    lm = make_pose()
    base = render_pose(lm, 128, 128)
    kw = dict(limb_drop_prob=0.5, head_jitter_px=5.0)
    a = render_pose(lm, 128, 128, rng=np.random.default_rng(123), **kw)
    b = render_pose(lm, 128, 128, rng=np.random.default_rng(123), **kw)
    c = render_pose(lm, 128, 128, rng=np.random.default_rng(124), **kw)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, base)
    assert not np.array_equal(a, c)
    # no augmentation without rng, and rng with zero strengths changes nothing
    assert np.array_equal(render_pose(lm, 128, 128, **kw), base)
    assert np.array_equal(render_pose(lm, 128, 128, rng=np.random.default_rng(0)), base)
    # dropping every limb -> empty; jitter only moves the head
    assert not render_pose(lm, 128, 128, rng=np.random.default_rng(0), limb_drop_prob=1.0).any()
    j = render_pose(lm, 128, 128, rng=np.random.default_rng(0), head_jitter_px=8.0)
    diff_rows = np.flatnonzero((j != base).any(axis=(0, 2)))
    assert diff_rows.size and diff_rows.max() < 0.25 * 128  # head + top of the neck only


# --------------------------------------------------------------------------------------------
# Face content
# --------------------------------------------------------------------------------------------

def test_face_468_vs_478_identical():
    f478 = make_face(478)
    f478[468:, :2] = 0.5  # irises somewhere: must be ignored
    a = render_face(f478[:468], 128, 160)
    b = render_face(f478, 128, 160)
    assert a.tobytes() == b.tobytes()


def _circle_face(size, radius_frac=0.3):
    """Only the face oval present, its points on a circle around the image centre."""
    lm = np.full((468, 3), np.nan, np.float32)
    oval = L.FACE_CONTOURS["face_oval"][0][:-1]
    ang = np.linspace(0, 2 * np.pi, len(oval), endpoint=False)
    lm[list(oval), 0] = 0.5 + radius_frac * np.cos(ang)
    lm[list(oval), 1] = 0.5 + radius_frac * np.sin(ang)
    lm[list(oval), 2] = 0.0
    return lm, oval, ang


def test_face_distance_channel():
    size = 256
    lm, oval, ang = _circle_face(size)
    out = render_face(lm, size, size)
    groups = list(L.FACE_CONTOURS)
    ch = out[1 + groups.index("face_oval")]
    # absent groups -> all-zero channels
    for g in groups:
        if g != "face_oval":
            assert not out[1 + groups.index(g)].any(), g
    # 1 at the curve's vertices
    for i in oval:
        x, y = lm[i, 0] * size - 0.5, lm[i, 1] * size - 0.5
        assert ch[int(round(y)), int(round(x))] == 1.0
    # decreasing away from the curve along the horizontal ray through the centre
    yc = int(round(0.5 * size - 0.5))
    x_curve = int(np.argmax(ch[yc, size // 2:])) + size // 2
    assert ch[yc, x_curve] == 1.0
    outward = ch[yc, x_curve:]
    inward = ch[yc, x_curve::-1][: size // 4]
    assert np.all(np.diff(outward) <= 1e-6) and np.all(np.diff(inward) <= 1e-6)
    assert outward[10] < 1.0 and inward[10] < 1.0
    d_scale = face_distance_scale(size, size)
    assert outward[int(d_scale) + 2] == 0.0  # zero beyond the distance scale
    assert abs(outward[10] - (1 - 10 / d_scale)) < 0.05
    # edge map: drawn only near the curve
    edge = out[0]
    ys, xs = np.nonzero(edge)
    r = np.hypot(xs - (size / 2 - 0.5), ys - (size / 2 - 0.5))
    assert edge.max() > 0.9
    assert np.all(np.abs(r - 0.3 * size) < 4)


def test_face_partial_group_still_drawn():
    f = make_face()
    g_idx = list(L.FACE_CONTOURS).index("left_eye")
    full = render_face(f, 128, 128)
    f[L.FACE_CONTOURS["left_eye"][0][3]] = np.nan
    part = render_face(f, 128, 128)
    assert part[1 + g_idx].any()
    assert not np.array_equal(part[1 + g_idx], full[1 + g_idx])
    # a group with all points missing -> zero channel
    for line in L.FACE_CONTOURS["left_eye"]:
        f[list(line)] = np.nan
    assert not render_face(f, 128, 128)[1 + g_idx].any()


def test_face_augmentation():
    f = make_face()
    base = render_face(f, 128, 128)
    a = render_face(f, 128, 128, rng=np.random.default_rng(5), jitter_px=2.0)
    b = render_face(f, 128, 128, rng=np.random.default_rng(5), jitter_px=2.0)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, base)
    assert np.array_equal(render_face(f, 128, 128, jitter_px=2.0), base)  # no rng -> no jitter


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def test_check_landmarks_ok():
    lm = make_pose().astype(np.float64)
    out = check_landmarks("dance", lm)
    assert out.dtype == np.float32 and out.shape == (33, 3)
    assert check_landmarks("face", make_face(478)).shape == (478, 3)
    assert check_landmarks("face", make_face(468).tolist()).shape == (468, 3)
    nan = check_landmarks("dance", np.full((33, 3), np.nan))
    assert np.isnan(nan).all()


@pytest.mark.parametrize("kind,arr,msg", [
    ("dance", np.zeros((32, 3)), r"wrong number of landmarks K=32, expected 33"),
    ("face", np.zeros((470, 3)), r"K=470, expected 468 or 478"),
    ("dance", np.zeros((33 * 3,)), r"2-D .*ndim=1"),
    ("dance", np.zeros((1, 33, 3)), r"ndim=3"),
    ("dance", np.zeros((33, 2)), r"3 columns"),
    ("dance", np.array([["a", "b", "c"]] * 33), r"real numeric"),
    ("dance", np.zeros((33, 3), dtype=complex), r"real numeric"),
    ("hands", np.zeros((21, 3)), r"unknown label kind"),
])
def test_check_landmarks_errors(kind, arr, msg):
    with pytest.raises(ValueError, match=msg):
        check_landmarks(kind, arr)


@pytest.mark.parametrize("kind,k", [("dance", 33), ("face", 468)])
def test_check_landmarks_inf(kind, k):
    lm = np.zeros((k, 3), np.float32)
    lm[5, 1] = np.inf
    lm[7, 2] = -np.inf
    with pytest.raises(ValueError, match=r"2 inf value\(s\) \(rows \[5, 7\]"):
        check_landmarks(kind, lm)
    with pytest.raises(ValueError, match="inf"):
        render_labels(kind, lm, 64, 64)
