"""Where the capture client's pictures go: one small interface, four outputs.

Every sink gets, for each frame that came back, the composed **view** (input | output + status bar, as the
window shows it) and the model's **output** alone (RGB, the model's size); it takes what it shows:

- :class:`WindowSink`: the OpenCV window (q / Esc quits);
- :class:`RecordSink`: the view to an mp4 (``--record``), on the wall clock when live;
- :class:`VirtualCamSink`: the output to a virtual camera (``--virtual-cam``, ``pyvirtualcam``: v4l2loopback on
  Linux, OBS Virtual Camera on Windows/macOS), so OBS or a video call sees the trained person;
- :class:`WebViewSink`: the view as an MJPEG stream on ``http://HOST:PORT/`` (``--web PORT``), for headless
  servers and screen sharing.
"""

from __future__ import annotations

import abc
import http.server
import threading
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from clients.view import Display, Recorder
from realtime.codec import JpegEncoder


class SinkError(RuntimeError):
    """An output that cannot be opened (no virtual camera device, a port in use): raised before streaming."""


class Sink(abc.ABC):
    name: str = "sink"

    @abc.abstractmethod
    def write(self, view: np.ndarray, output: np.ndarray, now_s: float) -> None:
        """One frame: ``view`` (H, W, 3) RGB, ``output`` (S, S, 3) RGB, ``now_s`` monotonic seconds."""

    def quit_requested(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name


class WindowSink(Sink):
    name = "window"

    def __init__(self, display: Display):
        self.display = display

    def write(self, view, output, now_s) -> None:
        self.display.show(view)

    def quit_requested(self) -> bool:
        return self.display.quit_requested()

    def close(self) -> None:
        self.display.close()


class RecordSink(Sink):
    name = "mp4"

    def __init__(self, path: str | Path, fps: float, paced: bool):
        self.path, self.fps, self.paced = Path(path), float(fps), paced
        self.recorder: Recorder | None = None       # opened on the first view (its size is known then)

    def write(self, view, output, now_s) -> None:
        if self.recorder is None:
            self.recorder = Recorder(self.path, self.fps, self.paced)
        self.recorder.write(view, now_s)

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()

    def describe(self) -> str:
        return f"mp4 {self.path}"


VIRTUAL_CAM_HELP = ("no virtual camera device: on Linux load v4l2loopback (sudo modprobe v4l2loopback devices=1 "
                    "exclusive_caps=1 card_label=posecast); on Windows and macOS install OBS Studio and start its "
                    "Virtual Camera once")


class VirtualCamSink(Sink):
    """The model's output to a virtual camera at the stream's ``fps``, in RGB, ``size`` x ``size``. Opened at
    once, so a missing device is a clear error before anything streams (:class:`SinkError`). ``backend`` and
    ``device``: pyvirtualcam's (None: the platform's first that works)."""

    name = "virtual camera"

    def __init__(self, size: int, fps: float, *, backend: str | None = None, device: str | None = None):
        try:
            import pyvirtualcam
        except ImportError:
            raise SinkError("--virtual-cam needs pyvirtualcam: pip install 'posecast[virtualcam]'") from None
        try:
            self.cam = pyvirtualcam.Camera(width=int(size), height=int(size), fps=float(fps),
                                           fmt=pyvirtualcam.PixelFormat.RGB, backend=backend, device=device)
        except RuntimeError as e:
            raise SinkError(f"{VIRTUAL_CAM_HELP}\n(pyvirtualcam: {e})") from None
        self.size = int(size)
        self.frames = 0

    def write(self, view, output, now_s) -> None:
        if output.shape[:2] != (self.size, self.size):
            output = cv2.resize(output, (self.size, self.size), interpolation=cv2.INTER_AREA)
        self.cam.send(np.ascontiguousarray(output, np.uint8))
        self.frames += 1

    def close(self) -> None:
        self.cam.close()

    def describe(self) -> str:
        return f"virtual camera {self.cam.device}"


_WEB_PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>posecast capture</title>
<style>body{margin:0;background:#111}img{display:block;margin:auto;max-width:100vw;max-height:100vh}</style>
</head><body><img src="/stream.mjpg" alt="posecast capture"></body></html>"""


class WebViewSink(Sink):
    """The view as ``multipart/x-mixed-replace`` JPEG (MJPEG: any browser, OBS's browser source, VLC) on
    ``http://HOST:PORT/`` (page), ``/stream.mjpg`` (the stream) and ``/frame.jpg`` (the latest picture). A frame is
    encoded only when someone watches; a slow viewer skips frames, it never holds the capture loop."""

    name = "web view"

    def __init__(self, port: int, host: str = "127.0.0.1", *, quality: int = 80,
                 log: Callable[[str], None] = print):
        self.cond = threading.Condition()
        self.latest: np.ndarray | None = None
        self.version = 0
        self.closed = False
        self.encode = JpegEncoder(quality)
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:      # quiet: the capture client's log is for the stream
                pass

            def do_GET(self) -> None:
                if self.path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", _WEB_PAGE)
                elif self.path == "/frame.jpg":
                    jpeg = sink._jpeg()
                    if jpeg is None:
                        self._send(503, "text/plain", b"no frame yet")
                    else:
                        self._send(200, "image/jpeg", jpeg)
                elif self.path == "/stream.mjpg":
                    self.send_response(200)
                    self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()
                    seen = -1
                    try:
                        while True:
                            got = sink._next(seen)
                            if got is None:
                                return
                            seen, jpeg = got
                            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                             + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                    except (BrokenPipeError, ConnectionResetError):
                        return
                else:
                    self._send(404, "text/plain", b"not found")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        try:
            self.httpd = http.server.ThreadingHTTPServer((host, int(port)), Handler)
        except OSError as e:
            raise SinkError(f"--web {port}: cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="posecast-web-view", daemon=True)
        self.thread.start()
        log(f"live view on http://{host}:{self.port}/")

    def _jpeg(self) -> bytes | None:
        """The latest picture, or None before the first."""
        with self.cond:
            rgb = self.latest
        return None if rgb is None else self.encode(rgb)

    def _next(self, seen: int) -> tuple[int, bytes] | None:
        """The next picture after version ``seen`` (waits for it); None once closed."""
        with self.cond:
            while not self.closed and (self.latest is None or self.version == seen):
                self.cond.wait(1.0)
            if self.closed:
                return None
            version, rgb = self.version, self.latest
        return version, self.encode(rgb)

    def write(self, view, output, now_s) -> None:
        with self.cond:
            self.latest = view
            self.version += 1
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def describe(self) -> str:
        return f"web view on port {self.port}"
