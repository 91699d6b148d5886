"""The capture client's outputs (clients/sinks.py): a virtual camera through a fake pyvirtualcam device, the MJPEG
web view, and the sinks as one interface of the run loop."""

from __future__ import annotations

import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

from clients.capture import CaptureClient, capture
from clients.sinks import Sink, SinkError, VirtualCamSink, WebViewSink
from clients.sources import SyntheticSource
from test_capture import COLOR_BGR, SIZE, FakeServer, _quiet

pyvirtualcam = pytest.importorskip("pyvirtualcam")


class FakeDevice:
    """A pyvirtualcam backend (registered under 'posecast-fake'): keeps every frame and when it came."""

    opened: list["FakeDevice"] = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        if device == "/dev/missing":
            raise RuntimeError("no such device")
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.closed = False
        FakeDevice.opened.append(self)

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame.copy())
        self.times.append(time.monotonic())

    def close(self) -> None:
        self.closed = True

    def device(self) -> str:
        return "fake0"

    def native_fourcc(self):
        return None


@pytest.fixture
def fake_device():
    pyvirtualcam.register_backend("posecast-fake", FakeDevice)
    FakeDevice.opened = []
    yield FakeDevice


def test_virtual_camera_gets_the_output_at_the_stream_fps_in_rgb(fake_device):
    n = 24
    with FakeServer() as srv:
        st = capture(srv.address, "synthetic:3", headless=True, max_frames=n, timeout_s=3, log=_quiet,
                     forecast="none", virtual_cam={"backend": "posecast-fake"})
    (dev,) = fake_device.opened
    assert dev.closed and (dev.width, dev.height) == (SIZE, SIZE) and dev.fps == 30.0
    assert len(dev.frames) == st.frames_received == n
    rgb = dev.frames[-1].reshape(SIZE, SIZE, 3)
    assert np.abs(rgb.astype(int).mean((0, 1)) - COLOR_BGR[::-1]).max() < 4      # RGB, not OpenCV's BGR
    gaps = np.diff(dev.times)
    assert 0.5 / 30 < float(np.median(gaps)) < 2.0 / 30    # paced by the stream, not bursts


def test_missing_virtual_camera_is_a_clear_error_before_streaming(fake_device):
    with pytest.raises(SinkError, match="no virtual camera device: on Linux load v4l2loopback"):
        VirtualCamSink(64, 30.0, backend="posecast-fake", device="/dev/missing")
    with FakeServer() as srv:
        with pytest.raises(SinkError, match="modprobe v4l2loopback"):
            capture(srv.address, "synthetic:3", headless=True, max_frames=5, timeout_s=3, log=_quiet,
                    virtual_cam={"backend": "posecast-fake", "device": "/dev/missing"})
        assert srv.received == []          # nothing streamed


def _read_mjpeg_parts(url: str, n: int, out: list) -> None:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        buf = b""
        while len(out) < n:
            buf += r.read1(65536)
            while True:
                start, end = buf.find(b"\xff\xd8"), buf.find(b"\xff\xd9")
                if start < 0 or end < start:
                    break
                out.append(buf[start:end + 2])
                buf = buf[end + 2:]


def test_web_view_serves_the_page_the_latest_frame_and_a_stream():
    sink = WebViewSink(0, log=_quiet)
    base = f"http://127.0.0.1:{sink.port}"
    try:
        with pytest.raises(urllib.error.HTTPError, match="503"):
            urllib.request.urlopen(base + "/frame.jpg", timeout=5)
        assert b"/stream.mjpg" in urllib.request.urlopen(base + "/", timeout=5).read()
        parts: list[bytes] = []
        reader = threading.Thread(target=_read_mjpeg_parts, args=(base + "/stream.mjpg", 3, parts))
        reader.start()
        colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (90, 90, 90)]
        for c in colours:
            view = np.full((40, 80, 3), c, np.uint8)
            sink.write(view, view[:, :40], time.monotonic())
            time.sleep(0.15)
        reader.join(10)
        assert len(parts) >= 3
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(parts[-1], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert rgb.shape == (40, 80, 3) and np.abs(rgb.astype(int).mean((0, 1)) - colours[len(parts) - 1]).max() < 6
        last = cv2.imdecode(np.frombuffer(urllib.request.urlopen(base + "/frame.jpg", timeout=5).read(), np.uint8),
                            cv2.IMREAD_COLOR)
        assert np.abs(last.astype(int).mean((0, 1)) - (90, 90, 90)).max() < 6
    finally:
        sink.close()
    with pytest.raises(SinkError, match="cannot listen"):
        busy = WebViewSink(0, log=_quiet)
        try:
            WebViewSink(busy.port, log=_quiet)
        finally:
            busy.close()


class CountingSink(Sink):
    def __init__(self, quit_after: int | None = None):
        self.views, self.outputs, self.closed, self.quit_after = [], [], False, quit_after

    def write(self, view, output, now_s) -> None:
        self.views.append(view.shape)
        self.outputs.append(output.shape)

    def quit_requested(self) -> bool:
        return self.quit_after is not None and len(self.views) >= self.quit_after

    def close(self) -> None:
        self.closed = True


def test_every_sink_sees_every_frame_and_any_can_stop_the_run():
    with FakeServer() as srv:
        a, b = CountingSink(), CountingSink(quit_after=5)
        client = CaptureClient(srv.address, timeout_s=3, log=_quiet)
        with client:
            st = client.run(SyntheticSource(seed=1, fps=30, num_frames=40, realtime=True, preview_size=64),
                            headless=True, forecast="none", sinks=[a, b])
    assert st.interrupted and 5 <= len(a.views) == len(b.views) < 40
    assert a.closed and b.closed
    assert set(a.outputs) == {(SIZE, SIZE, 3)} and all(v[1] > SIZE for v in a.views)   # view = input | output
