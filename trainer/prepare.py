"""``posecast prepare``: turn a video of one person into a training dataset (see ``trainer/dataset.py``).

Two passes over the video, never holding all frames in memory:

1. decode every frame, run MediaPipe (tracking mode) and keep only the landmarks; from them compute the crop:

   * ``face``: a square around the face mesh (bounding box scaled by ``FACE_SCALE`` and nudged up so forehead,
     chin and some hair fit), its centre and side low-pass filtered over time (centred Gaussian, per clip) so
     it does not jitter;
   * ``dance``: one fixed person-centred square for the whole video, from the robust extent of the visible pose
     landmarks plus a margin; where it leaves the frame the border is replicated.

2. decode again, crop + resize to ``size x size``, compute backward DIS flow and its confidence against the
   previous written frame of the same clip, and write everything with :class:`~trainer.dataset.DatasetWriter`.

Frames without a detection are not written: they end the current clip and are listed as missing. Shot cuts
(a large jump of a small grey thumbnail from one frame to the next) also end a clip: the face crop is not
smoothed and no flow is computed across them.

Landmarks are stored in the output frame's normalised coordinates: ``x, y`` in [0, 1] of the cropped, resized
frame (points MediaPipe places outside the crop fall outside [0, 1]; they are not clipped); the 3rd value is the
pose visibility, or the face-mesh ``z`` rescaled to the crop (same units as the output ``x``).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from tqdm import tqdm

from clients.landmarks import KINDS, LandmarkExtractor
from trainer.dataset import DatasetWriter
from trainer.flow import FlowEstimator

FACE_SCALE = 1.8            # crop side / max(face-mesh bbox width, height)
FACE_SHIFT_UP = 0.06        # crop centre moved up by this fraction of the crop side (room for hair)
FACE_SMOOTH_CENTER_S = 0.2  # Gaussian sigma (seconds) for the crop centre
FACE_SMOOTH_SIDE_S = 0.5    # Gaussian sigma (seconds) for the crop side
DANCE_MARGIN = 1.2          # crop side / max(person extent width, height)
DANCE_HEAD_ROOM = 0.08      # extra room above the top landmark, fraction of the person's height
DANCE_VISIBILITY = 0.5      # pose landmarks at least this visible define the person's extent
DANCE_EXTENT_PCT = 2.0      # robust extent: this percentile of per-frame minima (100 - it of maxima)
DEFAULT_FPS = 30.0
CUT_THUMB = 32              # shot-cut detector: mean |difference| of CUT_THUMB^2 grey thumbnails (0..255) ...
CUT_ABS = 15.0              # ... above this ...
CUT_REL = 4.0               # ... and this many times the median difference of the surrounding frames
CUT_WINDOW = 12             # frames either side for that median
FB_THRESHOLD_PX = 1.0

# MediaPipe face-mesh landmark indices used for the face statistics.
_FACE_EYE_OUTER = (33, 263)
_FACE_TOP, _FACE_CHIN = 10, 152


class PrepareError(ValueError):
    """The input video cannot be turned into a dataset (missing, not a video, corrupt, nothing detected...)."""


@dataclasses.dataclass
class PrepareReport:
    frames_read: int                 # source frames decoded (from ``start``, at most ``max_frames``)
    frames_written: int              # frames in the dataset (= frames with a detection)
    missing: list[int]               # source frame indices without detection
    clips: list[tuple[int, int]]     # [start, stop) ranges of dataset frame indices
    out: Path
    seconds: float
    cuts: list[int] = dataclasses.field(default_factory=list)  # source frame indices that start a new shot


# ------------------------------------------------------------------------------------------------------------
# decoding

@dataclasses.dataclass
class _VideoInfo:
    fps: float
    width: int
    height: int
    frame_count: int  # as declared by the container; 0 when unknown


def _open(video: Path) -> cv2.VideoCapture:
    if not video.exists():
        raise PrepareError(f"{video}: no such file")
    if not video.is_file():
        raise PrepareError(f"{video}: not a file")
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        cap.release()
        raise PrepareError(f"{video}: cannot be opened as a video (not a video file, an unsupported codec, "
                           f"or a corrupt/truncated file)")
    return cap


def _probe(video: Path) -> _VideoInfo:
    cap = _open(video)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        info = _VideoInfo(fps=fps, width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                          height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                          frame_count=int(count) if count and math.isfinite(count) and count > 0 else 0)
    finally:
        cap.release()
    if not (math.isfinite(info.fps) and 0.0 < info.fps <= 1000.0):
        warnings.warn(f"{video}: the container reports no usable frame rate ({info.fps}); assuming {DEFAULT_FPS} fps",
                      stacklevel=3)
        info.fps = DEFAULT_FPS
    return info


def _iter_frames(video: Path, info: _VideoInfo, start: int, max_frames: int | None,
                 bar: tqdm) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(source_index, rgb)``; raises PrepareError for unreadable / truncated input."""
    cap = _open(video)
    try:
        for i in range(start):
            if not cap.grab():
                raise PrepareError(f"{video}: start={start} is beyond the end of the video ({i} frames readable)")
        n = 0
        shape = None
        while max_frames is None or n < max_frames:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            if shape is None:
                shape = bgr.shape
            elif bgr.shape != shape:
                raise PrepareError(f"{video}: frame {start + n} has size {bgr.shape[1]}x{bgr.shape[0]}, "
                                   f"earlier frames {shape[1]}x{shape[0]}; variable frame size is not supported")
            if bgr.ndim != 3 or bgr.shape[2] != 3:
                raise PrepareError(f"{video}: frame {start + n} is not a 3-channel colour image ({bgr.shape})")
            yield start + n, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            n += 1
            bar.update(1)
        if n == 0:
            where = f" from start={start}" if start else ""
            raise PrepareError(f"{video}: no readable frames{where} (empty, corrupt or truncated video)")
        end = start + n
        hit_limit = max_frames is not None and n >= max_frames
        if not hit_limit and info.frame_count and end < info.frame_count - max(2, int(0.01 * info.frame_count)):
            raise PrepareError(f"{video}: decoding stopped after frame {end - 1} but the file declares "
                               f"{info.frame_count} frames (corrupt or truncated video); pass max_frames="
                               f"{end - start} (--max-frames) to use only the readable part")
    finally:
        cap.release()


# ------------------------------------------------------------------------------------------------------------
# crops

def _runs(present: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of True in a boolean vector."""
    out, a = [], None
    for i, p in enumerate(present):
        if p and a is None:
            a = i
        elif not p and a is not None:
            out.append((a, i))
            a = None
    if a is not None:
        out.append((a, len(present)))
    return out


def _thumb(rgb: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (CUT_THUMB, CUT_THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


def _detect_cuts(diffs: np.ndarray) -> np.ndarray:
    """``diffs[i]`` = thumbnail change from frame i-1 to i (``diffs[0]`` = 0) -> boolean "frame i starts a shot"."""
    n = len(diffs)
    cut = np.zeros(n, bool)
    for i in range(1, n):
        if diffs[i] <= CUT_ABS:
            continue
        lo, hi = max(1, i - CUT_WINDOW), min(n, i + CUT_WINDOW + 1)
        around = np.delete(diffs[lo:hi], i - lo)
        cut[i] = diffs[i] > CUT_REL * (float(np.median(around)) if len(around) else 0.0)
    return cut


def _segments(present: np.ndarray, cuts: np.ndarray) -> list[tuple[int, int]]:
    """Runs of detected frames, further split at shot cuts: the future clips, in source-frame offsets."""
    out = []
    for a, b in _runs(present):
        edges = [a, *[i for i in range(a + 1, b) if cuts[i]], b]
        out.extend(zip(edges[:-1], edges[1:]))
    return out


def _gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Centred Gaussian low-pass of a 1-D signal, renormalised at the ends (no padding bias)."""
    if sigma <= 0 or len(x) < 2:
        return x.copy()
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    num = np.convolve(x, k, mode="full")[r:r + len(x)]
    den = np.convolve(np.ones_like(x), k, mode="full")[r:r + len(x)]
    return num / den


def _face_boxes(lms: list[np.ndarray | None], cuts: np.ndarray, w: int, h: int, fps: float) -> np.ndarray:
    """(n, 3) crop boxes ``(cx, cy, side)`` in source pixels, NaN where nothing was detected."""
    n = len(lms)
    raw = np.full((n, 3), np.nan)
    for i, lm in enumerate(lms):
        if lm is None:
            continue
        xs, ys = lm[:, 0] * w, lm[:, 1] * h
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        side = max(x1 - x0, y1 - y0) * FACE_SCALE
        raw[i] = (0.5 * (x0 + x1), 0.5 * (y0 + y1) - FACE_SHIFT_UP * side, side)
    out = raw.copy()
    for a, b in _segments(~np.isnan(raw[:, 0]), cuts):
        out[a:b, 0] = _gaussian_smooth(raw[a:b, 0], FACE_SMOOTH_CENTER_S * fps)
        out[a:b, 1] = _gaussian_smooth(raw[a:b, 1], FACE_SMOOTH_CENTER_S * fps)
        out[a:b, 2] = _gaussian_smooth(raw[a:b, 2], FACE_SMOOTH_SIDE_S * fps)
    return out


def _dance_box(lms: list[np.ndarray | None], w: int, h: int) -> tuple[float, float, float]:
    """One fixed ``(cx, cy, side)`` box in source pixels around the person over the whole video."""
    mins, maxs = [], []
    for lm in lms:
        if lm is None:
            continue
        vis = lm[:, 2] >= DANCE_VISIBILITY
        pts = lm[vis] if vis.sum() >= 4 else lm
        xy = pts[:, :2] * (w, h)
        mins.append(xy.min(0))
        maxs.append(xy.max(0))
    lo = np.percentile(np.array(mins), DANCE_EXTENT_PCT, axis=0)
    hi = np.percentile(np.array(maxs), 100.0 - DANCE_EXTENT_PCT, axis=0)
    x0, y0 = lo
    x1, y1 = hi
    y0 -= DANCE_HEAD_ROOM * (y1 - y0)
    side = max(x1 - x0, y1 - y0, 16.0) * DANCE_MARGIN
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    # Shift (never shrink) the box back inside the frame where it fits, so less border has to be invented.
    if side <= w:
        cx = min(max(cx, side / 2), w - side / 2)
    if side <= h:
        cy = min(max(cy, side / 2), h - side / 2)
    return float(cx), float(cy), float(side)


def crop_resize(img: np.ndarray, box: tuple[float, float, float], size: int) -> np.ndarray:
    """Crop the square ``box = (cx, cy, side)`` (source pixels, sub-pixel) and resize it to ``size x size``.

    Pixels outside the image replicate its border. Large downscales go through INTER_AREA first (no aliasing).
    """
    cx, cy, side = box
    x0, y0 = cx - side / 2, cy - side / 2
    h, w = img.shape[:2]
    # Region of interest with a small margin for interpolation, clamped to the image (keep >= 1 pixel).
    rx0 = min(max(int(math.floor(x0)) - 2, 0), w - 1)
    ry0 = min(max(int(math.floor(y0)) - 2, 0), h - 1)
    rx1 = max(min(int(math.ceil(x0 + side)) + 2, w), rx0 + 1)
    ry1 = max(min(int(math.ceil(y0 + side)) + 2, h), ry0 + 1)
    roi = img[ry0:ry1, rx0:rx1]
    lx0, ly0 = x0 - rx0, y0 - ry0
    s = side / size  # source pixels per output pixel
    sx = sy = s
    if s > 1.25:
        rh, rw = roi.shape[:2]
        nw, nh = max(1, round(rw / s)), max(1, round(rh / s))
        fx, fy = nw / rw, nh / rh
        roi = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
        lx0, ly0, sx, sy = lx0 * fx, ly0 * fy, side * fx / size, side * fy / size
    # Continuous coordinates (pixel i covers [i, i+1)): dst index u -> src index lx0 + (u + .5) * sx - .5.
    m = np.array([[sx, 0.0, lx0 + 0.5 * sx - 0.5], [0.0, sy, ly0 + 0.5 * sy - 0.5]], np.float64)
    interp = cv2.INTER_CUBIC if s < 1.0 else cv2.INTER_LINEAR
    return cv2.warpAffine(np.ascontiguousarray(roi), m, (size, size), flags=interp | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def map_landmarks(lm: np.ndarray, box: tuple[float, float, float], w: int, h: int, kind: str) -> np.ndarray:
    """Source-normalised landmarks -> normalised coordinates of the crop ``box`` (see module docstring)."""
    cx, cy, side = box
    out = lm.astype(np.float32).copy()
    out[:, 0] = (lm[:, 0] * w - (cx - side / 2)) / side
    out[:, 1] = (lm[:, 1] * h - (cy - side / 2)) / side
    if kind == "face":  # MediaPipe z is in units of the source width, like x
        out[:, 2] = lm[:, 2] * w / side
    return out


# ------------------------------------------------------------------------------------------------------------
# statistics

def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def subject_stats(kind: str, landmarks: list[np.ndarray]) -> dict | None:
    """Median body/face measures in normalised output coordinates (for later pose normalisation).

    dance: :func:`models.posenorm.subject_stats` (shoulder width, torso length, shoulder/hip centres over the
    frames where shoulders and hips are visible; None when there is no such frame). face: eye distance, face
    height and face centre.
    """
    if kind == "dance":
        from models.posenorm import subject_stats as pose_stats
        return pose_stats(np.stack(landmarks)) if landmarks else None
    ed, fh, fc = [], [], []
    for lm in landmarks:
        a, b = _FACE_EYE_OUTER
        ed.append(float(np.linalg.norm(lm[a, :2] - lm[b, :2])))
        fh.append(float(np.linalg.norm(lm[_FACE_TOP, :2] - lm[_FACE_CHIN, :2])))
        fc.append(lm[:, :2].mean(0))
    return {
        "frames": len(landmarks),
        "eye_distance": _median(ed),            # outer eye corners 33-263
        "face_height": _median(fh),             # forehead 10 - chin 152
        "face_center": [float(v) for v in np.median(fc, axis=0)] if fc else None,
    }


# ------------------------------------------------------------------------------------------------------------

def prepare_video(video, out_dir, *, kind: str, size: int = 256, start: int = 0, max_frames: int | None = None,
                  overwrite: bool = False, progress: bool = True) -> PrepareReport:
    """Build a dataset folder ``out_dir`` from ``video`` (see module docstring). Returns a :class:`PrepareReport`.

    Raises :class:`PrepareError` for bad arguments or an unusable video, ``FileExistsError`` when ``out_dir``
    exists and ``overwrite`` is false.
    """
    t0 = time.perf_counter()
    video, out = Path(video), Path(out_dir)
    if kind not in KINDS:
        raise PrepareError(f"unknown kind {kind!r}: expected one of {', '.join(map(repr, KINDS))}")
    if int(size) != size or size < 16:
        raise PrepareError(f"size must be an integer >= 16, got {size!r}")
    if int(start) != start or start < 0:
        raise PrepareError(f"start must be an integer >= 0, got {start!r}")
    if max_frames is not None and (int(max_frames) != max_frames or max_frames < 1):
        raise PrepareError(f"max_frames must be None or an integer >= 1, got {max_frames!r}")
    size, start = int(size), int(start)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    info = _probe(video)

    def bar(desc: str) -> tqdm:
        total = info.frame_count - start if info.frame_count > start else None
        if max_frames is not None:
            total = max_frames if total is None else min(total, max_frames)
        return tqdm(total=total, desc=f"prepare {kind}: {desc}", unit="frame", disable=not progress,
                    dynamic_ncols=True)

    # ---- pass 1: landmarks in source-normalised coordinates ----
    src_lms: list[np.ndarray | None] = []
    diffs: list[float] = []
    width = height = None
    prev_thumb = None
    with LandmarkExtractor(kind, static_image_mode=False) as extractor, bar("1/2 landmarks") as pbar:
        for _, rgb in _iter_frames(video, info, start, max_frames, pbar):
            height, width = rgb.shape[:2]
            src_lms.append(extractor(rgb))
            thumb = _thumb(rgb)
            diffs.append(0.0 if prev_thumb is None else float(np.abs(thumb - prev_thumb).mean()))
            prev_thumb = thumb
        num_landmarks = extractor.num_landmarks
    n = len(src_lms)
    present = np.array([lm is not None for lm in src_lms])
    cuts = _detect_cuts(np.array(diffs))
    cuts[1:] &= present[1:] & present[:-1]  # only cuts that split a run of detections matter (and are reported)
    cuts[0] = False
    if not present.any():
        what = "pose" if kind == "dance" else "face"
        raise PrepareError(f"{video}: no {what} detected in any of the {n} frames read "
                           f"(from frame {start}); is this the right --kind?")

    if kind == "face":
        boxes = _face_boxes(src_lms, cuts, width, height, info.fps)
    else:
        boxes = np.full((n, 3), np.nan)
        boxes[present] = _dance_box(src_lms, width, height)

    # ---- pass 2: crop, resize, flow, write ----
    flow_est = FlowEstimator(fb_threshold_px=FB_THRESHOLD_PX)
    missing: list[int] = []
    written_src: list[int] = []
    written_boxes: list[list[float]] = []
    out_lms: list[np.ndarray] = []
    seen = 0
    with DatasetWriter(out, kind=kind, height=size, width=size, fps=info.fps, num_landmarks=num_landmarks,
                       source=str(video), overwrite=overwrite) as writer, bar("2/2 frames+flow") as pbar:
        prev = None
        for src_i, rgb in _iter_frames(video, info, start, max_frames, pbar):
            j = src_i - start
            if j >= n or rgb.shape[:2] != (height, width):
                raise PrepareError(f"{video}: decoding differs between the two passes (frame {src_i})")
            seen += 1
            lm = src_lms[j]
            if lm is None:
                writer.note_missing(src_i)
                missing.append(src_i)
                prev = None
                continue
            if cuts[j]:
                prev = None  # new shot: new clip, no flow across the cut
            box = tuple(float(v) for v in boxes[j])
            frame = crop_resize(rgb, box, size)
            olm = map_landmarks(lm, box, width, height, kind)
            if prev is None:
                writer.begin_clip()
                writer.add(frame, olm)
            else:
                flow, conf = flow_est(prev, frame)
                writer.add(frame, olm, flow.astype(np.float16), conf)
            prev = frame
            out_lms.append(olm)
            written_src.append(src_i)
            cx, cy, side = box
            written_boxes.append([round(cx - side / 2, 2), round(cy - side / 2, 2), round(side, 2)])
        if seen != n:
            raise PrepareError(f"{video}: decoding differs between the two passes ({n} then {seen} frames)")
        m = writer.manifest
        m.extra = {
            "producer": "posecast prepare",
            "source_fps": info.fps,
            "source_size": [width, height],
            "start": start,
            "frames_read": n,
            "cuts": [start + int(i) for i in np.flatnonzero(cuts)],
            "source_frame_indices": written_src,   # dataset frame i <- source frame source_frame_indices[i]
            "crop": {
                "mode": "fixed" if kind == "dance" else "tracked",
                "format": "x0, y0, side in source pixels (square, may extend beyond the frame: border replicated)",
                "boxes": written_boxes,           # one per dataset frame
                **({"box": written_boxes[0]} if kind == "dance" else {}),
                **({"scale": FACE_SCALE, "smooth_center_s": FACE_SMOOTH_CENTER_S,
                    "smooth_side_s": FACE_SMOOTH_SIDE_S} if kind == "face" else {"margin": DANCE_MARGIN}),
            },
            "landmark_coords": "x, y normalised to the output frame (not clipped); 3rd = "
                               + ("visibility" if kind == "dance" else "z scaled like x"),
            "flow": {"method": "opencv DIS preset MEDIUM, backward", "fb_threshold_px": FB_THRESHOLD_PX},
            "subject_stats": subject_stats(kind, out_lms),
        }
    clips = [(int(a), int(b)) for a, b in writer.manifest.clips]  # final once the writer is closed
    return PrepareReport(frames_read=n, frames_written=len(written_src), missing=missing, clips=clips, out=out,
                         seconds=time.perf_counter() - t0, cuts=[start + int(i) for i in np.flatnonzero(cuts)])
