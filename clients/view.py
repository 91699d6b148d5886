"""What ``posecast capture`` shows and records: the input panel, the composed view (input | output, a status bar
below), the window and the ``--record`` mp4.

Images are RGB uint8 ``(H, W, 3)`` throughout. Nothing here reads a clock (the recorder is handed the time) or
a socket; tests/test_view.py checks it on arrays.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

MIN_VIEW_HEIGHT = 256       # the composed view is enlarged to at least this height

_DRAW_POSE = (80, 255, 120)
_DRAW_FACE = (255, 235, 90)


def draw_landmarks(rgb: np.ndarray, landmarks: np.ndarray, kind: str) -> np.ndarray:
    """Draw the detected skeleton (pose: MediaPipe's connections between landmarks at least 0.5 visible) or face
    mesh contours onto ``rgb`` (in place; landmarks normalised to that image) and return it."""
    from models.landmarks import FACE_CONTOURS, POSE_CONNECTIONS

    h, w = rgb.shape[:2]
    lm = np.asarray(landmarks, np.float32)
    with np.errstate(invalid="ignore"):
        pts = np.nan_to_num(lm[:, :2] * (w, h), nan=-1e4).clip(-1e4, 1e4)
    ipts = np.round(pts * 16).astype(np.int32)
    thick = max(1, int(round(min(h, w) / 256)))
    if kind == "dance":
        ok = np.nan_to_num(lm[:, 2], nan=0.0) >= 0.5
        for a, b in sorted(POSE_CONNECTIONS):
            if ok[a] and ok[b]:
                cv2.line(rgb, tuple(ipts[a]), tuple(ipts[b]), _DRAW_POSE, thick, cv2.LINE_AA, 4)
        for i in np.flatnonzero(ok):
            cv2.circle(rgb, tuple(ipts[i]), 2 * 16 * thick, _DRAW_POSE, -1, cv2.LINE_AA, 4)
    else:
        ok = np.isfinite(lm[:, :2]).all(axis=1)
        lines = [ipts[list(line)] for group in FACE_CONTOURS.values() for line in group if ok[list(line)].all()]
        cv2.polylines(rgb, lines, False, _DRAW_FACE, thick, cv2.LINE_AA, 4)
    return rgb


# -- panels ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class InputPanel:
    """The left half of the view for one frame, kept until its reply comes: the source image (resized, with the
    detection drawn on it) or, for sources without images, the landmarks sent (rendered as a label map then)."""
    image: np.ndarray | None = None       # (size, W, 3), W even
    landmarks: np.ndarray | None = None   # (K, 3), used when there is no image

    @classmethod
    def of(cls, rgb: np.ndarray | None, detected: np.ndarray | None, sent: np.ndarray | None, kind: str,
           size: int) -> "InputPanel":
        """``rgb``: the source image or None; ``detected``: its raw landmarks (drawn on it) or None; ``sent``:
        the landmarks sent (the panel of an image-less source); ``size``: the panel height (the model's)."""
        if rgb is None:
            return cls(landmarks=sent)
        h, w = rgb.shape[:2]
        nw = max(2, int(round(w * size / h / 2)) * 2)
        image = rgb if (h, w) == (size, nw) else cv2.resize(rgb, (nw, size), interpolation=cv2.INTER_AREA)
        if detected is not None:  # what MediaPipe found, drawn on the input panel
            image = draw_landmarks(image.copy(), detected, kind)
        return cls(image=image)

    def render(self, kind: str, size: int) -> np.ndarray:
        if self.image is not None:
            return self.image
        from clients.sources import preview_image
        return preview_image(kind, self.landmarks, size)


def status_bar(width: int, lines: list[str]) -> np.ndarray:
    """A dark strip with text lines (RGB uint8), placed under the panels so it never hides the images."""
    scale = 0.42
    step = 16
    bar = np.full((step * len(lines) + 8, width, 3), 24, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(bar, line, (6, step * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), 1,
                    cv2.LINE_AA)
    return bar


def overlay_lines(*, fps: float, glass_to_glass_ms: float, capture_to_send_ms: float | None,
                  extract_ms: float | None, server_timings: dict, sent: int, dropped: int, errors: int,
                  lost: int) -> list[str]:
    """The status bar's text: reply rate, this frame's latencies (ms), the server's timings, the counts."""
    lines = [f"{fps:4.1f} fps   glass-to-glass {glass_to_glass_ms:6.1f} ms",
             f"capture->send {capture_to_send_ms:5.1f} ms" if capture_to_send_ms is not None else "capture->send  -"]
    if extract_ms is not None:
        lines[-1] += f" (landmarks {extract_ms:.1f})"
    srv = " ".join(f"{k} {v:.1f}" for k, v in server_timings.items() if isinstance(v, (int, float)))
    if srv:
        lines.append(f"server ms: {srv}")
    lines.append(f"sent {sent}  dropped {dropped}  errors {errors}  lost {lost}")
    return lines


def compose(panel: np.ndarray, output: np.ndarray, lines: list[str]) -> np.ndarray:
    """input | output side by side (the output resized to the input's height if they differ), enlarged to at least
    ``MIN_VIEW_HEIGHT``, with ``lines`` in a status bar below."""
    from models.visualize import side_by_side

    view = side_by_side(panel, output)
    if view.shape[0] < MIN_VIEW_HEIGHT:  # small models: enlarge so the view (and its text) stays legible
        k = MIN_VIEW_HEIGHT / view.shape[0]
        view = cv2.resize(view, (round(view.shape[1] * k), MIN_VIEW_HEIGHT), interpolation=cv2.INTER_LINEAR)
    return np.concatenate([view, status_bar(view.shape[1], lines)])


# -- window and recorder -----------------------------------------------------------------------------------
class Display:
    """An OpenCV window; degrades to headless (``ok`` False, with one message) when it cannot be opened."""

    def __init__(self, title: str, log: Callable[[str], None]):
        self.title, self.log, self.ok = title, log, True
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            log(f"cannot open a window ({str(e).strip().splitlines()[-1]}); running headless")
            self.ok = False
        self.shown = False

    def show(self, rgb: np.ndarray) -> None:
        if self.ok:
            cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            self.shown = True

    def quit_requested(self) -> bool:
        """q, Q or Esc pressed, or the window closed."""
        if not self.ok:
            return False
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), ord("Q"), 27):
            return True
        if self.shown:
            try:
                return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
            except cv2.error:
                return True
        return False

    def close(self) -> None:
        if self.ok:
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass


class Recorder:
    """The ``--record`` mp4 of the views. ``paced`` streams are written at wall-clock time: frame k of the video
    is what was on screen ``k / fps`` seconds after the first view, so where replies were dropped or late the
    previous view is repeated (``repeats``) and the mp4 plays at real speed. Lock-step streams (``--fast``: every
    frame rendered) get one video frame per view. The first view fixes the size (rounded up to even)."""

    def __init__(self, path: str | Path, fps: float, paced: bool):
        from models.visualize import VideoWriter

        self.path, self.fps, self.paced = Path(path), float(fps), bool(paced)
        self.writer = VideoWriter(self.path, fps=self.fps)
        self.size: tuple[int, int] | None = None   # (W, H) of the video
        self.written = 0                           # video frames written
        self.repeats = 0                           # of which repeated views
        self._last: np.ndarray | None = None
        self._t0_s = 0.0

    def write(self, view: np.ndarray, now_s: float) -> None:
        """Add ``view``, on screen from ``now_s`` (seconds, monotonic clock)."""
        if self.size is None:
            h, w = view.shape[:2]
            self.size = (w + (w & 1), h + (h & 1))  # even sizes for the codec
            self._t0_s = now_s
        if (view.shape[1], view.shape[0]) != self.size:
            view = cv2.resize(view, self.size, interpolation=cv2.INTER_AREA)
        if self.paced and self._last is not None:
            due = int((now_s - self._t0_s) * self.fps + 0.5)  # the index this view belongs at
            while self.written < due:
                self.writer.write(self._last)
                self.written += 1
                self.repeats += 1
        self.writer.write(view)
        self.written += 1
        self._last = view

    def close(self) -> None:
        self.writer.close()
