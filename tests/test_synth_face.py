"""The synthetic talking face: its mesh in MediaPipe's layout, its motion, its frames and its dataset."""
from __future__ import annotations

import numpy as np
import pytest

from models.face_motion import FaceMotion, face_template, mesh_triangles, place
from models.landmarks import FACE_CONTOURS, FACE_NUM_LANDMARKS_REFINED, FACE_POINTS
from trainer.evaluate import face_openings


def test_template_puts_every_feature_where_a_face_has_it():
    t = face_template()
    assert t.shape == (FACE_NUM_LANDMARKS_REFINED, 3) and np.isfinite(t).all()
    assert len(np.unique(np.round(t[:468, :2], 6), axis=0)) == 468          # no two points on top of each other
    y = lambda name: t[FACE_POINTS[name], 1]                                   # noqa: E731
    assert y("forehead") < y("right_eye_top") < y("nose_tip") < y("upper_lip_inner") < y("chin")
    assert t[FACE_POINTS["right_eye_outer"], 0] < t[FACE_POINTS["right_eye_inner"], 0] < 0       # the person's
    assert 0 < t[FACE_POINTS["left_eye_inner"], 0] < t[FACE_POINTS["left_eye_outer"], 0]         # right: image left
    assert t[FACE_POINTS["nose_tip"], 2] == t[:468, 2].min()                   # the nose is nearest the camera
    for name in ("right_eyebrow", "left_eyebrow"):                             # brows above their eye
        assert all(t[i, 1] < t[FACE_POINTS["right_eye_top"], 1] for line in FACE_CONTOURS[name] for i in line)
    oval = t[list(FACE_CONTOURS["face_oval"][0])]
    assert (t[:468, 0] >= oval[:, 0].min() - 1e-9).all() and (t[:468, 0] <= oval[:, 0].max() + 1e-9).all()
    # every point the average of its mesh neighbours unless pinned: the fill is smooth, no stray points
    edges = np.array([(a, b) for a, b, c in mesh_triangles()] + [(b, c) for a, b, c in mesh_triangles()])
    assert np.linalg.norm(t[edges[:, 0], :2] - t[edges[:, 1], :2], axis=1).max() < 0.2


def test_openings_follow_the_state_and_eval_measures_them():
    """eval's mouth and eye openings, on the template, rise with the mouth and eyes asked for: closed is 0."""
    mouths = [face_openings(face_template(1.0, m))[0] for m in (0.0, 0.3, 0.6, 1.0)]
    eyes = [face_openings(face_template(e, 0.0))[1] for e in (0.0, 0.5, 1.0)]
    assert mouths[0] == pytest.approx(0.007, abs=0.005) and np.all(np.diff(mouths) > 0.03)
    assert eyes[0] < 0.01 and np.all(np.diff(eyes) > 0.04)


def test_motion_is_deterministic_smooth_and_talks_and_blinks():
    a, b, c = FaceMotion(seed=3), FaceMotion(seed=3), FaceMotion(seed=4)
    np.testing.assert_array_equal(a.landmarks(57), b.landmarks(57))
    assert not np.allclose(a.landmarks(57), c.landmarks(57))
    states = [a.state(i) for i in range(900)]                                 # 30 s at 30 fps
    mouth, eyes = np.array([s.mouth for s in states]), np.array([s.eyes for s in states])
    assert mouth.max() > 0.6 and (mouth == 0).mean() > 0.15                    # speech with pauses
    assert (eyes < 0.2).sum() >= 4 and (eyes == 1).mean() > 0.8                # blinks, eyes open mostly
    yaw = np.array([s.yaw for s in states])
    assert np.ptp(yaw) > 0.2 and np.abs(np.diff(yaw)).max() < 0.02             # turns, smoothly
    lm = np.stack([a.landmarks(i) for i in range(0, 900, 30)])
    assert lm.shape == (30, FACE_NUM_LANDMARKS_REFINED, 3)
    assert lm[..., :2].min() > 0.05 and lm[..., :2].max() < 0.95               # always in the frame


def test_rendered_face_is_found_by_mediapipe_where_its_landmarks_say():
    """The frames are a face to MediaPipe's face mesh, at the known landmarks (a few pixels' disagreement: its
    reading of the template's geometry), with the mouth opening seen."""
    from models.detect import LandmarkExtractor
    from trainer.synth_face import FaceRenderer

    motion, renderer = FaceMotion(seed=1), FaceRenderer(256, appearance_seed=2)
    with LandmarkExtractor("face", static_image_mode=True) as find:
        errors, opening = [], []
        for i in range(0, 120, 15):
            f = renderer.render(motion.state(i))
            assert f.frame.shape == (256, 256, 3) and f.frame.dtype == np.uint8
            found = find(f.frame)
            assert found is not None, f"no face found in frame {i}"
            errors.append(np.linalg.norm(found[:468, :2] - f.landmarks[:468, :2], axis=1).mean())
            opening.append((face_openings(found)[0], face_openings(f.landmarks)[0]))
    assert max(errors) < 0.03, errors
    seen, truth = np.array(opening).T
    assert np.corrcoef(seen, truth)[0, 1] > 0.7, opening


def test_synth_face_writes_a_face_dataset(tmp_path, capsys):
    """`posecast synth --kind face`: a face dataset like prepare's (478 landmarks, flow), the clips asked for,
    the same frames from the same seeds."""
    from posecast.cli import main
    from trainer.dataset import Dataset

    args = ["synth", "--kind", "face", "--frames", "12", "--size", "64", "--clip-frames", "8", "--seed", "5",
            "--appearance-seed", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "synthetic talking face: 12 frames, 64px, motion seed 5, appearance seed 1" in capsys.readouterr().out
    d = Dataset(tmp_path / "a")
    assert d.kind == "face" and d.manifest.num_landmarks == FACE_NUM_LANDMARKS_REFINED
    assert d.manifest.clips == [[0, 8], [8, 12]] and d.frames.shape == (12, 64, 64, 3)
    # the stabilised face crop, as prepare cuts footage: exactly what the live client sends in same-camera mode
    from models.posenorm import live_normalizer
    live, _ = live_normalizer("face", d.manifest.extra["subject_stats"], "same-camera", fps=30.0)
    for i in range(12):
        np.testing.assert_allclose(live(FaceMotion(seed=5).landmarks(i)), d.landmarks[i], atol=2e-5)
    assert not d.flow[0].any() and not d.flow[8].any() and np.abs(d.flow[1:8].astype(np.float32)).max() > 0.05
    # the person's exact mask: every face landmark on it, the room's corners off it
    m = np.asarray(d.masks)
    assert m.shape == (12, 64, 64)
    for k in range(12):
        xy = np.clip((d.landmarks[k, :468, :2] * 64).astype(int), 0, 63)
        assert (m[k][xy[:, 1], xy[:, 0]] > 127).mean() > 0.99             # (the oval's points lie on its edge)
        assert m[k][0, 0] == m[k][0, -1] == 0 and 0.15 < (m[k] > 127).mean() < 0.8
    # the subject's mask for training and eval: all of it, hair, neck and shoulders too (one person)
    from trainer.clips import ClipSource
    clip = ClipSource(d, 64).load(0, 8)
    np.testing.assert_array_equal(clip["person_mask"][:, 0].numpy(), (m[:8] >= 128).astype(np.float32))
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    np.testing.assert_array_equal(np.asarray(Dataset(tmp_path / "b").frames), np.asarray(d.frames))
    assert main([*args, "--out", str(tmp_path / "a")]) == 2                    # exists: refused, not overwritten


def test_synthetic_source_gives_the_talking_face_to_a_face_model():
    from clients.sources import SourceError, SyntheticSource, open_source

    with open_source("synthetic:2", "face", realtime=False, num_frames=3, preview_size=32) as src:
        items = list(src)
    assert src.kind == "face" and "synthetic talking face (seed 2" in src.describe()
    assert len(items) == 3 and items[0].rgb.shape == (32, 32, 3)
    np.testing.assert_array_equal(items[1].landmarks, FaceMotion(seed=2, fps=src.fps).landmarks(1))
    with open_source("synthetic", "dance", realtime=False, num_frames=1) as src:
        assert src.kind == "dance" and next(iter(src)).landmarks.shape == (33, 3)
    with pytest.raises(SourceError, match="gives 'dance' landmarks but the server's model is 'hand'"):
        open_source("synthetic", "hand")
    with pytest.raises(SourceError, match="no synthetic 'hand' source"):
        SyntheticSource(kind="hand")


def test_place_scales_and_centres_the_template():
    from models.face_motion import FaceState

    s = FaceState(yaw=0, pitch=0, roll=0, cx=0.5, cy=0.5, scale=0.4, mouth=0, eyes=1, smile=0)
    lm = place(s)
    t = face_template()
    np.testing.assert_allclose(lm[:, :2], 0.5 + 0.4 * t[:, :2], atol=1e-6)
    turned = place(FaceState(**{**s.__dict__, "yaw": 0.4}))
    assert turned[FACE_POINTS["nose_tip"], 0] > lm[FACE_POINTS["nose_tip"], 0]    # turned to the image right


@pytest.mark.timeout(300)
def test_face_eval_figures_are_exact_on_the_synthetic_frames_fed_back(tmp_path):
    """posecast eval's face figures on known answers, without footage: the synthetic talking face's real frames
    scored as if generated give mouth and eye correlations of 1, a landmark-error ratio of 1, an exact face
    region (MediaPipe finds the same mesh on the same pixels), and the mouth really moves in them."""
    from trainer.clips import ClipSource
    from trainer.dataset import Dataset
    from trainer.evaluate import Scorer
    from trainer.synth_face import synthesize_face

    path = synthesize_face(tmp_path / "face", seed=2, num_frames=40, size=128, progress=False)
    src = ClipSource(Dataset(path), 128)
    scorer = Scorer("face", np.zeros((128, 128, 3), np.uint8))
    for a, b in src.clips:
        clip = src.load(a, b)
        scorer.add_clip(clip["frames"].clone(), clip)
    res = scorer.result()
    assert res["frames"] == 40 and res["detect_rate"] == res["detect_rate_real"] > 0.9
    assert res["mouth_correlation"] == pytest.approx(1.0) and res["eye_correlation"] == pytest.approx(1.0)
    assert res["pose_error_ratio"] == pytest.approx(1.0) and res["psnr_face"] == float("inf")
    mouths = [real[0] for _, real in scorer.openings]
    assert len(mouths) >= 36 and max(mouths) > 1.5 * min(mouths)          # a correlation of something that moves
