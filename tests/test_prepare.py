"""Landmark extraction, DIS flow ground truth and ``prepare_video`` (video -> dataset). CPU only, < 60 s.

Tests on real footage read ``$POSECAST_SHARED_DATA`` (default ``<repo>/../shared/data``) and skip when absent.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.dataset import Dataset
from trainer.flow import FlowEstimator, backward_flow
from trainer.prepare import PrepareError, crop_resize, map_landmarks, prepare_video

from shared_data import MEGAMIND, MESSI, REPO, SHARED, needs_megamind, needs_messi  # noqa: F401


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), 2.0)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 12.0) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for f in frames:
        writer.write(f)
    writer.release()


# ---------------------------------------------------------------------------------------------------------- flow

def _warp_uint8(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """models.warp.warp on a uint8 (H, W, 3) image and an (H, W, 2) dataset flow."""
    import torch

    from models.warp import warp

    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    f = torch.from_numpy(np.ascontiguousarray(flow)).permute(2, 0, 1)[None]
    return warp(x, f)[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


@pytest.mark.parametrize("dx,dy", [(3, -2), (-1.5, 4.25)])
def test_backward_flow_recovers_known_shift(dx, dy):
    big = _texture(300, 300)
    prev = big[22:278, 22:278].copy()
    # cur(p) = prev(p + d): sample the big texture shifted by d (sub-pixel via warpAffine).
    m = np.float32([[1, 0, 22 + dx], [0, 1, 22 + dy]])
    cur = cv2.warpAffine(big, m, (256, 256), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    flow, conf = backward_flow(prev, cur)
    assert flow.shape == (256, 256, 2) and flow.dtype == np.float32
    assert conf.shape == (256, 256) and conf.dtype == np.float32
    assert 0.0 <= conf.min() and conf.max() <= 1.0
    inner = (slice(16, -16), slice(16, -16))
    err = np.hypot(flow[..., 0][inner] - dx, flow[..., 1][inner] - dy)
    assert np.median(err) < 0.5
    assert conf[inner].mean() > 0.9
    # Convention: cur(p) ~ prev(p + flow(p)), as the generator's warp (models/warp.py) reads it.
    warped = _warp_uint8(prev, flow)
    assert np.abs(warped[inner].astype(int) - cur[inner]).mean() < 3.0
    assert np.abs(prev[inner].astype(int) - cur[inner]).mean() > 10.0  # the shift is not trivially small


def test_flow_confidence_drops_at_disocclusions():
    bg, square = _texture(128, 128, seed=1), _texture(48, 48, seed=2)
    prev, cur = bg.copy(), bg.copy()
    prev[40:88, 30:78] = square
    cur[40:88, 42:90] = square                    # the square moves 12 px right over a static background
    flow, conf = FlowEstimator()(prev, cur)
    assert conf[5:30, 5:30].mean() > 0.9          # static background: consistent
    assert conf[45:83, 50:85].mean() > 0.9        # moving square: consistent ...
    assert np.median(flow[45:83, 50:85, 0]) == pytest.approx(-12, abs=0.5)   # ... and flow points back to it
    assert conf[45:83, 31:41].mean() < 0.5        # background uncovered in cur: no correspondence in prev


def test_flow_rejects_mismatched_frames():
    with pytest.raises(ValueError):
        backward_flow(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 40, 3), np.uint8))


# ---------------------------------------------------------------------------------------------- crop geometry

def test_crop_resize_and_landmark_mapping_agree():
    img = np.zeros((200, 300, 3), np.uint8)
    cv2.circle(img, (210, 70), 6, (255, 255, 255), -1)       # a dot at (210, 70) pixels (continuous 210.5, 70.5)
    for (cx, cy, side), size in [((200.0, 80.0, 120.0), 64), ((150.0, 100.0, 400.0), 64), ((205.0, 75.0, 30.0), 96)]:
        box = (cx - side / 2, cy - side / 2, side)                  # boxes are (x0, y0, side)
        out = crop_resize(img, box, size, border=cv2.BORDER_CONSTANT)  # no mirrored copies of the dot
        assert out.shape == (size, size, 3)
        lm = np.array([[210.5 / 300, 70.5 / 200, 1.0]], np.float32)
        u, v = map_landmarks(lm, box, 300, 200, "dance")[0, :2] * size
        ys, xs = np.nonzero(out[..., 0] > 127)
        assert abs(xs.mean() + 0.5 - u) < 1.0 and abs(ys.mean() + 0.5 - v) < 1.0


def test_crop_pads_by_reflection_not_repeated_borders():
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :, 1] = np.arange(60, dtype=np.uint8)[None, :] * 4   # a horizontal gradient
    out = crop_resize(img, (-20.0, 0.0, 40.0), 40)             # 20 px beyond the left edge, 1:1 scale
    np.testing.assert_array_equal(out[:, 20:], img[:, :20])
    # the 20 columns outside mirror the image (reflect-101: column -k shows column k) ...
    np.testing.assert_array_equal(out[:, :20], img[:, 20:0:-1])
    # ... instead of 20 copies of the border column
    assert len(np.unique(out[5, :20, 1])) == 20


# -------------------------------------------------------------------------------------------------- bad inputs

def test_missing_video(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(PrepareError, match="nope.mp4"):
        prepare_video(path, tmp_path / "out", kind="dance", progress=False)


def test_text_file_is_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(PrepareError, match="notes.mp4"):
        prepare_video(path, tmp_path / "out", kind="dance", progress=False)
    assert not (tmp_path / "out").exists()


def test_truncated_videos(tmp_path):
    frames = [_texture(96, 128, seed=i) for i in range(30)]
    full = tmp_path / "full.mp4"
    _write_video(full, frames)
    data = full.read_bytes()
    # mp4 cut in half: the index (moov atom) is at the end, the file no longer opens.
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(PrepareError, match="half.mp4"):
        prepare_video(half, tmp_path / "o1", kind="dance", progress=False)
    # AVI cut short: it opens and the header still declares every frame, but decoding stops early.
    avi = tmp_path / "full.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 12, (128, 96))
    for f in frames:
        writer.write(f)
    writer.release()
    short = tmp_path / "short.avi"
    short.write_bytes(avi.read_bytes()[: avi.stat().st_size // 3])
    with pytest.raises(PrepareError, match="short.avi.*(corrupt|truncated)"):
        prepare_video(short, tmp_path / "o2", kind="dance", progress=False)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o2.partial").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(PrepareError, match="kind"):
        prepare_video(tmp_path / "x.mp4", tmp_path / "out", kind="hands", progress=False)
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError):
        prepare_video(tmp_path / "x.mp4", tmp_path / "exists", kind="dance", progress=False)


def test_landmarks_module_imports_without_mediapipe():
    code = "import sys, models.detect as m; assert 'mediapipe' not in sys.modules; print(m.POSE_NUM_LANDMARKS)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "33"


def test_unknown_landmark_kind():
    from models.detect import LandmarkExtractor
    with pytest.raises(ValueError, match="hands"):
        LandmarkExtractor("hands")


# ------------------------------------------------------------------------------------------- real footage

@needs_messi
def test_landmark_extractor_pose_on_photo():
    from models.detect import LandmarkExtractor
    from models.landmarks import POSE_NUM_LANDMARKS as POSE_LANDMARKS
    rgb = cv2.cvtColor(cv2.imread(str(MESSI)), cv2.COLOR_BGR2RGB)
    with LandmarkExtractor("dance", static_image_mode=True) as ex:
        assert ex.num_landmarks == POSE_LANDMARKS == 33
        lm = ex(rgb)
        assert ex(np.zeros_like(rgb)) is None
        with pytest.raises(ValueError):
            ex(rgb.astype(np.float32))
    assert lm is not None and lm.shape == (33, 3) and lm.dtype == np.float32
    assert lm[:, :2].min() >= 0.0 and lm[:, :2].max() <= 1.0
    assert np.median(lm[:, 2]) > 0.5                      # visibility
    with pytest.raises(RuntimeError, match="closed"):
        ex(rgb)


@needs_messi
def test_person_mask_covers_the_visible_pose_landmarks_on_the_photo():
    """MediaPipe's selfie segmentation (in the wheel) covers >= 95 % of the pose landmarks MediaPipe sees."""
    from models.detect import LandmarkExtractor, PersonSegmenter

    rgb = cv2.cvtColor(cv2.imread(str(MESSI)), cv2.COLOR_BGR2RGB)
    with LandmarkExtractor("dance", static_image_mode=True) as ex, PersonSegmenter() as seg:
        lm, mask = ex(rgb), seg(rgb)
        with pytest.raises(ValueError, match="RGB uint8"):
            seg(rgb[..., 0])
    assert mask.shape == rgb.shape[:2] and mask.dtype == np.float32 and 0 <= mask.min() and mask.max() <= 1
    h, w = mask.shape
    seen = lm[lm[:, 2] > 0.5]
    covered = mask[np.clip((seen[:, 1] * h).astype(int), 0, h - 1), np.clip((seen[:, 0] * w).astype(int), 0, w - 1)]
    assert len(seen) >= 20 and (covered > 0.5).mean() >= 0.95
    assert (mask > 0.5).mean() < 0.4                                        # the person, not the whole photo
    with pytest.raises(RuntimeError, match="PersonSegmenter is closed"):
        seg(rgb)


@needs_messi
def test_prepare_dance_from_moving_photo(tmp_path):
    img = cv2.imread(str(MESSI))
    assert img is not None
    h, w, n, black = 300, 400, 12, (4, 8)
    frames = []
    for i in range(n):
        if i in black:
            frames.append(np.zeros((h, w, 3), np.uint8))
            continue
        s = 0.6 + 0.01 * i
        m = np.float32([[s, 0, 20 + 3 * i], [0, s, 40 - i]])
        frames.append(cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT))
    video = tmp_path / "messi.mp4"
    _write_video(video, frames)

    out = tmp_path / "ds"
    rep = prepare_video(video, out, kind="dance", size=192, progress=False, min_clip_frames=1)
    assert rep.frames_read == n
    assert rep.frames_written == n - len(black)
    assert rep.missing == list(black)
    assert rep.clips == [(0, 4), (4, 7), (7, 10)]
    assert rep.out == out and rep.seconds > 0

    ds = Dataset(out)
    m = ds.manifest
    assert m.kind == "dance" and m.num_landmarks == 33 and len(ds) == n - len(black)
    assert (m.height, m.width) == (192, 192) and ds.frames.shape == (len(ds), 192, 192, 3)
    assert m.missing_frames == list(black)
    assert ds.clips == [(0, 4), (4, 7), (7, 10)]
    assert m.fps == pytest.approx(12.0)
    lm = np.asarray(ds.landmarks)
    assert np.isfinite(lm).all()
    assert lm[..., :2].min() >= 0.0 and lm[..., :2].max() <= 1.0
    assert lm[..., 2].min() >= 0.0 and lm[..., 2].max() <= 1.0          # visibility
    # One fixed crop for the whole video.
    boxes = m.extra["crop"]["boxes"]
    assert len(boxes) == len(ds) and all(b == boxes[0] for b in boxes) and m.extra["crop"]["box"] == boxes[0]
    assert m.extra["source_fps"] == pytest.approx(12.0)
    assert m.extra["source_frame_indices"] == [i for i in range(n) if i not in black]
    stats = m.extra["subject_stats"]
    assert 0.03 < stats["shoulder_width"] < 0.5 and 0.05 < stats["torso_length"] < 0.6
    assert all(0.0 < v < 1.0 for v in stats["hip_center"])
    # Flow: zero at clip starts, plausible elsewhere.
    for a, b in ds.clips:
        assert not np.asarray(ds.flow[a]).any() and not np.asarray(ds.flow_conf[a]).any()
        assert np.asarray(ds.flow_conf[a + 1]).mean() > 100
    # Person masks from MediaPipe's selfie segmentation: the player, not the pitch. Its model is made for people
    # near the camera: the head and trunk are covered, the outstretched arm and the shins only in part.
    masks = np.asarray(ds.masks)
    assert masks.shape == (len(ds), 192, 192) and masks.dtype == np.uint8
    trunk = [0, 11, 12, 23, 24]                                        # nose, shoulders, hips
    for k in range(len(ds)):
        xy = np.clip((lm[k, trunk, :2] * 192).astype(int), 0, 191)
        assert (masks[k][xy[:, 1], xy[:, 0]] > 127).all(), k
        assert 0.05 < (masks[k] > 127).mean() < 0.5
    # Landmarks really are in the output frame: re-detect on a written frame.
    from models.detect import LandmarkExtractor
    with LandmarkExtractor("dance", static_image_mode=True) as ex:
        again = ex(np.asarray(ds.frames[2]))
    assert again is not None
    vis = (again[:, 2] > 0.8) & (lm[2, :, 2] > 0.8)
    assert vis.sum() >= 10
    assert np.median(np.abs(again[vis, :2] - lm[2, vis, :2])) < 0.015

    with pytest.raises(FileExistsError):
        prepare_video(video, out, kind="dance", size=128, progress=False)
    rep2 = prepare_video(video, out, kind="dance", size=64, start=5, max_frames=4, overwrite=True, progress=False,
                         min_clip_frames=1)
    assert rep2.frames_read == 4 and rep2.missing == [8] and rep2.clips == [(0, 3)]
    assert Dataset(out).manifest.extra["source_frame_indices"] == [5, 6, 7]


@needs_megamind
def test_prepare_face_megamind(tmp_path):
    out = tmp_path / "face"
    rep = prepare_video(MEGAMIND, out, kind="face", size=128, max_frames=30, progress=False)
    assert rep.frames_read == 30
    assert rep.frames_written >= 27          # the face is found in nearly every frame
    ds = Dataset(out)
    m = ds.manifest
    assert m.kind == "face" and m.num_landmarks == 478 and len(ds) == rep.frames_written
    assert ds.frames.shape[1:] == (128, 128, 3) and ds.landmarks.shape[1:] == (478, 3)
    assert m.missing_frames == rep.missing and ds.clips == rep.clips
    lm = np.asarray(ds.landmarks)
    assert np.isfinite(lm).all()
    assert lm[..., :2].min() > 0.0 and lm[..., :2].max() < 1.0           # the whole face is inside the crop
    assert m.fps == pytest.approx(23.976, abs=0.01)
    # Stable crop: the centre moves little between consecutive frames of a clip (a few % of the crop side).
    boxes = np.array(m.extra["crop"]["boxes"], float)
    assert boxes.shape == (len(ds), 3)
    centre = boxes[:, :2] + boxes[:, 2:] / 2
    for a, b in ds.clips:
        if b - a >= 2:
            step = np.linalg.norm(np.diff(centre[a:b], axis=0), axis=1)
            assert step.max() < 0.04 * boxes[a:b, 2].mean()
            assert np.ptp(boxes[a:b, 2]) < 0.15 * boxes[a:b, 2].mean()
    stats = m.extra["subject_stats"]
    assert 0.15 < stats["eye_distance"] < 0.6


@needs_megamind
@pytest.mark.timeout(180)
def test_face_shots_and_identities_reported_as_in_the_manifest(tmp_path, capsys):
    """Megamind.avi cuts between two characters three times (frames 98, 154 and 200)."""
    from posecast.cli import main
    from trainer.prepare import parse_clip_table

    out = tmp_path / "face"
    assert main(["prepare", str(MEGAMIND), "--kind", "face", "--out", str(out), "--size", "64", "--quiet",
                 "--min-clip-frames", "50"]) == 0
    printed = capsys.readouterr().out
    rows = parse_clip_table(printed)
    m = Dataset(out).manifest
    assert rows == m.extra["clip_table"]
    assert [(r["start"], r["end"]) for r in rows] == [(1, 98), (99, 154), (155, 200), (200, 270)]
    assert [r["identity"] for r in rows] == ["A", "B", "A", "B"]
    assert [r["reason"] for r in rows] == ["no face, identity change", "no face, identity change",
                                           "cut, identity change; dropped: shorter than 50 frames",
                                           "end of video"]
    # the dropped clip is said on the console and is not in the dataset
    assert "dropped 1 clip(s) shorter than 50 frames (45 frames): 155-199" in printed
    assert rows[2]["dataset"] is None
    assert [tuple(r["dataset"]) for r in rows if r["dataset"]] == Dataset(out).clips == [(0, 97), (97, 152),
                                                                                          (152, 222)]
    assert m.extra["source_frame_indices"] == [*range(1, 98), *range(99, 154), *range(200, 270)]
    assert m.extra["cuts"] == [200] and m.missing_frames == [0, 98, 154]


@needs_messi
def test_mediapipe_log_lines_stay_off_the_console():
    code = ("import cv2; from models.detect import LandmarkExtractor; "
            f"im = cv2.cvtColor(cv2.imread({str(MESSI)!r}), cv2.COLOR_BGR2RGB); "
            "ex = LandmarkExtractor('dance', static_image_mode=True); a = ex(im); "
            "f = LandmarkExtractor('face'); f(im); f(im); ex.close(); f.close(); "
            "import sys; print('pose', a.shape, file=sys.stderr)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "POSECAST_MEDIAPIPE_LOGS"}
    quiet = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                           env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == "pose (33, 3)"        # Python's own stderr still works
    loud = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**env, "POSECAST_MEDIAPIPE_LOGS": "1"})
    assert loud.returncode == 0 and "TensorFlow Lite" in loud.stderr and len(loud.stderr.splitlines()) > 2


def test_a_script_that_never_closes_its_extractors_still_exits():
    """A MediaPipe graph left open until interpreter finalisation hangs the process (mediapipe 0.10.21); open
    extractors are closed at exit."""
    code = ("import numpy as np; from models.detect import LandmarkExtractor; "
            "ex = LandmarkExtractor('dance', static_image_mode=True); ex(np.zeros((96, 96, 3), np.uint8)); "
            "f = LandmarkExtractor('face'); print('built')")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "built", done.stderr


def test_a_native_log_line_after_an_unfinished_progress_bar_is_dropped_and_the_bar_kept():
    from models.detect import filter_native_lines

    bar = b"\rprepare face: 1/2 landmarks:   5%|  | 1/20"
    native = (b"W0000 00:00:1796351122.472245    6661 landmark_projection_calculator.cc:186] Using NORM_RECT "
              b"without IMAGE_DIMENSIONS is only supported for the square ROI.")
    assert filter_native_lines([bar + native]) == bar                 # seen in prepare's output before
    assert filter_native_lines([native, b"a line of our own", b"INFO: Created TensorFlow Lite XNNPACK delegate"]) \
        == b"a line of our own\n"


@needs_megamind
@pytest.mark.timeout(300)
def test_face_eval_figures_are_exact_on_the_real_frames_fed_back(tmp_path):
    """posecast eval's face figures on known answers: the real frames scored as if generated give a mouth and an
    eye correlation of 1, a landmark-error ratio of 1 and an exact face region."""
    import torch

    from trainer.clips import ClipSource
    from trainer.evaluate import Scorer

    prepare_video(MEGAMIND, tmp_path / "face", kind="face", size=128, max_frames=40, progress=False)
    src = ClipSource(Dataset(tmp_path / "face"), 128)
    scorer = Scorer("face", np.zeros((128, 128, 3), np.uint8))
    for a, b in src.clips:
        clip = src.load(a, b)
        scorer.add_clip(clip["frames"].clone(), clip)
    res = scorer.result()
    assert res["frames"] >= 30 and res["detect_rate"] == res["detect_rate_real"] > 0.9
    assert res["mouth_correlation"] == pytest.approx(1.0) and res["eye_correlation"] == pytest.approx(1.0)
    assert res["pose_error_ratio"] == pytest.approx(1.0) and res["psnr_face"] == float("inf")
    assert res["psnr_head"] is None and torch.isfinite(torch.tensor(res["pose_error"]))


def test_a_chosen_person_never_usable_is_named_with_the_reasons():
    from pathlib import Path

    from trainer.prepare import PrepareError, _Source, _subject_present

    src = _Source(Path("street.mp4"), None, "dance", 0, None, False)
    lms = [None] * 6
    why = {0: "no person", 1: "people crossing", 2: "people crossing", 3: "person lost", 4: "people crossing",
           5: "no person"}
    with pytest.raises(PrepareError, match=re.escape("street.mp4: person 17 is usable in none of the 6 frames read "
                                                     "(from frame 0: people crossing in 3, no person in 2, person lost"
                                                     " in 1); choose another with --person N")):
        _subject_present(lms, np.zeros(6, bool), src, 17, why)
    with pytest.raises(PrepareError, match="no pose detected in any of the 6 frames"):
        _subject_present(lms, np.zeros(6, bool), src)


def test_frames_before_the_first_clip_are_listed_with_why():
    from trainer.prepare import ClipRow, _leading_gap, format_clip_table

    rows = [ClipRow(105, 120, "end of video", identity="3")]
    why = {0: "people crossing", 1: "people crossing", 2: "no person", 3: "people crossing", 4: "person lost"}
    gap = _leading_gap(rows, why, 100)
    assert (gap.start, gap.end, gap.dataset, gap.identity) == (100, 105, None, "3")
    assert gap.reason == "before the first clip: people crossing in 3, no person in 1, person lost in 1"
    rows[0].dataset = (0, 15)
    table = format_clip_table([gap, *rows]).splitlines()
    assert table[1].split()[:2] == ["-", "100"] and "dropped" in table[1] and table[2].split()[0] == "0"
    assert _leading_gap(rows, why, 105) is None
