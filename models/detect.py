"""The one MediaPipe wrapper: RGB image -> (K, 3) landmark array (landmark *detection*).

Used by ``posecast prepare`` (video -> training dataset, trainer/) and by the live capture client (clients/),
so both see the same landmark layout. It lives in models/, the layer both of them stand on: MediaPipe's Pose and
Face Mesh are pretrained networks, and trainer/ must not import clients/.

* ``kind="dance"``: MediaPipe Pose, 33 landmarks, rows ``(x, y, visibility)``.
* ``kind="face"``: MediaPipe Face Mesh (one face), 478 landmarks with iris refinement (468 without),
  rows ``(x, y, z)``.

``x, y`` are normalised to [0, 1] of the input image (MediaPipe may return values slightly outside that range
for points it places beyond the image border). MediaPipe itself is imported lazily, when an extractor is built,
so importing this module stays cheap.

MediaPipe and TFLite log to the console from C++ (glog / absl: "Created TensorFlow Lite XNNPACK delegate",
"Feedback manager requires a model with a single signature ...", "All log messages before absl::InitializeLog()
...", "Using NORM_RECT without IMAGE_DIMENSIONS ..."), from their own threads and at moments of their choosing.
While an extractor exists, :class:`NativeLogFilter` keeps those lines off the console: the log-level variables are
set before MediaPipe is imported, and file descriptor 2 is a pipe whose reader thread passes every line on to the
real stderr except the native log lines (``NATIVE_LOG_LINE``). Python's own ``sys.stderr`` output goes through
unchanged. ``POSECAST_MEDIAPIPE_LOGS=1`` shows everything.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import weakref

import numpy as np

from .landmarks import FACE_NUM_LANDMARKS, FACE_NUM_LANDMARKS_REFINED, KINDS, POSE_NUM_LANDMARKS


def _logs_wanted() -> bool:
    return os.environ.get("POSECAST_MEDIAPIPE_LOGS", "") not in ("", "0")


def _set_log_levels() -> None:
    """Before mediapipe is imported: glog / TensorFlow / absl log only errors (user settings win)."""
    if _logs_wanted():
        return
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        from absl import logging as absl_logging  # ships with mediapipe
        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass


# absl/glog lines ("W0000 00:00:1796112419.927693    7088 file.cc:114] ...") and TFLite's ("INFO: ...").
NATIVE_LOG_LINE = re.compile(rb"^(?:[IWEF]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] |INFO: |WARNING: All log "
                             rb"messages before absl::InitializeLog)")
# A glog line's header anywhere in a line: MediaPipe's threads write whole lines, but the console line they land on
# may already hold another writer's unfinished text (a progress bar redrawn with \r and no newline).
NATIVE_LOG_HEADER = re.compile(rb"[IWEF]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] ")


def filter_native_lines(lines: list[bytes]) -> bytes:
    """What of these complete lines (without their newlines) goes to the console: every line but the native log
    lines; a native line written after another writer's unfinished text leaves that text, without a newline."""
    out = []
    for line in lines:
        hit = NATIVE_LOG_HEADER.search(line)
        if hit:
            out.append(line[:hit.start()])
        elif not NATIVE_LOG_LINE.match(line):
            out.append(line + b"\n")
    return b"".join(out)


class NativeLogFilter:
    """fd 2 -> a pipe -> a thread that forwards every line except ``NATIVE_LOG_LINE`` ones to the saved stderr.

    Reference-counted and process-wide: :meth:`acquire` when an extractor is built (the first one installs the
    pipe), :meth:`release` when it is closed (the last one puts the real stderr back and forwards what is left).
    """

    _lock = threading.Lock()
    _users = 0
    _saved: int | None = None
    _write: int | None = None
    _thread: threading.Thread | None = None

    @classmethod
    def acquire(cls) -> None:
        if _logs_wanted():
            return
        with cls._lock:
            cls._users += 1
            if cls._users > 1:
                return
            try:
                sys.stderr.flush()
                saved = os.dup(2)
                read, write = os.pipe()
                os.dup2(write, 2)
            except (OSError, AttributeError, ValueError):
                cls._users -= 1
                return
            cls._saved, cls._write = saved, write
            cls._thread = threading.Thread(target=cls._forward, args=(read, saved), daemon=True,
                                           name="posecast-native-log-filter")
            cls._thread.start()
            atexit.register(cls._uninstall)

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            if cls._users == 0:
                return
            cls._users -= 1
            if cls._users == 0:
                cls._uninstall_locked()

    @classmethod
    def _uninstall(cls) -> None:
        with cls._lock:
            cls._users = 0
            cls._uninstall_locked()

    @classmethod
    def _uninstall_locked(cls) -> None:
        if cls._saved is None:
            return
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError):
            pass
        os.dup2(cls._saved, 2)          # the pipe's last writer is now cls._write: close it -> EOF for the reader
        os.close(cls._write)
        cls._thread.join(timeout=2.0)
        os.close(cls._saved)
        cls._saved = cls._write = cls._thread = None

    @staticmethod
    def _forward(read: int, out: int) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(read, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            keep = filter_native_lines(lines)
            if keep:
                _write_all(out, keep)
        if buf and not NATIVE_LOG_LINE.match(buf) and not NATIVE_LOG_HEADER.search(buf):
            _write_all(out, buf)
        os.close(read)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except OSError:
            return


# Extractors not closed by their owner are closed at exit, before the interpreter tears down: a MediaPipe graph
# still open then is destroyed during finalisation, which hangs the process forever (seen with mediapipe 0.10.21:
# a script that builds an extractor and never closes it never exits).
_LIVE: "weakref.WeakSet[_Graph]" = weakref.WeakSet()


@atexit.register
def _close_live_extractors() -> None:
    for ex in list(_LIVE):
        ex.close()


class _Graph:
    """A MediaPipe solution graph's life: its native log lines filtered while it lives, closed by ``close()``, by
    ``with``, when collected, or at exit (an open graph's threads would hang the interpreter's exit)."""

    _solution = None
    _filtering = False  # holds a NativeLogFilter reference

    def _start(self, solution) -> None:
        self._solution = solution
        # Start the graph now, on a blank frame (nothing is found, so no tracking state is left behind), so that
        # the first real frame does not pay for it.
        self._solution.process(np.zeros((64, 64, 3), np.uint8))
        _LIVE.add(self)

    @staticmethod
    def _filter_logs() -> None:
        _set_log_levels()
        NativeLogFilter.acquire()  # released in close()

    def _process(self, rgb: np.ndarray):
        if self._solution is None:
            raise RuntimeError(f"{type(self).__name__} is closed")
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {rgb.dtype}{rgb.shape}")
        return self._solution.process(np.ascontiguousarray(rgb))

    def close(self) -> None:
        if self._solution is not None:
            self._solution.close()
            self._solution = None
        if self._filtering:
            self._filtering = False
            NativeLogFilter.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __del__(self):  # MediaPipe graphs hold native resources
        self.close()


class LandmarkExtractor(_Graph):
    """Detect one person's pose (``"dance"``) or one face mesh (``"face"``) per image.

    With ``static_image_mode=False`` (the default) MediaPipe tracks between consecutive calls, which is faster and
    steadier for video; feed frames in order. Use ``static_image_mode=True`` for unrelated images.
    """

    def __init__(self, kind: str, *, static_image_mode: bool = False, refine_face: bool = True,
                 min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5,
                 model_complexity: int = 1):
        if kind not in KINDS:
            raise ValueError(f"unknown landmark kind {kind!r}: expected one of {', '.join(map(repr, KINDS))}")
        if not 0.0 <= min_detection_confidence <= 1.0:
            raise ValueError(f"min_detection_confidence must be in [0, 1], got {min_detection_confidence}")
        self._filter_logs()
        self._filtering = True
        import mediapipe as mp  # lazy: heavy import, only needed once an extractor is built

        self.kind = kind
        self.static_image_mode = bool(static_image_mode)
        if kind == "dance":
            self.num_landmarks = POSE_NUM_LANDMARKS
            solution = mp.solutions.pose.Pose(
                static_image_mode=self.static_image_mode, model_complexity=model_complexity,
                smooth_landmarks=True, enable_segmentation=False,
                min_detection_confidence=min_detection_confidence,
                min_tracking_confidence=min_tracking_confidence)
        else:
            self.num_landmarks = FACE_NUM_LANDMARKS_REFINED if refine_face else FACE_NUM_LANDMARKS
            solution = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=self.static_image_mode, max_num_faces=1, refine_landmarks=bool(refine_face),
                min_detection_confidence=min_detection_confidence,
                min_tracking_confidence=min_tracking_confidence)
        self._start(solution)

    num_landmarks: int

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        """(K, 3) float32 in the input image's normalised coordinates (x, y in [0, 1] of that image;
        3rd = visibility for pose, z for face), or None when nothing is detected."""
        results = self._process(rgb)
        if self.kind == "dance":
            lms = results.pose_landmarks
            if lms is None:
                return None
            out = np.array([(p.x, p.y, p.visibility) for p in lms.landmark], np.float32)
        else:
            faces = results.multi_face_landmarks
            if not faces:
                return None
            out = np.array([(p.x, p.y, p.z) for p in faces[0].landmark], np.float32)
        if out.shape != (self.num_landmarks, 3):
            raise RuntimeError(f"MediaPipe returned {out.shape[0]} {self.kind} landmarks, "
                               f"expected {self.num_landmarks}")
        return out


class PersonSegmenter(_Graph):
    """MediaPipe's selfie segmentation (its model ships in the mediapipe wheel): how much each pixel is a person.

    ``landscape=False`` (the general model, 256 x 256 input) for full bodies; ``True`` the faster 144 x 256 one made
    for video calls. Every person in the image is in the mask, not only the one tracked."""

    def __init__(self, *, landscape: bool = False):
        self._filter_logs()
        self._filtering = True
        import mediapipe as mp

        self._start(mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=int(bool(landscape))))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W) float32 in [0, 1], the image's size."""
        return np.asarray(self._process(rgb).segmentation_mask, np.float32)
