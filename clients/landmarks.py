"""The one MediaPipe wrapper: RGB image -> (K, 3) landmark array.

Used by ``posecast prepare`` (video -> training dataset) and by the live capture client, so both see the
same landmark layout:

* ``kind="dance"``: MediaPipe Pose, 33 landmarks, rows ``(x, y, visibility)``.
* ``kind="face"``: MediaPipe Face Mesh (one face), 478 landmarks with iris refinement (468 without),
  rows ``(x, y, z)``.

``x, y`` are normalised to [0, 1] of the input image (MediaPipe may return values slightly outside that range
for points it places beyond the image border). MediaPipe itself is imported lazily, when an extractor is built,
so importing this module stays cheap.
"""

from __future__ import annotations

import numpy as np

POSE_LANDMARKS = 33
FACE_LANDMARKS = 468
FACE_LANDMARKS_REFINED = 478
KINDS = ("dance", "face")


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
        import mediapipe as mp  # lazy: heavy import, only needed once an extractor is built

        self.kind = kind
        self.static_image_mode = bool(static_image_mode)
        if kind == "dance":
            self.num_landmarks = POSE_LANDMARKS
            self._solution = mp.solutions.pose.Pose(
                static_image_mode=self.static_image_mode, model_complexity=model_complexity,
                smooth_landmarks=True, enable_segmentation=False,
                min_detection_confidence=min_detection_confidence,
                min_tracking_confidence=min_tracking_confidence)
        else:
            self.num_landmarks = FACE_LANDMARKS_REFINED if refine_face else FACE_LANDMARKS
            self._solution = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=self.static_image_mode, max_num_faces=1, refine_landmarks=bool(refine_face),
                min_detection_confidence=min_detection_confidence,
                min_tracking_confidence=min_tracking_confidence)

    num_landmarks: int
    _solution = None

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        """(K, 3) float32 in the input image's normalised coordinates (x, y in [0, 1] of that image;
        3rd = visibility for pose, z for face), or None when nothing is detected."""
        if self._solution is None:
            raise RuntimeError("LandmarkExtractor is closed")
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {rgb.dtype}{rgb.shape}")
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
