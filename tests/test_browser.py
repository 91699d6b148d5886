"""The browser client in a real browser: Debian's Chromium driven by Playwright, its fake webcam playing the
synthetic dancer (a y4m file), the page of ``posecast web`` running MediaPipe, a real ``posecast serve`` with the
bundled model. Skips, saying why, without Chromium, Playwright or the MediaPipe JS files (``make web-assets``).
The screenshot of the page is kept in runs/ci/browser-page.png (CI's artifact)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.web import assets
from posecast import webbench
from shared_data import MEGAMIND, needs_megamind
from tiny import random_checkpoint

ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "ci"
# Of the frames whose fate is known, at least this share answered. The rest are dropped by design: the server keeps
# the newest of a client's frames in flight (latest wins), so how many it skips depends on how fast it renders
# beside the browser's MediaPipe on the same cores (96.5-99.9 % in `make bench-web` on the idle 2-core box, the
# issue's >= 90 % target; 79 % once in CI's suite beside another job): a figure for the benchmark, not a test. Half
# is far below any of those and far above a path that fails.
ANSWERED_MIN = 0.5


def _skip_reason() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if webbench.browser_executable() is None:
        return "no Chromium on this machine (apt-get install chromium, or set POSECAST_CHROMIUM)"
    if assets.missing():
        return f"the MediaPipe JS files are not in {assets.assets_root()} (make web-assets)"
    return None


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_page_streams_the_webcam_through_a_real_server(tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(f"browser test skipped: {reason}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "browser-page.png"
    y4m = webbench.dancer_y4m(tmp_path / "dancer.y4m", frames=60)
    with webbench.live_stack(log_dir=tmp_path) as url:
        s = webbench.drive_page(url, y4m, seconds=12, screenshot=shot)
    print(f"page figures: {s}; screenshot {shot}")
    assert s["kind"] == "dance" and s["ready"]
    assert s["sent"] >= 3 and s["detected"] >= 0.8 * s["sent"], s    # MediaPipe found the dancer, landmarks went up
    assert s["unmatched"] == 0                      # every reply matched to the landmarks it answers
    assert s["answered_fraction"] >= ANSWERED_MIN, s
    assert s["errors"] == 0 and s["last_error"] is None, s
    assert s["fps"] > 0 and s["latency_p50_ms"] > 0 and s["mediapipe_ms"] > 0
    assert not [e for e in s["console_errors"] if "posecast" in e or "app.js" in e], s["console_errors"]
    assert shot.stat().st_size > 10_000


@needs_megamind
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_face_page_runs_the_face_mesh_and_streams(tmp_path):
    """A face model's page: the legacy face mesh solution (478 points with irises) in the page, a tiny random face
    model on the server (what it draws does not matter here), a real face as the webcam (Megamind, shot 1)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(f"browser test skipped: {reason}")
    model = random_checkpoint(tmp_path / "face", "face", size=64, ngf=8, ndf=8,
                              meta={"subject_stats": None, "dataset_fps": 25.0})
    y4m = webbench.video_y4m(MEGAMIND, tmp_path / "face.y4m", start=10, frames=60)
    with webbench.live_stack(model, backend="torch", log_dir=tmp_path) as url:
        s = webbench.drive_page(url, y4m, seconds=10, screenshot=ARTIFACTS / "browser-face-page.png")
    print(f"face page figures: {s}")
    assert s["kind"] == "face" and s["ready"]
    assert s["sent"] >= 3 and s["detected"] >= 0.8 * s["sent"], s        # the face was found
    assert s["unmatched"] == 0 and s["answered_fraction"] >= ANSWERED_MIN, s
    assert s["errors"] == 0 and s["last_error"] is None, s
