"""The one MediaPipe wrapper: RGB image -> (K, 3) landmark array.

Used by ``posecast prepare`` (video -> training dataset) and by the live capture client, so both see the
same landmark layout:

* ``kind="dance"``: MediaPipe Pose, 33 landmarks, rows ``(x, y, visibility)``.
* ``kind="face"``: MediaPipe Face Mesh (one face), 478 landmarks with iris refinement (468 without),
  rows ``(x, y, z)``.

``x, y`` are normalised to [0, 1] of the input image (MediaPipe may return values slightly outside that range
for points it places beyond the image border). MediaPipe itself is imported lazily, when an extractor is built,
so importing this module stays cheap.

MediaPipe and TFLite log to the console from C++ (glog / absl: "Created TensorFlow Lite XNNPACK delegate",
"Feedback manager requires a model with a single signature ...", "All log messages before absl::InitializeLog()
...", "Using NORM_RECT without IMAGE_DIMENSIONS ..."). :func:`quiet_native_logs` keeps them off the console: the
log-level variables are set before MediaPipe is imported, and file descriptor 2 is pointed at /dev/null while a
graph is built and started (on a blank frame, in the constructor) and until its first detection, which is when
those lines are written. ``POSECAST_MEDIAPIPE_LOGS=1`` shows them again.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

POSE_LANDMARKS = 33
FACE_LANDMARKS = 468
FACE_LANDMARKS_REFINED = 478
KINDS = ("dance", "face")


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


@contextlib.contextmanager
def quiet_native_logs():
    """Send what native code writes to stderr (fd 2) to /dev/null inside the block (Python's own
    ``sys.stderr`` is flushed first and keeps working afterwards). No-op with ``POSECAST_MEDIAPIPE_LOGS=1``."""
    if _logs_wanted():
        yield
        return
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class LandmarkExtractor:
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
        _set_log_levels()
        with quiet_native_logs():
            import mediapipe as mp  # lazy: heavy import, only needed once an extractor is built

        self.kind = kind
        self.static_image_mode = bool(static_image_mode)
        if kind == "dance":
            self.num_landmarks = POSE_LANDMARKS
            with quiet_native_logs():
                self._solution = mp.solutions.pose.Pose(
                    static_image_mode=self.static_image_mode, model_complexity=model_complexity,
                    smooth_landmarks=True, enable_segmentation=False,
                    min_detection_confidence=min_detection_confidence,
                    min_tracking_confidence=min_tracking_confidence)
        else:
            self.num_landmarks = FACE_LANDMARKS_REFINED if refine_face else FACE_LANDMARKS
            with quiet_native_logs():
                self._solution = mp.solutions.face_mesh.FaceMesh(
                    static_image_mode=self.static_image_mode, max_num_faces=1, refine_landmarks=bool(refine_face),
                    min_detection_confidence=min_detection_confidence,
                    min_tracking_confidence=min_tracking_confidence)
        # Start the graph now, on a blank frame (nothing is found, so no tracking state is left behind): its
        # native start-up lines go to /dev/null here, in the thread that builds the extractor, instead of racing
        # with other threads' output on the first real frame.
        with quiet_native_logs():
            self._solution.process(np.zeros((64, 64, 3), np.uint8))

    num_landmarks: int
    _solution = None
    _found = False      # a first detection was made (the native start-up warnings are behind us)

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        """(K, 3) float32 in the input image's normalised coordinates (x, y in [0, 1] of that image;
        3rd = visibility for pose, z for face), or None when nothing is detected."""
        if self._solution is None:
            raise RuntimeError("LandmarkExtractor is closed")
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {rgb.dtype}{rgb.shape}")
        if self._found:
            results = self._solution.process(np.ascontiguousarray(rgb))
        else:  # more native warnings come the first time landmarks are projected onto a frame
            with quiet_native_logs():
                results = self._solution.process(np.ascontiguousarray(rgb))
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
        self._found = True
        if out.shape != (self.num_landmarks, 3):
            raise RuntimeError(f"MediaPipe returned {out.shape[0]} {self.kind} landmarks, "
                               f"expected {self.num_landmarks}")
        return out

    def close(self) -> None:
        if self._solution is not None:
            self._solution.close()
            self._solution = None

    def __enter__(self) -> "LandmarkExtractor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __del__(self):  # MediaPipe graphs hold native resources
        self.close()
