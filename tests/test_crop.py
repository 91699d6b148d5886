"""Where the person is: regions, the person crop that follows it, and eval figures that cannot be fooled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import save_checkpoint
from models.crop import FACE_FEATURES, feature_region, head_region, limb_region, person_region
from models.presets import get_preset
from models.registry import build_generator
from models.render import render_labels
from models.visualize import to_uint8
from models.window import BoxTracker, CropBox, crop_size_for, cut_batch, paste_batch
from trainer.clips import ClipSource
from trainer.dataset import Dataset
from trainer.evaluate import Scorer, _Pooled, masked_psnr, masked_sse, masked_ssim
from trainer.synth import synthesize

SIZE = 96


@pytest.fixture(scope="module")
def dancer(tmp_path_factory):
    root = tmp_path_factory.mktemp("crop")
    path = synthesize(root / "d", seed=3, num_frames=16, size=SIZE, progress=False)
    src = ClipSource(Dataset(path), SIZE)
    return {"path": path, "source": src, "clip": src.load(0, 16)}


def _pose(x: float, y: float, spread: float = 0.1) -> np.ndarray:
    """A 33-landmark pose: every landmark within +-spread of (x, y), all visible."""
    rng = np.random.default_rng(0)
    lm = np.empty((33, 3), np.float32)
    lm[:, 0] = x + rng.uniform(-spread, spread, 33)
    lm[:, 1] = y + rng.uniform(-spread, spread, 33)
    lm[:, 2] = 1.0
    lm[[0, 32], 0], lm[[0, 32], 1] = (x - spread, x + spread), (y - spread, y + spread)  # bbox centre = (x, y)
    return lm


def test_regions_cover_the_person_and_the_head():
    lm = _pose(0.5, 0.5, 0.2)
    person = person_region(render_labels("dance", lm, 64, 64))
    assert person[32, 32] == 1 and person[0, 0] == 0 and person[63, 63] == 0
    assert person_region(np.zeros((3, 64, 64), np.float32)).sum() == 0          # nobody there: empty region
    head = head_region("dance", lm, 64, 64)
    assert 0 < head.sum() < person.sum()
    lm_nohead = lm.copy()
    lm_nohead[:11, 2] = 0.0                                                         # head landmarks not visible
    assert head_region("dance", lm_nohead, 64, 64).sum() == 0


def test_limb_region_is_a_band_along_the_visible_limbs():
    lm = np.full((33, 3), np.nan, np.float32)
    lm[:, 2] = 1.0
    lm[11, :2], lm[13, :2], lm[15, :2] = (0.5, 0.2), (0.5, 0.5), (0.5, 0.8)      # left shoulder, elbow, wrist
    mask = limb_region(lm, 100, 100)                                              # band 5 px wide
    assert mask.dtype == np.uint8 and mask.shape == (100, 100)
    assert mask[20:80, 49].all() and mask[50, 47:52].all()                      # along the arm, across it
    assert mask[50, 44] == 0 and mask[50, 55] == 0 and mask[10, 49] == 0         # not beyond the band or the ends
    lm[13, 2] = 0.1                                                               # elbow not visible: no arm
    assert limb_region(lm, 100, 100).sum() == 0
    torso = np.full((33, 3), np.nan, np.float32)
    torso[[11, 12, 23, 24]] = [[0.4, 0.3, 1], [0.6, 0.3, 1], [0.4, 0.7, 1], [0.6, 0.7, 1]]
    assert limb_region(torso, 100, 100).sum() == 0                                # the torso is not a limb


def test_feature_region_marks_the_eyes_nose_and_mouth():
    lm = np.full((33, 3), np.nan, np.float32)
    lm[:, 2] = 1.0
    lm[0, :2], lm[2, :2], lm[5, :2] = (0.5, 0.3), (0.45, 0.25), (0.55, 0.25)    # nose, left eye, right eye
    lm[9, :2], lm[10, :2] = (0.47, 0.35), (0.53, 0.35)                           # mouth corners
    mask = feature_region(lm, 200, 200)                                           # disks of radius 3 px
    assert sorted(FACE_FEATURES) == [0, 2, 5, 9, 10]
    for x, y in lm[list(FACE_FEATURES), :2] * 200 - 0.5:
        assert mask[round(y), round(x)] == 1 and mask[round(y), round(x) + 6] == 0
    assert 5 * 25 <= mask.sum() <= 5 * 37                                          # five disks, nothing else
    lm[[0, 2, 5, 9, 10], 2] = 0.2                                                  # not visible: nothing marked
    assert feature_region(lm, 200, 200).sum() == 0


def test_box_tracker_snaps_clamps_smooths_and_holds():
    tr = BoxTracker(64, 32, 16, smoothing=0.5)
    first = tr.update(_pose(0.5, 0.5))
    assert first == CropBox(24, 16, 32, 16)                                         # centred on the person
    assert first.x0 % 4 == 0 and first.y0 % 4 == 0
    moved = tr.update(_pose(0.75, 0.5))                                             # half-way (EMA 0.5): x 40
    assert (moved.x0, moved.y0) == (32, 16)
    assert tr.update(None) == moved and tr.update(np.full((33, 3), np.nan, np.float32)) == moved  # nobody: hold
    for _ in range(20):
        corner = tr.update(_pose(0.99, 0.99))
    assert (corner.x0, corner.y0) == (48, 32)                                       # clamped inside the frame
    tr.reset()
    assert tr.update(None) == CropBox(24, 16, 32, 16)                               # no person yet: the centre
    with pytest.raises(ValueError, match="must fit"):
        BoxTracker(64, 80, 16)


def test_crop_size_holds_the_person_with_a_margin():
    lms = np.stack([_pose(0.5, 0.5, 0.2)] * 10)                                     # 0.4 x 0.4 of the frame
    h, w = crop_size_for(lms, 256, aspect=0.75, margin=0.1)
    assert h % 16 == 0 and w % 16 == 0
    assert h >= 0.4 / 0.75 * 1.2 * 256 and w >= 0.4 * 1.2 * 256                      # the width binds here
    assert crop_size_for(np.stack([_pose(0.5, 0.5, 0.49)] * 3), 128) == (128, 128)  # capped at the frame
    with pytest.raises(ValueError, match="no frame has a visible landmark"):
        crop_size_for(np.full((4, 33, 3), np.nan, np.float32), 128)


def test_crop_and_composite_round_trip_reproduces_the_real_frame(dancer):
    """The person's window cut from the real frame and pasted onto the plate gives the real frame back where the
    person is, and the plate (the room) everywhere else."""
    clip, src = dancer["clip"], dancer["source"]
    h, w = crop_size_for(np.asarray(src.ds.landmarks), SIZE)
    G = build_generator(get_preset("lite", size=SIZE, ngf=8, crop_height=h, crop_width=w))
    boxes = G.track_boxes(clip["landmarks"][None], 1, 16)[0]
    plate = src.background_plate()[None]
    for t in (0, 8, 15):
        real = clip["frames"][t][None]
        out = paste_batch(plate, cut_batch(real, [boxes[t]]), [boxes[t]])
        person = clip["person"][t, 0].bool()
        ys, xs = boxes[t].slices()
        inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        inside[ys, xs] = True
        assert bool(person[~inside].sum() == 0)                                     # the window holds the person
        assert torch.equal(out[0][:, inside], real[0][:, inside])
        assert torch.equal(out[0][:, ~inside], plate[0][:, ~inside])
        assert masked_psnr(to_uint8(out[0].numpy()), to_uint8(real[0].numpy()), np.ones((SIZE, SIZE))) > 35


def test_masked_metrics_known_answers():
    a = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    b = a.copy()
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1
    b[0:4] = 0                                                                      # damage outside the mask only
    assert masked_psnr(a, b, mask) == float("inf")
    assert masked_ssim(a, a, mask) == pytest.approx(1.0)
    c = a.copy()
    c[mask > 0] = np.clip(a[mask > 0].astype(int) + 10, 0, 255)
    expected = 10 * np.log10(255 ** 2 / np.mean((c[mask > 0].astype(float) - a[mask > 0]) ** 2))
    assert masked_psnr(a, c, mask) == pytest.approx(expected)
    assert masked_psnr(a, c, np.zeros((32, 32))) is None
    # Region figures pool the error over frames: one exact frame does not make them infinite.
    pooled = _Pooled()
    pooled.add(masked_sse(a, a, mask))
    pooled.add(masked_sse(a, c, mask))
    assert pooled.value() == pytest.approx(expected + 10 * np.log10(2))


@pytest.mark.timeout(300)
def test_eval_figures_of_a_perfect_copy_and_of_drawing_nothing(dancer):
    clip, src = dancer["clip"], dancer["source"]
    plate = to_uint8(src.background_plate().numpy())
    perfect = Scorer("dance", plate)
    perfect.add_clip(clip["frames"], clip)
    r = perfect.result()
    assert r["frames"] == 16 and r["psnr_person"] == float("inf") and r["psnr_head"] == float("inf")
    assert r["ssim_person"] == pytest.approx(1.0) and r["flicker_ratio"] == pytest.approx(1.0)
    # The real frames fed back: MediaPipe sees exactly what it sees on the real clip.
    assert r["detect_rate"] == r["detect_rate_real"] > 0.9
    assert r["pose_error"] == pytest.approx(r["pose_error_real"]) and r["pose_error_ratio"] == pytest.approx(1.0)
    assert 0 < r["pose_error_real"] < 0.1
    assert r["mirrored_rate"] == r["mirrored_rate_real"] < 0.5          # MediaPipe's own flips, the same frames
    assert r["psnr_person_strict"] == r["psnr_outside_person"] == float("inf")    # the dancer's masks
    # Drawing nothing (the plate every frame) scores the baseline, a long way below a copy.
    empty = Scorer("dance", plate, pose=False)
    empty.add_clip(torch.from_numpy(plate).permute(2, 0, 1).float().div(127.5).sub(1).expand(16, -1, -1, -1), clip)
    e = empty.result()
    assert e["psnr_person"] == pytest.approx(e["psnr_person_baseline"], abs=0.05)
    assert e["psnr"] == pytest.approx(e["psnr_baseline"], abs=0.05)
    assert e["psnr_person"] < e["psnr"] - 3 and "pose_error" not in e
    # ... on the person's own pixels far below, and outside them the plate is the room
    assert e["psnr_person_strict"] < e["psnr_person"] - 1 and e["psnr_outside_person"] > e["psnr"] + 5
    plain = Scorer("dance", plate, pose=False)                 # data without masks: no mask figures
    plain.add_clip(clip["frames"], {k: v for k, v in clip.items() if k != "person_mask"})
    assert "psnr_person_strict" not in plain.result() and "psnr_outside_person" not in plain.result()


def _crop_lite(dancer) -> torch.nn.Module:
    """A lite generator (seed 0, eval mode) in the person crop the dancer's landmarks size, on its plate."""
    src = dancer["source"]
    h, w = crop_size_for(np.asarray(src.ds.landmarks), SIZE)
    torch.manual_seed(0)
    G = build_generator(get_preset("lite", size=SIZE, ngf=8, crop_height=h, crop_width=w)).eval()
    G.set_background(src.background_plate())
    return G


def test_live_session_draws_exactly_what_the_rollout_draws(dancer, tmp_path):
    """The person crop follows the person the same way in training/eval (rollout) and live (Session)."""
    from realtime.engine import open_engine
    from realtime.session import Session

    clip = dancer["clip"]
    G = _crop_lite(dancer)
    cfg = G.cfg
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.05)                                     # not just the init
        fake = G.rollout(clip["labels"][None], landmarks=clip["landmarks"][None])[0][0]
    save_checkpoint(tmp_path / "generator", {f"G.{k}": v for k, v in G.state_dict().items()}, cfg, {})
    places = G.placements(clip["landmarks"][None], 1, 16)[0]
    boxes = [p.box for p in places]
    assert len({(b.x0, b.y0) for b in boxes}) > 1                                   # the window really moves
    assert len({p.head for p in places}) > 1 and cfg.head_side                       # and so does the head window
    for backend, tol in (("torch", 0), ("onnxruntime", 2)):
        session = Session(open_engine(tmp_path, backend))
        for t in range(16):
            feeds = session.prepare(clip["landmarks"][t].numpy())
            assert tuple(feeds["head"][0]) == places[t].head                         # placed as in training
            rgb = session.finish(np.asarray(session.engine.step(feeds))[0])
            assert session.box == boxes[t]
            diff = np.abs(rgb.astype(int) - to_uint8(fake[t].numpy()).astype(int)).max()
            assert diff <= tol, (backend, t, diff)


def test_a_batch_of_clips_rolls_out_as_each_clip_alone(dancer):
    """Two clips in one rollout, each with its own moving window (training's batches), draw what each draws alone."""
    clip = dancer["clip"]
    G = _crop_lite(dancer)
    labels, landmarks = clip["labels"][:6], clip["landmarks"][:6]
    other_labels, other_landmarks = clip["labels"][10:].flip(0), clip["landmarks"][10:].flip(0)
    with torch.no_grad():
        both = G.rollout(torch.stack((labels, other_labels)), landmarks=torch.stack((landmarks, other_landmarks)))
        alone = [G.rollout(lab[None], landmarks=lm[None]) for lab, lm in ((labels, landmarks),
                                                                           (other_labels, other_landmarks))]
    boxes = G.track_boxes(torch.stack((landmarks, other_landmarks)), 2, 6)
    assert boxes[0] != boxes[1]                                                     # two different windows
    for b in range(2):
        for got, want in zip(both, alone[b]):
            torch.testing.assert_close(got[b], want[0], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="1 windows for a batch of 2"):
        cut_batch(torch.zeros(2, 3, SIZE, SIZE), boxes[0][:1])


def test_a_mirrored_detection_is_told_from_a_noisy_one():
    from trainer.evaluate import is_mirrored

    pose = np.full((33, 3), np.nan, np.float32)
    pose[[11, 12, 23, 24]] = [[0.6, 0.3, 1], [0.4, 0.3, 1], [0.57, 0.6, 1], [0.43, 0.6, 1]]  # facing the camera
    noisy = pose.copy()
    noisy[:, :2] += 0.03                                                # off, but the right way round
    behind = pose.copy()
    behind[[11, 12, 23, 24]] = pose[[12, 11, 24, 23]]                   # left and right exchanged: seen from behind
    assert is_mirrored(noisy, pose) is False and is_mirrored(behind, pose) is True
    hidden = behind.copy()
    hidden[[11, 12, 23, 24], 2] = 0.1                                   # shoulders and hips not visible
    assert is_mirrored(hidden, pose) is None


def test_face_openings_and_their_correlation_on_known_answers():
    from models.crop import face_region
    from models.landmarks import FACE_POINTS as P
    from trainer.evaluate import correlation, face_openings

    mesh = np.full((478, 3), 0.5, np.float32)
    mesh[P["right_eye_outer"], :2], mesh[P["left_eye_outer"], :2] = (0.3, 0.4), (0.7, 0.4)   # 0.4 apart
    mesh[P["upper_lip_inner"], :2], mesh[P["lower_lip_inner"], :2] = (0.5, 0.70), (0.5, 0.80)
    mesh[P["right_eye_top"], :2], mesh[P["right_eye_bottom"], :2] = (0.35, 0.38), (0.35, 0.42)
    mesh[P["left_eye_top"], :2], mesh[P["left_eye_bottom"], :2] = (0.65, 0.39), (0.65, 0.41)
    mouth, eyes = face_openings(mesh)
    assert mouth == pytest.approx(0.1 / 0.4) and eyes == pytest.approx(0.5 * (0.04 + 0.02) / 0.4)
    broken = mesh.copy()
    broken[P["lower_lip_inner"]] = np.nan
    assert face_openings(broken) is None and face_openings(mesh[:33]) is None
    assert correlation([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert correlation([1, 2], [1, 2]) is None and correlation([1, 1, 1], [1, 2, 3]) is None
    region = face_region(mesh, 100, 100)                                  # the hull of the mesh's points
    assert region[40, 50] == 1 and region[75, 50] == 1 and region[10, 10] == 0 and region[90, 50] == 0
