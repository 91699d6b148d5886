"""The browser client in a real browser: Debian's Chromium driven by Playwright, its fake webcam playing the
synthetic dancer (a y4m file), the page of ``posecast web`` running MediaPipe, a real ``posecast serve`` with the
bundled model. Skips, saying why, without Chromium, Playwright or the MediaPipe JS files (``make web-assets``).
The screenshot of the page is kept in runs/ci/browser-page.png (CI's artifact)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.web import assets
from posecast import webbench

ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "ci"


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
    assert s["sent"] >= 3, s                        # MediaPipe ran in the page and landmarks went up
    assert s["unmatched"] == 0                      # every reply matched to the landmarks it answers
    assert s["answered_fraction"] >= 0.9, s
    assert s["errors"] == 0 and s["last_error"] is None, s
    assert s["fps"] > 0 and s["latency_p50_ms"] > 0 and s["mediapipe_ms"] > 0
    assert not [e for e in s["console_errors"] if "posecast" in e or "app.js" in e], s["console_errors"]
    assert shot.stat().st_size > 10_000
