"""The capture client's view (clients/view.py) on arrays: panels, status bar, composed view, recorder."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from clients import view as V
from models.motion import DanceMotion

RED, BLUE = (220, 30, 30), (30, 30, 220)


def _solid(h: int, w: int, rgb) -> np.ndarray:
    return np.full((h, w, 3), rgb, np.uint8)


def _read_back(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def test_input_panel_of_an_image_is_resized_to_the_model_height_and_shows_the_detection():
    lm = DanceMotion(2, 30.0).landmarks(5)
    rgb = _solid(120, 200, (0, 0, 0))
    plain = V.InputPanel.of(rgb, None, lm, "dance", 64)
    assert plain.image.shape == (64, 106, 3) and plain.landmarks is None and not plain.image.any()
    drawn = V.InputPanel.of(rgb, lm, lm, "dance", 64)
    assert drawn.image.shape == (64, 106, 3) and drawn.image.any()
    assert not rgb.any()                                   # the source image is not drawn on
    assert drawn.render("dance", 999) is drawn.image       # an image panel is what it is, whatever the size
    same = _solid(64, 64, RED)
    assert V.InputPanel.of(same, None, None, "dance", 64).image is same   # already the right size: no copy


def test_input_panel_without_an_image_renders_the_landmarks_sent():
    lm = DanceMotion(2, 30.0).landmarks(5)
    panel = V.InputPanel.of(None, lm, lm, "dance", 64)
    assert panel.image is None and panel.landmarks is lm
    img = panel.render("dance", 48)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8 and img.any()
    assert not V.InputPanel.of(None, None, None, "dance", 64).render("dance", 32).any()  # nothing detected: black


def test_overlay_lines_say_what_was_measured():
    lines = V.overlay_lines(fps=29.97, glass_to_glass_ms=41.25, capture_to_send_ms=3.5, extract_ms=12.0,
                            server_timings={"engine": 7.0, "total": 9.5, "note": "x"}, sent=10, dropped=2,
                            errors=1, lost=0)
    assert lines == ["30.0 fps   glass-to-glass   41.2 ms",
                     "capture->send   3.5 ms (landmarks 12.0)",
                     "server ms: engine 7.0 total 9.5",
                     "sent 10  dropped 2  errors 1  lost 0"]
    bare = V.overlay_lines(fps=0.0, glass_to_glass_ms=5.0, capture_to_send_ms=None, extract_ms=None,
                           server_timings={}, sent=1, dropped=0, errors=0, lost=0)
    assert bare == [" 0.0 fps   glass-to-glass    5.0 ms", "capture->send  -", "sent 1  dropped 0  errors 0  lost 0"]


def test_status_bar_has_one_text_row_per_line():
    bar = V.status_bar(300, ["first line", "second", "third"])
    assert bar.shape == (16 * 3 + 8, 300, 3) and bar.dtype == np.uint8
    text = bar.max(axis=2) > 100                                   # light text on the dark strip
    rows = [text[16 * i + 2:16 * (i + 1) + 2].sum() for i in range(3)]
    assert all(n > 20 for n in rows) and rows[0] > rows[1]         # every line drawn, the longer one wider
    assert (bar[~text] <= 100).all() and bar[0, -1].tolist() == [24, 24, 24]


def test_compose_puts_input_left_output_right_and_the_status_bar_below():
    lines = ["a", "b"]
    view = V.compose(_solid(64, 64, RED), _solid(64, 64, BLUE), lines)
    k = V.MIN_VIEW_HEIGHT / 64                                     # small models are enlarged
    bar_h = 16 * len(lines) + 8
    assert view.shape == (V.MIN_VIEW_HEIGHT + bar_h, round((64 + 2 + 64) * k), 3)
    assert view[100, 20].tolist() == list(RED) and view[100, -20].tolist() == list(BLUE)
    assert view[V.MIN_VIEW_HEIGHT + 2:, :].max(axis=2).min() >= 24 and view[-2, 2].tolist() == [24, 24, 24]
    big = V.compose(_solid(300, 200, RED), _solid(300, 300, BLUE), ["x"])
    assert big.shape == (300 + 24, 200 + 2 + 300, 3)               # tall enough: not resized
    mixed = V.compose(_solid(600, 400, RED), _solid(300, 300, BLUE), ["x"])
    assert mixed.shape == (600 + 24, 400 + 2 + 600, 3)             # the output follows the input's height


@pytest.mark.parametrize("paced", [False, True])
def test_recorder_writes_every_view_and_reads_back(tmp_path, paced):
    path = tmp_path / "v.mp4"
    rec = V.Recorder(path, fps=10.0, paced=paced)
    colours = [RED, BLUE, (30, 200, 30)]
    for i, c in enumerate(colours):
        rec.write(_solid(33, 47, c), now_s=5.0 + i / 10)           # one view per frame period: no repeats
    rec.close()
    assert rec.size == (48, 34) and rec.written == 3 and rec.repeats == 0
    frames = _read_back(path)
    assert len(frames) == 3 and frames[0].shape == (34, 48, 3)
    for f, c in zip(frames, colours):
        assert np.abs(f[10:24, 10:38].reshape(-1, 3).mean(0) - c).max() < 20


def test_paced_recorder_repeats_the_last_view_to_keep_wall_clock_time(tmp_path):
    rec = V.Recorder(tmp_path / "p.mp4", fps=10.0, paced=True)
    rec.write(_solid(32, 32, RED), now_s=1.0)
    rec.write(_solid(32, 32, BLUE), now_s=1.4)                     # 0.4 s later: frames 1-3 repeat RED
    rec.write(_solid(64, 64, RED), now_s=1.5)                      # a bigger view: resized to the first size
    rec.close()
    assert (rec.written, rec.repeats) == (6, 3)
    frames = _read_back(tmp_path / "p.mp4")
    means = [f[8:24, 8:24].reshape(-1, 3).mean(0) for f in frames]
    assert len(frames) == 6 and frames[-1].shape == (32, 32, 3)
    assert [int(np.argmax(m)) for m in means] == [0, 0, 0, 0, 2, 0]   # red x4, blue, red
    lock = V.Recorder(tmp_path / "l.mp4", fps=10.0, paced=False)  # lock-step: one frame per view, never repeated
    lock.write(_solid(32, 32, RED), now_s=1.0)
    lock.write(_solid(32, 32, BLUE), now_s=9.0)
    lock.close()
    assert (lock.written, lock.repeats) == (2, 0) and len(_read_back(tmp_path / "l.mp4")) == 2


def test_display_without_a_window_runs_headless(monkeypatch):
    def no_window(*a):
        raise cv2.error("OpenCV(4) window.cpp:1 error: (-2:Unspecified error)\nThe function is not implemented")

    monkeypatch.setattr(cv2, "namedWindow", no_window)
    logs: list[str] = []
    d = V.Display("t", logs.append)
    assert not d.ok and logs == ["cannot open a window (The function is not implemented); running headless"]
    d.show(_solid(8, 8, RED))
    assert not d.shown and not d.quit_requested()
    d.close()
