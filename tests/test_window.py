"""Where a generator draws (models/window.py): one placement, one head-window size, one cut and paste — for
training, evaluation and the live session alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.presets import get_preset
from models.registry import build_generator
from models.window import (CropBox, LowPass, Placer, cut, cut_batch, cut_clips, default_head_side, paste,
                           paste_batch, place_clips)


def _pose(x: float, y: float) -> np.ndarray:
    """A 33-landmark pose around (x, y): the head landmarks (0-10) above, the rest below."""
    lm = np.zeros((33, 3), np.float32)
    lm[:, 0] = x + np.linspace(-0.1, 0.1, 33)
    lm[:11, 1] = y - 0.1
    lm[11:, 1] = y + np.linspace(-0.1, 0.2, 22)
    lm[:, 2] = 1.0
    return lm


@pytest.mark.parametrize("size, side", [(16, 8), (64, 8), (96, 8), (128, 16), (200, 24), (256, 32), (512, 64)])
def test_one_head_window_size_for_the_head_branch_and_the_face_discriminator(size, side):
    assert default_head_side(size) == side
    if size % 16 == 0:
        assert get_preset("lite", size=size, head_crop=-1).head_side == side     # what lite's head branch refines


def test_the_face_discriminator_judges_the_head_branch_window_or_the_same_rule(tmp_path):
    from trainer.synth import synthesize
    from trainer.train import TrainConfig, Trainer

    data = synthesize(tmp_path / "d", seed=1, num_frames=8, size=64, progress=False)
    lite = get_preset("lite", size=64, ngf=8, ndf=8)
    dance = get_preset("dance", size=64, ngf=8, ndf=8, n_blocks=1, n_blocks_flow=1, n_downsample=2)
    for cfg in (lite, dance):
        trainer = Trainer(cfg, TrainConfig(iterations=1, w_face_gan=1.0), data, tmp_path / cfg.name, progress=False)
        assert trainer.face_side == (cfg.head_side or default_head_side(64)) == 8


def test_cut_then_paste_gives_back_the_frame_in_numpy_and_torch():
    rng = np.random.default_rng(0)
    frame = rng.random((3, 32, 40)).astype(np.float32)
    box = CropBox(4, 8, 16, 20)
    for x in (frame.copy(), torch.from_numpy(frame.copy())):
        window = cut(x, box)
        assert tuple(window.shape) == (3, 16, 20) and float(window[0, 0, 0]) == frame[0, 8, 4]
        canvas = x * 0
        paste(canvas, window, box)
        assert float(np.asarray(canvas).sum()) == pytest.approx(float(np.asarray(window).sum()))
        paste(canvas, x, CropBox(0, 0, 32, 40))
        assert np.array_equal(np.asarray(canvas), frame)
    batch = torch.from_numpy(rng.random((2, 3, 32, 32)).astype(np.float32))
    boxes = [CropBox(0, 0, 16, 16), CropBox(12, 4, 16, 16)]
    windows = cut_batch(batch, boxes)
    assert torch.equal(paste_batch(batch * 0, windows, boxes)[1, :, 4:20, 12:28], batch[1, :, 4:20, 12:28])
    clips = batch[:, None].expand(2, 3, 3, 32, 32)
    assert torch.equal(cut_clips(clips, [[b] * 3 for b in boxes])[1, 2], windows[1])


def test_cut_clips_backward_pastes_each_windows_gradient_where_it_was_cut():
    """cut_clips' own backward (one zeroed clip, every window's gradient pasted in) gives the gradient that
    autograd's per-frame selections and slices give, for two clips whose frames' windows overlap."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 2, 24, 20, requires_grad=True)
    boxes = [[CropBox(0, 0, 12, 10), CropBox(8, 5, 12, 10), CropBox(10, 12, 12, 10)],
             [CropBox(1, 2, 12, 10), CropBox(1, 2, 12, 10), CropBox(7, 0, 12, 10)]]
    weights = torch.randn(2, 3, 2, 12, 10)
    plain = torch.stack([torch.stack([cut(x[b, t], bx) for t, bx in enumerate(row)]) for b, row in enumerate(boxes)])
    want_grad, = torch.autograd.grad((plain * weights).sum(), x)
    got = cut_clips(x, boxes)
    assert type(got.grad_fn).__name__ == "CutClipsBackward"                  # its own backward, not autograd's
    got_grad, = torch.autograd.grad((got * weights).sum(), x)
    assert got.shape == (2, 3, 2, 12, 10) and torch.equal(got, plain)
    assert torch.equal(got_grad, want_grad)
    assert float(got_grad[0, 0, :, 12:].abs().sum()) == 0.0          # outside frame (0, 0)'s window: no gradient
    assert not cut_clips(x.detach(), boxes).requires_grad


def test_one_low_pass_smooths_the_model_window_and_the_face_crop_in_frames_or_seconds():
    from models.posenorm import FaceCrop, FaceCropConfig, face_box

    f = LowPass.from_time_constant(0.1, 30.0)              # 3 frames: after them a step is 1 - 1/e of the way
    assert f.update([0.0, 10.0]).tolist() == [0.0, 10.0]   # the first sample is taken as it is
    for _ in range(3):
        v = f.update([1.0, 10.0])
    np.testing.assert_allclose(v, [1 - np.exp(-1.0), 10.0], rtol=1e-12)
    f.reset()
    assert f.value is None and f.update([5.0]).tolist() == [5.0]
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\), got 1.0"):
        LowPass(1.0)

    # the face crop's centre is that filter, at the video's rate: a face moved by 0.1 (under the jump threshold)
    face = np.zeros((468, 3), np.float32)
    face[:, 0] = np.linspace(0.4, 0.6, 468)
    face[:, 1] = np.linspace(0.3, 0.5, 468)
    cfg = FaceCropConfig(tau_center_s=0.1, tau_side_s=0.3, fps=30.0)
    crop = FaceCrop(cfg)
    (x0, _, side), restarted = crop.update(face)
    assert restarted
    centre = LowPass.from_time_constant(0.1, 30.0)
    centre.update([x0 + side / 2])
    moved = face.copy()
    moved[:, 0] += 0.1
    target = face_box(moved, 1.0, cfg)[0]
    for _ in range(4):
        (x0, _, side), restarted = crop.update(moved)
        assert not restarted
        assert x0 + side / 2 == pytest.approx(centre.update([target])[0], abs=1e-12)   # the side does not change
    assert 0.5 < x0 + side / 2 < target


def test_a_placer_follows_the_person_smoothly_and_places_the_head_on_the_head():
    placer = Placer(128, (64, 48), head_side=16)
    first = placer.first()
    assert first.box == CropBox(40, 32, 64, 48) and first.head == (16, 0)   # the frame's centre; the top centre
    start = placer.update(_pose(0.7, 0.5))                                   # the first sight: straight there
    places = [placer.update(_pose(0.3, 0.5)) for _ in range(12)]            # then the person moves left
    xs = [start.box.x0] + [p.box.x0 for p in places]
    assert xs == sorted(xs, reverse=True) and xs[0] - xs[1] < xs[0] - xs[-1]  # follows gradually
    assert all(p.box.x0 % 4 == 0 and p.box.y0 % 4 == 0 for p in places)     # snapped to the input stride
    head = places[-1].head_window(16)
    centre = np.mean(_pose(0.3, 0.5)[:11, :2], 0) * 128
    assert abs(head.x0 + 8 - centre[0]) <= 1 and abs(head.y0 + 8 - centre[1]) <= 1
    placer.reset()
    assert placer.update(None) == first                                      # a reset starts the stream over
    whole = Placer(64, (64, 64))
    assert not whole.follows and whole.update(_pose(0.3, 0.5)).box == CropBox(0, 0, 64, 64)


def test_clips_are_placed_from_their_first_frame_each_and_need_landmarks_with_a_crop():
    placer = Placer(128, (64, 48))
    lm = np.stack([np.stack([_pose(0.3, 0.5)] * 4), np.stack([_pose(0.7, 0.5)] * 4)])
    rows = place_clips(placer, lm, 2, 4)
    alone = place_clips(placer, lm[1:], 1, 4)
    assert rows[1] == alone[0] and rows[0] != rows[1]                       # the second clip starts afresh
    with pytest.raises(ValueError, match="places its window by the landmarks"):
        place_clips(placer, None, 1, 4)


def test_the_engine_starts_where_a_window_stands_before_a_person(tmp_path):
    from models.checkpoint import save_checkpoint
    from realtime.engine import open_engine

    cfg = get_preset("lite", size=64, ngf=8, crop_height=48, crop_width=32)
    G = build_generator(cfg).eval()
    G.set_background(torch.linspace(-1, 1, 3 * 64 * 64).reshape(3, 64, 64))
    save_checkpoint(tmp_path / "generator", {f"G.{k}": v for k, v in G.state_dict().items()}, cfg, {})
    engine = open_engine(tmp_path, "torch")
    box = Placer.of(cfg).first().box
    assert np.array_equal(engine.zero_inputs()["plate"][0], cut(engine.plate, box))


def _face_mesh(rng: np.random.Generator, centre: tuple[float, float]) -> np.ndarray:
    """A 478-point 'mesh' scattered around ``centre`` (what the placement and the renderer need of one)."""
    lm = np.zeros((478, 3), np.float32)
    lm[:, :2] = np.asarray(centre, np.float32) + rng.uniform(-0.2, 0.2, (478, 2)).astype(np.float32)
    return lm


def test_face_lite_draws_the_whole_face_crop_with_a_detail_window_on_the_eyes_and_mouth(tmp_path):
    """face-lite: lite's generator on a face crop; its head window follows the eyes and lips, and the live session
    places it and draws exactly as the training rollout does."""
    from models.checkpoint import save_checkpoint
    from models.crop import FACE_DETAIL_POINTS
    from models.render import render_labels
    from models.visualize import to_uint8
    from realtime.engine import open_engine
    from realtime.session import Session

    cfg = get_preset("face-lite", size=64, ngf=8)
    assert cfg.crop_hw == (64, 64) and cfg.head_side == default_head_side(64, "face") == 24 and cfg.label_nc == 9
    assert build_generator(cfg).head_branch.body[0].out_channels == cfg.head_channels == 16     # a thinner branch
    rng = np.random.default_rng(0)
    meshes = np.stack([_face_mesh(rng, (0.45 + 0.02 * t, 0.5)) for t in range(5)])
    labels = torch.from_numpy(np.stack([render_labels("face", m, 64, 64) for m in meshes]))[None]
    torch.manual_seed(0)
    G = build_generator(cfg).eval()
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        fake = G.rollout(labels, landmarks=torch.from_numpy(meshes)[None])[0][0]
    places = G.placements(torch.from_numpy(meshes)[None], 1, 5)[0]
    for p, m in zip(places, meshes):
        centre = m[list(FACE_DETAIL_POINTS), :2].mean(0) * 64
        assert p.box == CropBox(0, 0, 64, 64)
        assert abs(p.head[0] + 12 - centre[0]) <= 1 and abs(p.head[1] + 12 - centre[1]) <= 1
    save_checkpoint(tmp_path / "generator", {f"G.{k}": v for k, v in G.state_dict().items()}, cfg, {})
    session = Session(open_engine(tmp_path, "torch"))
    for t in range(5):
        feeds = session.prepare(meshes[t])
        assert tuple(feeds["head"][0]) == places[t].head
        rgb = session.finish(np.asarray(session.engine.step(feeds))[0])
        assert np.array_equal(rgb, to_uint8(fake[t].numpy()))
    from models.crop import FACE_FEATURE_POINTS, feature_region

    features = feature_region(meshes[0], 64, 64, kind="face")          # what the L1 weights up: eyes and lips
    lips = np.round(meshes[0][list(FACE_FEATURE_POINTS["lips_outer"]), :2] * 64 - 0.5).astype(int).clip(0, 63)
    assert features.any() and features[lips[:, 1], lips[:, 0]].all()
    with pytest.raises(ValueError, match="face dataset's frames are the stabilised face crop already"):
        get_preset("lite", kind="face")
