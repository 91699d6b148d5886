"""Frame / landmark sources for the capture client: one small interface for cameras, videos, recordings and
the synthetic dancer.

A source is an iterable of :class:`SourceItem`::

    index       0, 1, 2, ... (counts items yielded, across video loops)
    capture_ts  time.time() when the item was captured (live) or became due (paced sources)
    rgb         uint8 (H, W, 3) RGB image, or None for landmark-only sources
    landmarks   float32 (K, 3) when the source provides them (recording, synthetic); None until extracted

and has ``fps`` (its nominal frame rate), ``kind`` ("dance" / "face" for landmark sources, None for images),
``aspect`` (width/height of the frame the landmarks are normalised to; None until known), ``live`` and
``close()`` (also a context manager). Sources that are not live (video, recording, synthetic) are paced at their
``fps`` by default (``realtime=True``); with ``realtime=False`` they yield as fast as they can.

Landmark recordings (``posecast capture --save-landmarks rec.npz``, :func:`save_recording`) are ``.npz``
files (no pickle; read with ``np.load(allow_pickle=False)``) holding:

    format      str   "posecast-landmarks"
    version     int   1
    kind        str   "dance" (33 MediaPipe Pose landmarks: x, y, visibility) | "face" (468/478: x, y, z)
    fps         float the source's frame rate
    aspect      float width/height of the frame the x, y coordinates are normalised to
    landmarks   float32 (N, K, 3), the raw (not pose-normalised) landmarks; an all-NaN frame = no detection
    capture_ts  float64 (N,), the original capture times (seconds, time.time())

They are written atomically (``models.io.atomic_write``: temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
import time
import zipfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from models.io import atomic_write
from models.landmarks import KINDS

RECORDING_FORMAT = "posecast-landmarks"
RECORDING_VERSION = 1
DEFAULT_FPS = 30.0


class SourceError(ValueError):
    """A source cannot be opened or read (missing/corrupt file, no camera, wrong kind)."""


@dataclasses.dataclass
class SourceItem:
    index: int
    capture_ts: float
    rgb: np.ndarray | None = None
    landmarks: np.ndarray | None = None


class _Pacer:
    """Yields no faster than ``fps``: item i is due at t0 + i / fps. A consumer that falls more than one frame
    behind re-anchors the schedule instead of being handed a burst of catch-up frames."""

    def __init__(self, fps: float, enabled: bool):
        self.period = 1.0 / fps if enabled and fps > 0 else 0.0
        self._t0: float | None = None
        self._n = 0

    def wait(self) -> None:
        if not self.period:
            return
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._n = now, 0
        due = self._t0 + self._n * self.period
        if due > now:
            time.sleep(due - now)
        elif now - due > self.period:
            self._t0, self._n = now, 0
        self._n += 1


class Source(abc.ABC):
    """Base class; subclasses implement :meth:`_items`."""

    fps: float = DEFAULT_FPS
    kind: str | None = None
    aspect: float | None = None
    live: bool = False
    realtime: bool = True

    def __iter__(self) -> Iterator[SourceItem]:
        return self._items()

    @abc.abstractmethod
    def _items(self) -> Iterator[SourceItem]:
        """Yield the source's items, paced as the source says."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        return type(self).__name__


def _sane_fps(fps: float | None) -> float:
    return float(fps) if fps is not None and math.isfinite(fps) and 1.0 <= fps <= 1000.0 else DEFAULT_FPS


# ------------------------------------------------------------------------------------------------------------
class CameraSource(Source):
    """A live camera (``cv2.VideoCapture(index)``); frames are taken as the camera delivers them."""

    live = True

    def __init__(self, index: int = 0, *, width: int | None = None, height: int | None = None,
                 fps: float | None = None):
        self.index = int(index)
        self._cap = cv2.VideoCapture(self.index)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"cannot open camera {self.index} (no such device, or no permission to use it)")
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # where supported: hand out fresh frames, not a stale backlog
        if width:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(width))
        if height:
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(height))
        if fps:
            self._cap.set(cv2.CAP_PROP_FPS, float(fps))
        self.fps = _sane_fps(fps or self._cap.get(cv2.CAP_PROP_FPS))

    def _items(self) -> Iterator[SourceItem]:
        i = 0
        while self._cap is not None:
            ok, bgr = self._cap.read()
            ts = time.time()
            if not ok or bgr is None:
                return
            self.aspect = bgr.shape[1] / bgr.shape[0]
            yield SourceItem(i, ts, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None)
            i += 1

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def describe(self) -> str:
        return f"camera {self.index}"


class VideoSource(Source):
    """A video file, decoded with OpenCV; paced at its own frame rate unless ``realtime=False``.

    Raises :class:`SourceError` (``FileNotFoundError`` for a missing path) when the file cannot be decoded.
    ``loop=True`` starts over at the end (for demos); ``fps`` overrides the file's frame rate.
    """

    def __init__(self, path: str | os.PathLike, loop: bool = False, *, realtime: bool = True,
                 fps: float | None = None):
        self.path = Path(path)
        self.loop = bool(loop)
        self.realtime = bool(realtime)
        if not self.path.exists():
            raise FileNotFoundError(f"video file not found: {self.path}")
        if not self.path.is_file():
            raise SourceError(f"not a video file: {self.path}")
        self._cap = self._open()
        ok, bgr = self._cap.read()
        if not ok or bgr is None or bgr.ndim != 3:
            self._cap.release()
            raise SourceError(f"cannot decode video {self.path}: no frame could be read "
                              f"(corrupt, empty or unsupported format)")
        self._first = bgr
        self.fps = _sane_fps(fps or self._cap.get(cv2.CAP_PROP_FPS))
        self.size = (bgr.shape[1], bgr.shape[0])
        self.aspect = bgr.shape[1] / bgr.shape[0]

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open video {self.path} (corrupt or unsupported format)")
        return cap

    def _frames(self) -> Iterator[np.ndarray]:
        first, self._first = self._first, None
        if first is not None:
            yield first
        while True:
            n = 0
            while self._cap is not None:
                ok, bgr = self._cap.read()
                if not ok or bgr is None:
                    break
                n += 1
                yield bgr
            if not self.loop or self._cap is None:
                return
            self._cap.release()
            self._cap = self._open()
            if n == 0 and first is None:  # a pass that read nothing: do not spin forever
                return
            first = None

    def _items(self) -> Iterator[SourceItem]:
        pacer = _Pacer(self.fps, self.realtime)
        for i, bgr in enumerate(self._frames()):
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            pacer.wait()
            yield SourceItem(i, time.time(), rgb, None)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def describe(self) -> str:
        return f"video {self.path}" + (" (looped)" if self.loop else "")


# ------------------------------------------------------------------------------------------------------------
def preview_image(kind: str, landmarks: np.ndarray | None, size: int) -> np.ndarray:
    """The rendered label map of landmarks as a uint8 RGB image (black when nothing was detected)."""
    from models.render import render_labels
    from models.visualize import label_preview

    if landmarks is None:
        return np.zeros((size, size, 3), np.uint8)
    return label_preview(render_labels(kind, landmarks, size, size))


def synthetic_motion(kind: str, seed: int = 0, fps: float = DEFAULT_FPS):
    """The procedural motion of ``kind``: the dancer (:class:`models.motion.DanceMotion`, "dance") or the talking
    face (:class:`models.face_motion.FaceMotion`, "face"); ``landmarks(i)`` gives frame i's."""
    if kind not in ("dance", "face"):
        raise SourceError(f"no synthetic {kind!r} source (dance or face)")
    if kind == "face":
        from models.face_motion import FaceMotion

        return FaceMotion(seed, fps)
    from models.motion import DanceMotion

    return DanceMotion(seed, fps)


class SyntheticSource(Source):
    """The procedural dancer of :mod:`models.motion` (``kind="dance"``) or talking face of
    :mod:`models.face_motion` (``kind="face"``): landmarks only, square frame.

    ``num_frames=None`` runs until stopped. Each item also carries a ``preview_size``-pixel rendering of the
    skeleton or face mesh as its ``rgb`` (``preview_size=0``: none), so windows and recordings have an input panel.
    """

    aspect = 1.0

    def __init__(self, seed: int = 0, fps: float = DEFAULT_FPS, num_frames: int | None = None, *,
                 realtime: bool = True, preview_size: int = 256, start: int = 0, kind: str = "dance"):
        if num_frames is not None and num_frames < 0:
            raise SourceError(f"num_frames must be >= 0, got {num_frames}")
        self.motion = synthetic_motion(kind, int(seed), _sane_fps(fps))
        self.kind = kind
        self.seed, self.fps = int(seed), _sane_fps(fps)
        self.num_frames = None if num_frames is None else int(num_frames)
        self.realtime = bool(realtime)
        self.preview_size = int(preview_size)
        self.start = int(start)

    def _items(self) -> Iterator[SourceItem]:
        pacer = _Pacer(self.fps, self.realtime)
        i = 0
        while self.num_frames is None or i < self.num_frames:
            lm = self.motion.landmarks(self.start + i)
            rgb = preview_image(self.kind, lm, self.preview_size) if self.preview_size > 0 else None
            pacer.wait()
            yield SourceItem(i, time.time(), rgb, lm)
            i += 1

    def describe(self) -> str:
        what = "talking face" if self.kind == "face" else "dancer"
        return f"synthetic {what} (seed {self.seed}, {self.fps:g} fps)"


class RecordingSource(Source):
    """Replays a landmark recording (see the module docstring for the format). Landmarks only (``rgb`` None);
    an all-NaN recorded frame (no detection) is replayed as ``landmarks=None``."""

    def __init__(self, path: str | os.PathLike, *, realtime: bool = True, loop: bool = False):
        self.path = Path(path)
        self.realtime, self.loop = bool(realtime), bool(loop)
        rec = load_recording(self.path)
        self.kind, self.fps, self.aspect = rec["kind"], rec["fps"], rec["aspect"]
        self.landmarks = rec["landmarks"]
        self.recorded_ts = rec["capture_ts"]

    def __len__(self) -> int:
        return len(self.landmarks)

    def _items(self) -> Iterator[SourceItem]:
        pacer = _Pacer(self.fps, self.realtime)
        i = 0
        while len(self.landmarks):
            for lm in self.landmarks:
                pacer.wait()
                yield SourceItem(i, time.time(), None, None if np.isnan(lm).all() else lm.copy())
                i += 1
            if not self.loop:
                return

    def describe(self) -> str:
        return f"recording {self.path} ({len(self)} frames of {self.kind} landmarks, {self.fps:g} fps)"


# ------------------------------------------------------------------------------------------------------------
def save_recording(path: str | os.PathLike, landmarks: np.ndarray, *, kind: str, fps: float,
                   aspect: float = 1.0, capture_ts: np.ndarray | None = None) -> Path:
    """Write a landmark recording atomically (see the module docstring). ``landmarks``: (N, K, 3)."""
    path = Path(path)
    if kind not in KINDS:
        raise ValueError(f"unknown landmark kind {kind!r}: expected one of {KINDS}")
    lm = np.asarray(landmarks, np.float32)
    if lm.ndim != 3 or lm.shape[2] != 3:
        raise ValueError(f"landmarks must have shape (N, K, 3), got {lm.shape}")
    ts = np.full(len(lm), np.nan) if capture_ts is None else np.asarray(capture_ts, np.float64)
    if ts.shape != (len(lm),):
        raise ValueError(f"capture_ts must have shape ({len(lm)},), got {ts.shape}")
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, format=np.array(RECORDING_FORMAT), version=np.array(RECORDING_VERSION, np.int64),
                     kind=np.array(kind), fps=np.array(float(fps)), aspect=np.array(float(aspect)),
                     landmarks=lm, capture_ts=ts)

    atomic_write(path, write, fsync=True)
    return path


def load_recording(path: str | os.PathLike) -> dict:
    """Read and validate a landmark recording -> dict(kind, fps, aspect, landmarks, capture_ts)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"landmark recording not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise SourceError(f"cannot read landmark recording {path}: {e}") from None
    missing = {"format", "kind", "fps", "landmarks"} - d.keys()
    if missing or str(d["format"]) != RECORDING_FORMAT:
        raise SourceError(f"{path} is not a posecast landmark recording "
                          f"({'missing ' + ', '.join(sorted(missing)) if missing else 'wrong format tag'})")
    version = int(d.get("version", RECORDING_VERSION))
    if version > RECORDING_VERSION:
        raise SourceError(f"{path}: recording version {version} is newer than this client ({RECORDING_VERSION})")
    kind, lm = str(d["kind"]), np.asarray(d["landmarks"], np.float32)
    if kind not in KINDS:
        raise SourceError(f"{path}: unknown landmark kind {kind!r}")
    if lm.ndim != 3 or lm.shape[2] != 3:
        raise SourceError(f"{path}: landmarks must have shape (N, K, 3), got {lm.shape}")
    ts = np.asarray(d.get("capture_ts", np.full(len(lm), np.nan)), np.float64)
    return {"kind": kind, "fps": _sane_fps(float(d["fps"])), "aspect": float(d.get("aspect", 1.0)),
            "landmarks": lm, "capture_ts": ts}


# ------------------------------------------------------------------------------------------------------------
def open_source(spec, kind: str | None = None, *, realtime: bool = True, loop: bool = False,
                fps: float | None = None, default_fps: float | None = None, num_frames: int | None = None,
                seed: int = 0, preview_size: int = 256) -> Source:
    """Map a ``--source`` value to a source.

    ``0``, ``1``, ... (int or digit string) -> :class:`CameraSource`; ``synthetic`` or ``synthetic:SEED`` ->
    :class:`SyntheticSource` (the talking face when ``kind`` is "face", else the dancer); a ``.npz`` path -> :class:`RecordingSource`; any other path ->
    :class:`VideoSource`. ``fps`` overrides a source's own frame rate (camera request, video pacing, synthetic
    rate); ``default_fps`` is the synthetic dancer's rate when ``fps`` is not given (pass the model's; else 30).
    ``num_frames`` and ``seed`` are for the synthetic dancer, ``loop`` for videos and recordings. ``kind`` (the
    server model's, when known) is checked against landmark sources' kind: a mismatch raises :class:`SourceError`.
    """
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        return CameraSource(int(spec), fps=fps)
    spec = os.fspath(spec)
    name = spec.strip().lower()
    if name == "synthetic" or name.startswith("synthetic:"):
        if name != "synthetic":
            try:
                seed = int(name.split(":", 1)[1])
            except ValueError:
                raise SourceError(f"bad synthetic source {spec!r}: expected synthetic or synthetic:SEED") from None
        src: Source = SyntheticSource(seed, fps or default_fps or DEFAULT_FPS, num_frames, realtime=realtime,
                                      preview_size=preview_size, kind="face" if kind == "face" else "dance")
    elif name.endswith(".npz"):
        src = RecordingSource(spec, realtime=realtime, loop=loop)
    else:
        return VideoSource(spec, loop=loop, realtime=realtime, fps=fps)
    if kind is not None and src.kind != kind:
        src.close()
        raise SourceError(f"{src.describe()} gives {src.kind!r} landmarks but the server's model is {kind!r}")
    return src
