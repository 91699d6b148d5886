"""One tracked person out of several: ``prepare --kind dance`` on two synthetic dancers who cross paths.

The footage is made here (tests/duet.py: two dancers with different looks, known landmark tracks), so the
tracked identity can be checked frame by frame against the truth. CPU, ~1 min.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from posecast.cli import main
from trainer.dataset import Dataset
from trainer.prepare import parse_clip_table, prepare_video
from trainer.track import appearance_distance, overlap

from duet import render_duet

FRAMES = 60


@pytest.fixture(scope="module")
def duet(tmp_path_factory):
    path = tmp_path_factory.mktemp("duet") / "duet.mp4"
    gt = render_duet(path, frames=FRAMES)
    return path, gt


def _errors(ds: Dataset, gt: np.ndarray) -> np.ndarray:
    """(frames written, 2): median landmark error (source-normalised) of each written frame to each dancer."""
    m = ds.manifest
    w, h = m.extra["source_size"]
    x0, y0, side = m.extra["crop"]["box"]
    lm = np.asarray(ds.landmarks)
    out = []
    for k, src in enumerate(m.extra["source_frame_indices"]):
        p = (lm[k, :, :2] * side + (x0, y0)) / (w, h)
        vis = lm[k, :, 2] > 0.5
        out.append([np.median(np.abs(p[vis] - gt[d, src, vis, :2]).sum(1)) for d in (0, 1)])
    return np.array(out)


def _dancer_of(ds: Dataset, gt: np.ndarray) -> np.ndarray:
    e = _errors(ds, gt)
    return np.argmin(e, axis=1), e


@pytest.mark.timeout(300)
def test_tracked_identity_never_switches(duet, tmp_path, capsys):
    path, gt = duet
    out = tmp_path / "ds"
    assert main(["prepare", str(path), "--kind", "dance", "--out", str(out), "--size", "96", "--quiet",
                 "--min-clip-frames", "4"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    # the dancer walks across the frame: a square around that range is wide, and prepare says so, in one line
    assert re.search(r"^warning: .*the subject is \d+ px tall, 3\d% of the \d+ px crop .*small for a model",
                     captured.err, re.M)
    ds = Dataset(out)
    m = ds.manifest
    # both dancers are seen and reported; one is tracked
    assert len(m.extra["people"]) == 2
    assert "2 people seen; tracking person" in printed
    assert re.search(r"person \d+: \d+ frames.*<- tracked", printed)
    who, err = _dancer_of(ds, gt)
    target = int(np.bincount(who).argmax())
    # the identity never switches: every written frame is the same dancer, far from the other one
    assert (who == target).all(), f"frames of the other dancer: {np.flatnonzero(who != target).tolist()}"
    assert (err[:, target] < 0.05).mean() > 0.9 and (err[:, 1 - target] > 0.1).all()
    # the crossing is cut out rather than switched through, and there is data on both sides of it
    src = np.array(m.extra["source_frame_indices"])
    cross = FRAMES // 2
    assert not np.isin(np.arange(cross - 3, cross + 4), src).any()
    assert (src < cross - 3).sum() >= 10 and (src > cross + 3).sum() >= 5
    assert len(ds.clips) >= 2
    # the printed clip table is the manifest's
    rows = parse_clip_table(printed)
    assert rows == m.extra["clip_table"]
    kept = [r for r in rows if r["dataset"] is not None]
    assert [tuple(r["dataset"]) for r in kept] == ds.clips
    assert all(r["identity"] == str(m.extra["person"]) for r in rows)
    assert {r["reason"].split(";")[0] for r in rows[:-1]} <= {"person lost", "people crossing", "no person", "cut"}
    assert rows[-1]["reason"].startswith("end of video")
    for r in kept:
        assert r["end"] - r["start"] == r["dataset"][1] - r["dataset"][0] and r["length"] == r["end"] - r["start"]
    # the crop is tight around this dancer's motion range; where it leaves the frame it is mirrored, and said so
    assert m.extra["crop"]["padding"] == "reflect"
    assert "padded by reflection" in printed
    # the model trained on it carries that crop, so same-camera serving maps live landmarks the same way
    from models.posenorm import live_normalizer
    w, h = m.extra["source_size"]
    stats = ds.subject_stats
    assert np.allclose(np.array(stats["crop"]["box"]) * h, m.extra["crop"]["box"], atol=0.01)
    fn, how = live_normalizer("dance", stats, "same-camera", aspect=w / h)
    assert how.startswith("same-camera: the training crop")
    k = 0
    x0, y0, side = m.extra["crop"]["box"]
    src_lm = np.asarray(ds.landmarks[k]).copy()
    src_lm[:, 0] = (src_lm[:, 0] * side + x0) / w
    src_lm[:, 1] = (src_lm[:, 1] * side + y0) / h
    np.testing.assert_allclose(fn(src_lm), ds.landmarks[k], atol=1e-4)

    # the other dancer, by id
    other = next(p["id"] for p in m.extra["people"] if p["id"] != m.extra["person"])
    rep = prepare_video(path, tmp_path / "other", kind="dance", size=96, person=other, max_frames=20,
                        min_clip_frames=4, progress=False)
    assert rep.person == other
    who2, err2 = _dancer_of(Dataset(tmp_path / "other"), gt)
    assert (who2 == 1 - target).all() and rep.frames_written >= 15
    with pytest.raises(ValueError, match="no person 7; people seen"):
        prepare_video(path, tmp_path / "none", kind="dance", size=96, person=7, max_frames=6, progress=False)


def test_subject_too_small_is_refused(duet, tmp_path):
    path, _ = duet
    # over the whole video the dancer walks across the frame: a tight square around that range is wide
    with pytest.raises(ValueError, match=r"below the 60% this needs.*--min-subject 0"):
        prepare_video(path, tmp_path / "small", kind="dance", size=64, max_frames=FRAMES, min_clip_frames=4,
                      min_subject_fraction=0.6, progress=False)
    assert not (tmp_path / "small").exists()


def test_appearance_and_overlap_measures():
    a = np.zeros(2 * 72, np.float32)
    a[3], a[72 + 5] = 1.0, 1.0
    b = a.copy()
    assert appearance_distance(a, b) == pytest.approx(0.0, abs=1e-6)
    c = np.zeros_like(a)
    c[40], c[72 + 60] = 1.0, 1.0
    assert appearance_distance(a, c) == pytest.approx(1.0, abs=1e-6)
    box = np.array([0.0, 0.0, 10.0, 20.0])
    assert overlap(box, box) == 1.0
    assert overlap(box, np.array([5.0, 0.0, 15.0, 20.0])) == pytest.approx(0.5)
    assert overlap(box, np.array([2.0, 2.0, 4.0, 4.0])) == 1.0      # inside: the smaller box is covered
    assert overlap(box, np.array([20.0, 0.0, 30.0, 20.0])) == 0.0
