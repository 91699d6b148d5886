"""Tests for models/motion.py (procedural dance) and trainer/synth.py (synthetic dancer dataset)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from trainer.dataset import Dataset
from models.motion import HEAD_RY, LM, NUM_LANDMARKS, DanceMotion
from trainer.synth import PART_NAMES, DancerRenderer, render_frame, synthesize

# ------------------------------------------------------------------------------------------------------
# fixtures: small datasets, written once per module
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ds64(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "d64"
    path = synthesize(out, seed=3, num_frames=24, size=64, clip_frames=10, progress=False)
    return Dataset(path)


@pytest.fixture(scope="module")
def ds128(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "d128"
    return Dataset(synthesize(out, seed=0, num_frames=40, size=128, progress=False))


# ------------------------------------------------------------------------------------------------------
# motion
# ------------------------------------------------------------------------------------------------------


def test_landmarks_shape_range_and_random_access():
    m = DanceMotion(seed=5, fps=30)
    lm = m.landmarks(123)
    assert lm.shape == (NUM_LANDMARKS, 3) and lm.dtype == np.float32
    # random access: the same frame from a fresh instance, after other frames, is identical
    m2 = DanceMotion(seed=5, fps=30)
    for i in (0, 400, 7):
        m2.landmarks(i)
    np.testing.assert_array_equal(m2.landmarks(123), lm)
    assert not np.array_equal(DanceMotion(seed=6).landmarks(123), lm)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_figure_inside_frame_and_moving(seed):
    m = DanceMotion(seed=seed)
    L = np.stack([m.landmarks(i) for i in range(0, 600, 2)])
    assert np.isfinite(L).all()
    assert (L[..., :2] > 0.0).all() and (L[..., :2] < 1.0).all()
    assert (L[..., 2] >= 0).all() and (L[..., 2] <= 1).all()
    # the figure occupies roughly 60-85% of the frame height (feet to the top of the head)
    poses = [m.pose(i) for i in range(0, 600, 10)]
    top = np.array([p.head_center[1] - HEAD_RY * p.scale for p in poses])
    bottom = np.array([p.xy[:, 1].max() for p in poses])
    assert (top > 0.02).all() and (bottom < 0.99).all()
    height = bottom - top
    assert 0.6 <= np.median(height) <= 0.85
    # wrists and ankles actually move
    for name in ("left_wrist", "right_wrist", "left_ankle", "right_ankle"):
        assert L[:, LM[name], :2].std(0).max() > 0.015, name
    for name in ("left_wrist", "right_wrist"):
        assert L[:, LM[name], :2].std(0).max() > 0.05, name
    # smooth: no popping between consecutive frames
    step = np.linalg.norm(np.diff(L[..., :2], axis=0), axis=-1)   # every 2nd frame here
    assert step.max() < 0.25


def test_motion_smooth_frame_to_frame():
    m = DanceMotion(seed=4)
    L = np.stack([m.landmarks(i) for i in range(900)])[..., :2]
    step = np.linalg.norm(np.diff(L, axis=0), axis=-1)
    acc = np.linalg.norm(np.diff(L, 2, axis=0), axis=-1)
    assert step.max() < 0.15
    assert acc.max() < 0.08


def test_turns_swap_left_right_and_lower_visibility():
    m = DanceMotion(seed=0)
    poses = [m.pose(i) for i in range(0, 2400, 3)]
    yaws = np.array([p.yaw for p in poses])
    front = [p for p, y in zip(poses, yaws) if math.cos(y) > 0.98]
    back = [p for p, y in zip(poses, yaws) if math.cos(y) < -0.9]
    side = [p for p, y in zip(poses, yaws) if abs(math.sin(y)) > 0.97]
    assert front and back and side, "the dance should face the camera, turn sideways and turn away"
    ls, rs = LM["left_shoulder"], LM["right_shoulder"]
    # MediaPipe convention: the person's left appears on the image's right when facing the camera
    assert all(p.xy[ls, 0] > p.xy[rs, 0] for p in front)
    assert all(p.xy[ls, 0] < p.xy[rs, 0] for p in back)
    # shoulders look narrower from the side
    w_front = np.median([abs(p.xy[ls, 0] - p.xy[rs, 0]) for p in front])
    w_side = np.median([abs(p.xy[ls, 0] - p.xy[rs, 0]) for p in side])
    assert w_side < 0.5 * w_front
    # facing the camera, the face is visible; from the side the far ear / eye are not
    assert np.mean([p.visibility[:11].min() for p in front]) > 0.9
    assert np.mean([p.visibility[:11].min() for p in side]) < 0.5
    assert np.mean([p.visibility[0] for p in back]) < 0.5


def test_landmarks_aspect():
    m = DanceMotion(seed=1)
    sq, wide, tall = m.landmarks(50), m.landmarks(50, aspect=16 / 9), m.landmarks(50, aspect=9 / 16)
    np.testing.assert_allclose(wide[:, 1], sq[:, 1], atol=1e-6)
    assert np.ptp(wide[:, 0]) < np.ptp(sq[:, 0])
    assert (tall[:, :2] >= 0).all() and (tall[:, :2] <= 1).all()
    np.testing.assert_allclose(tall[:, 2], sq[:, 2])


# ------------------------------------------------------------------------------------------------------
# dataset
# ------------------------------------------------------------------------------------------------------


def test_dataset_format_and_clips(ds64):
    d = ds64
    n = 24
    assert len(d) == n and d.kind == "dance"
    m = d.manifest
    assert (m.height, m.width, m.num_landmarks, m.fps) == (64, 64, 33, 30.0)
    assert m.source == "synth:seed=3,appearance=0"
    assert d.frames.shape == (n, 64, 64, 3) and d.frames.dtype == np.uint8
    assert d.landmarks.shape == (n, 33, 3) and d.landmarks.dtype == np.float32
    assert d.flow.shape == (n, 64, 64, 2) and d.flow.dtype == np.float16
    assert d.flow_conf.shape == (n, 64, 64) and d.flow_conf.dtype == np.uint8
    assert d.clips == [(0, 10), (10, 20), (20, 24)]
    for start, stop in d.clips:
        assert (d.flow_conf[start] == 0).all() and (d.flow[start] == 0).all()
        for i in range(start + 1, stop):
            assert (d.flow_conf[i] == 255).mean() > 0.8     # most pixels visible in the previous frame
            assert set(np.unique(d.flow_conf[i])) <= {0, 255}
    assert np.isfinite(d.flow.astype(np.float32)).all()
    lm = d.landmarks
    assert (lm[..., :2] >= 0).all() and (lm[..., :2] <= 1).all()
    # the landmarks are the motion's landmarks
    np.testing.assert_array_equal(lm[7], DanceMotion(seed=3).landmarks(7))
    # the dancer's exact mask: every pixel the rendered parts touch (their anti-aliased edge too), nothing else:
    # outside it the frame is the room to the level
    assert d.masks.shape == (n, 64, 64) and d.masks.dtype == np.uint8 and set(np.unique(d.masks)) == {0, 255}
    renderer = DancerRenderer(64, 0)
    res = renderer.render(DanceMotion(seed=3).pose(7))
    np.testing.assert_array_equal(d.masks[7] > 0, res.mask)
    outside = ~res.mask
    assert np.abs(res.frame.astype(int) - renderer.background.round().astype(int))[outside].max() <= 1
    edge = res.mask & ~(res.ids > 0)                       # touched, yet no part covers half of the pixel
    assert (res.mask >= (res.ids > 0)).all() and 0 < edge.sum() < 0.5 * (res.ids > 0).sum()


def test_single_clip_and_overwrite(tmp_path):
    p = synthesize(tmp_path / "one", seed=1, num_frames=5, size=32, progress=False)
    d = Dataset(p)
    assert d.clips == [(0, 5)]
    assert (d.flow_conf[0] == 0).all() and (d.flow_conf[1:] == 255).mean() > 0.8
    with pytest.raises(FileExistsError):
        synthesize(tmp_path / "one", seed=1, num_frames=5, size=32, progress=False)
    synthesize(tmp_path / "one", seed=2, num_frames=3, size=32, overwrite=True, progress=False)
    assert len(Dataset(tmp_path / "one")) == 3


def test_determinism(tmp_path, ds64):
    again = Dataset(synthesize(tmp_path / "again", seed=3, num_frames=12, size=64, clip_frames=10, progress=False))
    for name in ("frames", "landmarks", "flow", "flow_conf"):
        np.testing.assert_array_equal(getattr(again, name), getattr(ds64, name)[:12], err_msg=name)
    other = Dataset(synthesize(tmp_path / "other", seed=4, num_frames=12, size=64, clip_frames=10, progress=False))
    assert not np.array_equal(other.frames, again.frames)
    assert not np.array_equal(other.landmarks, again.landmarks)
    # The appearance seed changes the dancer and the room, not the motion.
    looks = Dataset(synthesize(tmp_path / "looks", seed=3, num_frames=2, size=64, appearance_seed=9, progress=False))
    np.testing.assert_array_equal(looks.landmarks, again.landmarks[:2])
    assert np.abs(looks.frames[0].astype(int) - again.frames[0].astype(int)).mean() > 5


def _warp(prev: np.ndarray, flow: np.ndarray) -> np.ndarray:
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(prev.astype(np.float32), gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def test_flow_is_exact(ds128):
    d = ds128
    errs, moving_flow, moving_zero = [], [], []
    for i in range(1, len(d)):
        flow = d.flow[i].astype(np.float32)
        cur = d.frames[i].astype(np.float32)
        prev = d.frames[i - 1].astype(np.float32)
        conf = d.flow_conf[i] == 255
        err = np.abs(_warp(prev, flow) - cur).mean(-1)
        errs.append(err[conf].mean())
        moving = conf & (np.linalg.norm(flow, axis=-1) > 1.0)
        if moving.sum() > 50:
            moving_flow.append(err[moving].mean())
            moving_zero.append(np.abs(prev - cur).mean(-1)[moving].mean())
    assert np.mean(errs) < 6.0 and np.max(errs) < 8.0
    assert len(moving_flow) > 10
    # on moving parts the exact flow explains the change, zero flow does not
    assert np.mean(moving_flow) < 8.0
    assert np.mean(moving_zero) > 2.0 * np.mean(moving_flow)
    # the background is static: zero flow there
    bg = np.all(d.frames[1:] == np.round(DancerRenderer(128, seed=0).background).astype(np.uint8), axis=-1)
    assert bg.mean() > 0.5
    assert (d.flow[1:][bg] == 0).all()


def test_confidence_marks_occlusions():
    """Pixels whose part was hidden (or off its surface) at t-1 get confidence 0."""
    m, r = DanceMotion(seed=0), DancerRenderer(96, seed=0)
    prev = r.render(m.pose(0))
    zeros = 0
    for i in range(1, 30):
        res = r.render(m.pose(i), m.pose(i - 1), prev.ids)
        h, w = res.ids.shape
        jx = np.floor(np.arange(w)[None] + 0.5 + res.flow[..., 0]).astype(int).clip(0, w - 1)
        jy = np.floor(np.arange(h)[:, None] + 0.5 + res.flow[..., 1]).astype(int).clip(0, h - 1)
        ok = res.conf == 255
        assert (prev.ids[jy, jx][ok] == res.ids[ok]).all()
        zeros += (res.conf == 0).sum()
        prev = res
    assert zeros > 0


def test_person_like(ds128):
    d = ds128
    bg = DancerRenderer(128, seed=0).background
    for i in (0, 20, 39):
        frame = d.frames[i].astype(np.float32)
        diff = np.abs(frame - bg).max(-1)
        frac = (diff > 12).mean()
        assert 0.06 < frac < 0.5, frac           # a sizeable figure, not the whole frame
        x, y = (d.landmarks[i, LM["nose"], :2] * 128).astype(int)
        assert diff[y, x] > 12                    # the head is drawn where the nose landmark is
        for name in ("left_hip", "right_hip", "left_knee", "right_knee", "left_shoulder", "right_shoulder"):
            x, y = (d.landmarks[i, LM[name], :2] * 128).astype(int)
            assert diff[max(0, y - 1):y + 2, max(0, x - 1):x + 2].max() > 12, name
    # a textured, shaded figure: many distinct colours, many visible parts
    res = render_frame(DanceMotion(seed=0).pose(0), 128, seed=0)
    ids = np.unique(res.ids)
    assert len(ids) >= 18 and ids.max() <= len(PART_NAMES)
    fig = res.frame[res.ids > 0]
    assert len(np.unique(fig.reshape(-1, 3), axis=0)) > 200


@pytest.mark.parametrize("size", [64, 128, 256])
def test_any_size(size):
    m = DanceMotion(seed=2)
    res = render_frame(m.pose(30), size, seed=2, prev_pose=m.pose(29))
    assert res.frame.shape == (size, size, 3) and res.frame.dtype == np.uint8
    assert res.ids.shape == (size, size) and res.flow.shape == (size, size, 2)
    assert res.conf.shape == (size, size) and res.conf.dtype == np.uint8
    assert (res.ids > 0).mean() > 0.05


def test_dataset_masks_are_for_every_frame_or_none(tmp_path):
    """A writer takes a person mask with every frame or with none; a bad one is refused before anything is
    written; a dataset without masks reads as masks None."""
    from trainer.dataset import DatasetWriter

    frame, lm = np.zeros((8, 8, 3), np.uint8), np.zeros((33, 3), np.float32)
    with DatasetWriter(tmp_path / "m", kind="dance", height=8, width=8, fps=30, num_landmarks=33) as w:
        w.add(frame, lm, mask=np.ones((8, 8), bool))
        with pytest.raises(ValueError, match="frame 1: a mask is given for every frame or for none"):
            w.add(frame, lm)
        with pytest.raises(ValueError, match=r"masks: expected shape \(8, 8\), got \(4, 4\)"):
            w.add(frame, lm, mask=np.ones((4, 4), np.uint8))
        with pytest.raises(ValueError, match="frames: expected shape"):
            w.add(frame[:4], lm, mask=np.ones((8, 8), np.uint8))      # nothing of it written
        w.add(frame, lm, mask=np.full((8, 8), 0.5, np.float32))
    d = Dataset(tmp_path / "m")
    assert len(d) == 2 and d.masks.shape == (2, 8, 8) and d.masks[0].min() == 255 and d.masks[1].max() == 128
    with DatasetWriter(tmp_path / "n", kind="dance", height=8, width=8, fps=30, num_landmarks=33) as w:
        w.add(frame, lm)
        with pytest.raises(ValueError, match="the first frame had none"):
            w.add(frame, lm, mask=np.ones((8, 8), np.uint8))
    assert Dataset(tmp_path / "n").masks is None and len(Dataset(tmp_path / "n")) == 1
    np.save(tmp_path / "m" / "masks.npy", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(Exception, match=r"masks.npy: expected uint8\(2, 8, 8\), found uint8\(3, 8, 8\)"):
        Dataset(tmp_path / "m")


def test_a_tilted_clip_moves_frames_flow_masks_and_landmarks_alike(ds128):
    """``Augment.tilt_prob``: one similarity transform per clip, the same for all its frames; the label map is
    rendered from the moved landmarks onto the moved body, the flow still explains each frame from the last,
    and the person mask moves with them."""
    import torch

    from models.warp import warp
    from trainer.clips import Augment, ClipSource

    src = ClipSource(ds128, 128)
    quiet = dict(limb_drop_prob=0.0, head_jitter_px=0.0, face_jitter_px=0.0)
    plain = src.load(10, 16, seed=(1, 0), augment=Augment(**quiet))
    tilted = src.load(10, 16, seed=(1, 0), augment=Augment(**quiet, tilt_prob=1.0, tilt_deg=25.0))
    again = src.load(10, 16, seed=(1, 0), augment=Augment(**quiet, tilt_prob=1.0, tilt_deg=25.0))
    for k in tilted:                                            # the clip's transform comes from its seed
        assert torch.equal(tilted[k], again[k]), k
    assert not torch.equal(plain["frames"], tilted["frames"])
    # one transform for the clip: the landmarks of every frame moved by the same similarity
    a, b = plain["landmarks"][..., :2].double(), tilted["landmarks"][..., :2].double()
    A = torch.cat((a.reshape(-1, 2), torch.ones(a.numel() // 2, 1, dtype=a.dtype)), 1)
    fit = torch.linalg.lstsq(A, b.reshape(-1, 2)).solution
    assert (A @ fit - b.reshape(-1, 2)).abs().max() < 1e-5
    lin = fit[:2].tolist()
    assert lin[0][0] == pytest.approx(lin[1][1], abs=1e-6) and lin[0][1] == pytest.approx(-lin[1][0], abs=1e-6)
    assert abs(lin[0][1]) > 1e-3                                # turned, not only moved

    def agreement(clip):                                        # the body's pixels inside its label-map region
        m, r = clip["person_mask"] > 0, clip["person"] > 0
        return ((m & r).sum() / m.sum()).item()

    assert agreement(tilted) > 0.95 * agreement(plain) > 0.5

    def errors(clip):               # mean |frame t - frame t-1 warped by flow t| (and by no flow) where it moves
        f, fl, c = clip["frames"], clip["flow"], clip["conf"][1:]
        moving = c * (fl[1:].norm(dim=1, keepdim=True) > 1.0)
        err = lambda prev: ((prev - f[1:]).abs() * moving).sum().item() / moving.sum().item() / 3  # noqa: E731
        return err(warp(f[:-1], fl[1:])), err(f[:-1])

    (flowed, still), (flowed_plain, _) = errors(tilted), errors(plain)
    assert flowed < 1.3 * flowed_plain + 0.005
    assert flowed < 0.5 * still                                 # the moved flow explains the moved motion
    # where the frame had no pixels (mirrored in at the border) the flow has no confidence
    assert tilted["conf"].mean() < plain["conf"].mean()


def test_similarity_warp_moves_pixels_landmarks_and_flow_by_the_same_map():
    """Known answers: a dot and the landmark drawn on it land on the same pixel after a quarter turn about the
    frame's centre; a constant flow turns with the frame; the border the frame never covered has no confidence;
    a face's depth scales with the frame, a pose's visibility does not."""
    import cv2

    from trainer.clips import similarity_warp

    S = 32
    frame = np.zeros((S, S, 3), np.uint8)
    frame[5, 9] = 255                                            # a dot at pixel (x 9, y 5) ...
    lm = np.array([[(9 + 0.5) / S, (5 + 0.5) / S, 0.7], [np.nan, np.nan, np.nan]], np.float32)  # ... its landmark
    flow = np.zeros((S, S, 2), np.float32)
    flow[..., 0] = 2.0                                           # everything came from 2 px to the right
    conf = np.full((S, S), 255, np.uint8)
    turn = cv2.getRotationMatrix2D(((S - 1) / 2, (S - 1) / 2), 90, 1.0)
    f2, fl2, c2, m2, lm2 = similarity_warp(S, turn, frame, flow, conf, conf.copy(), lm)
    y, x = np.unravel_index(f2[..., 0].argmax(), (S, S))
    assert f2[y, x, 0] == 255 and [x, y] == pytest.approx(turn @ np.array([9, 5, 1.0]), abs=1e-6)
    assert lm2[0, :2] * S - 0.5 == pytest.approx([x, y], abs=1e-4)
    assert np.isnan(lm2[1]).all() and lm2[0, 2] == pytest.approx(0.7)
    assert fl2[S // 2, S // 2] == pytest.approx(turn[:, :2] @ np.array([2.0, 0.0]), abs=1e-5)
    assert (c2[1:-1, 1:-1] == 255).all() and m2.min() == 255     # a quarter turn of a square covers it all ...
    shift = np.array([[1.0, 0.0, 6.0], [0.0, 1.0, 0.0]])
    _, _, c3, m3, _ = similarity_warp(S, shift, frame, flow, conf, conf.copy(), lm)
    assert (c3[:, :7] == 0).all() and (c3[1:-1, 7:-1] == 255).all()   # ... a shift leaves a strip, one px more
    assert (m3[:, :6] == 0).all() and (m3[:, 6:] == 255).all()
    zoom = cv2.getRotationMatrix2D((10.0, 10.0), 30, 2.0)
    assert similarity_warp(S, zoom, frame, flow, conf, None, lm, z_scales=True)[4][0, 2] == pytest.approx(1.4)
