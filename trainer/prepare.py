"""``posecast prepare``: turn a video of one person into a training dataset (see ``trainer/dataset.py``).

Two passes over the video, never holding all frames in memory:

1. decode every frame, find the subject's landmarks, the shot boundaries and the crop:

   * ``face``: MediaPipe Face Mesh (tracking mode); a square around the face mesh, stabilised over time by
     :class:`models.posenorm.FaceCrop` -- the causal filter the live capture client applies too, so that live
     label maps are drawn exactly like the training ones;
   * ``dance``: every person in the frame (:mod:`trainer.track`: MediaPipe pose on the frame with the people
     already found masked out), associated over time by position and appearance; the subject is one of these
     tracks (``person``, or the largest, most central, most often seen one). One fixed square for the whole
     video, tight around that person's motion range (robust extent of the visible landmarks plus a margin);
     where it leaves the frame the image is mirrored (reflect padding), never smeared by repeating the border.

2. decode again, crop + resize to ``size x size``, compute backward DIS flow and its confidence against the
   previous written frame of the same clip, a person mask with MediaPipe's selfie segmentation (``masks.npy``:
   every person in the crop, not only the subject), and write everything with
   :class:`~trainer.dataset.DatasetWriter`.

Clips end where the subject is not found (no face / no person / that person lost / two people crossing / two
people merged into one skeleton, told by the person mask: :func:`trainer.track.two_people_merged`), at
shot cuts (a jump of a small grey thumbnail or of the colour histogram from one frame to the next, or a jump
of the face crop), and the table of clips -- start, end, length, identity and why each one ends -- is kept in
the manifest (``extra["clip_table"]``) and printed by ``posecast prepare``. For faces, every clip gets an
identity label (A, B, ...) from scale-free face proportions, so a cut to another character is reported as an
identity change. Clips shorter than ``min_clip_frames`` are dropped (and listed as dropped).

Landmarks are stored in the output frame's normalised coordinates: ``x, y`` in [0, 1] of the cropped, resized
frame (points MediaPipe places outside the crop fall outside [0, 1]; they are not clipped); the 3rd value is the
pose visibility, or the face-mesh ``z`` rescaled to the crop (same units as the output ``x``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from models.detect import LandmarkExtractor, PersonSegmenter
from models.landmarks import FACE_POINTS, KINDS
from models.posenorm import FaceCrop, FaceCropConfig, crop_landmarks
from trainer.dataset import DatasetWriter
from trainer.flow import FlowEstimator
from trainer import track as T

FACE_CROP = FaceCropConfig()  # scale, shift up, time constants of the stabilised face crop (fps: the video's)
DANCE_MARGIN = 1.2          # crop side / max(person extent width, height)
DANCE_HEAD_ROOM = 0.08      # extra room above the top landmark, fraction of the person's height
DANCE_VISIBILITY = 0.5      # pose landmarks at least this visible define the person's extent
DANCE_EXTENT_PCT = 2.0      # robust extent: this percentile of per-frame minima (100 - it of maxima)
SUBJECT_WARN_FRACTION = 0.4  # warn when the subject's median height is below this fraction of the crop side
SUBJECT_MIN_FRACTION = 0.2   # refuse below this (``min_subject_fraction``; 0 accepts any size)
MAX_PEOPLE = 4              # people looked for per frame (dance)
MIN_CLIP_FRAMES = 8         # shorter clips are dropped
DEFAULT_FPS = 30.0
CUT_THUMB = 32              # shot-cut detector: mean |difference| of CUT_THUMB^2 grey thumbnails (0..255) ...
CUT_ABS = 15.0              # ... above this ...
CUT_REL = 4.0               # ... and this many times the median difference of the surrounding frames
CUT_WINDOW = 12             # frames either side for that median
CUT_HIST = 0.5              # ... or a Bhattacharyya distance of the frames' hue/saturation histograms above this
IDENTITY_THRESHOLD = 2.5    # face clips whose proportions differ by more than this (RMS of z-scores) differ in identity
FB_THRESHOLD_PX = 1.0

# Scale-free face proportions for identity labels: (a, b) distances divided by the outer-eye distance, and the
# typical spread of each one within a shot (measured on Megamind.avi) that turns differences into z-scores.
_F = FACE_POINTS
_FACE_SIGNATURE = (((_F["right_eye_outer"], _F["right_eye_inner"]), 0.02),   # right eye width (33-133)
                   ((_F["right_cheek"], _F["left_cheek"]), 0.03),           # face width at the cheeks (234-454)
                   ((_F["forehead"], _F["chin"]), 0.07),                    # face height (10-152)
                   ((_F["nose_tip"], _F["chin"]), 0.06))                    # nose tip to chin (1-152)
_EYES_OUTER = (_F["right_eye_outer"], _F["left_eye_outer"])                # 33, 263: the scale


class PrepareError(ValueError):
    """The input video cannot be turned into a dataset (missing, not a video, corrupt, nothing detected...)."""


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
# reports

@dataclasses.dataclass
class ClipRow:
    """One clip of the clip table (source frame indices; ``dataset`` is None for a dropped clip)."""
    start: int                       # first source frame
    end: int                         # source frame after the last one (exclusive)
    reason: str                      # why the clip ends: "cut", "cut, identity change", "face jump", "no face",
                                     # "no person", "person lost", "people crossing", "two people merged",
                                     # "end of video"
    identity: str = ""               # face: "A", "B", ... (same letter = same proportions); dance: the person id
    dataset: tuple[int, int] | None = None   # [start, stop) dataset frame indices, None when dropped

    @property
    def length(self) -> int:
        return self.end - self.start

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "length": self.length, "reason": self.reason,
                "identity": self.identity, "dataset": list(self.dataset) if self.dataset else None}


@dataclasses.dataclass
class PrepareReport:
    frames_read: int                 # source frames decoded (from ``start``, at most ``max_frames``)
    frames_written: int              # frames in the dataset
    missing: list[int]               # source frame indices without the subject (no detection, lost, crossing)
    clips: list[tuple[int, int]]     # [start, stop) ranges of dataset frame indices
    out: Path
    seconds: float
    cuts: list[int] = dataclasses.field(default_factory=list)  # source frame indices that start a new shot
    clip_table: list[ClipRow] = dataclasses.field(default_factory=list)   # every clip, kept or dropped
    people: list[dict] = dataclasses.field(default_factory=list)   # dance: every person seen (id, frames, ...)
    person: int | None = None        # dance: the tracked person's id
    notes: list[str] = dataclasses.field(default_factory=list)   # what prepare decided (crop, padding, drops)
    missing_why: dict[int, str] = dataclasses.field(default_factory=dict)   # each missing frame: why (as in clips)


def format_clip_table(rows: list[ClipRow], source_offset: int = 0) -> str:
    """The clip table as printed by ``posecast prepare`` (one line per clip; source frame indices)."""
    out = [f"{'clip':>4}  {'start':>6}  {'end':>6}  {'length':>6}  {'identity':<9} {'dataset':<13} reason"]
    k = 0
    for r in rows:
        if r.dataset is None:
            ds, name = "dropped", "-"
        else:
            ds, name = f"{r.dataset[0]}:{r.dataset[1]}", str(k)
            k += 1
        out.append(f"{name:>4}  {r.start:>6}  {r.end:>6}  {r.length:>6}  {r.identity or '-':<9} {ds:<13} {r.reason}")
    return "\n".join(out)


def parse_clip_table(text: str) -> list[dict]:
    """Rows of a printed clip table (for tests and scripts): start, end, length, identity, dataset, reason."""
    rows = []
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:4] == ["clip", "start", "end", "length"])
    for line in lines[head + 1:]:
        parts = line.split(None, 6)
        if len(parts) < 7 or not parts[1].isdigit():
            break
        ds = None if parts[5] == "dropped" else [int(v) for v in parts[5].split(":")]
        rows.append({"start": int(parts[1]), "end": int(parts[2]), "length": int(parts[3]),
                     "identity": "" if parts[4] == "-" else parts[4], "dataset": ds, "reason": parts[6]})
    return rows


# ------------------------------------------------------------------------------------------------------------
# shots and clips

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


def _colour_hist(rgb: np.ndarray) -> np.ndarray:
    small = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA)
    hist = cv2.calcHist([cv2.cvtColor(small, cv2.COLOR_RGB2HSV)], [0, 1], None, [16, 8], [0, 180, 0, 256])
    return cv2.normalize(hist, None, 1.0, 0.0, cv2.NORM_L1).ravel()


def _detect_cuts(diffs: np.ndarray, hist_diffs: np.ndarray | None = None) -> np.ndarray:
    """``diffs[i]`` = thumbnail change from frame i-1 to i (``diffs[0]`` = 0) -> boolean "frame i starts a shot".

    A cut is a thumbnail change above ``CUT_ABS`` and ``CUT_REL`` times the median of the surrounding frames, or
    (with ``hist_diffs``, the Bhattacharyya distance of consecutive colour histograms) a colour change above
    ``CUT_HIST``.
    """
    n = len(diffs)
    cut = np.zeros(n, bool)
    for i in range(1, n):
        if hist_diffs is not None and hist_diffs[i] > CUT_HIST:
            cut[i] = True
            continue
        if diffs[i] <= CUT_ABS:
            continue
        lo, hi = max(1, i - CUT_WINDOW), min(n, i + CUT_WINDOW + 1)
        around = np.delete(diffs[lo:hi], i - lo)
        cut[i] = diffs[i] > CUT_REL * (float(np.median(around)) if len(around) else 0.0)
    return cut


def clip_rows(present: np.ndarray, breaks: dict[int, str], missing_reason: Callable[[int], str],
              offset: int = 0) -> list[ClipRow]:
    """Clips as :class:`ClipRow` (source indices ``offset + i``): runs of ``present`` frames, split where
    ``breaks`` (frame -> reason) start a new clip; each row says why it ends."""
    rows = []
    n = len(present)
    for a, b in _runs(present):
        edges = [a, *[i for i in range(a + 1, b) if i in breaks], b]
        for s, e in zip(edges[:-1], edges[1:]):
            reason = breaks[e] if e < b else ("end of video" if e >= n else missing_reason(e))
            rows.append(ClipRow(offset + s, offset + e, reason))
    return rows


def _drop_short(rows: list[ClipRow], min_frames: int) -> list[ClipRow]:
    for r in rows:
        if r.length < min_frames:
            r.dataset = None
            r.reason = r.reason + f"; dropped: shorter than {min_frames} frames"
    return rows


# ------------------------------------------------------------------------------------------------------------
# faces

def face_signature(lm: np.ndarray, aspect: float) -> np.ndarray:
    """Scale-free face proportions (see ``_FACE_SIGNATURE``), divided by their typical in-shot spread."""
    p = lm[:, :2].astype(np.float64) * (aspect, 1.0)
    io = max(float(np.linalg.norm(p[_EYES_OUTER[0]] - p[_EYES_OUTER[1]])), 1e-6)
    return np.array([np.linalg.norm(p[a] - p[b]) / io / spread for (a, b), spread in _FACE_SIGNATURE])


def _label_identities(rows: list[ClipRow], sigs: dict[int, np.ndarray], offset: int) -> None:
    """Give every clip an identity letter: the first earlier identity whose median signature is within
    ``IDENTITY_THRESHOLD``, else a new one; a boundary between different identities is an identity change."""
    known: list[np.ndarray] = []
    prev = None
    for r in rows:
        s = np.median([sigs[i - offset] for i in range(r.start, r.end)], axis=0)
        d = [float(np.sqrt(np.mean((s - k) ** 2))) for k in known]
        j = int(np.argmin(d)) if d and min(d) <= IDENTITY_THRESHOLD else len(known)
        if j == len(known):
            known.append(s)
        r.identity = chr(ord("A") + j) if j < 26 else f"#{j}"
        if prev is not None and prev.identity != r.identity:
            prev.reason += ", identity change"
        prev = r


def _face_pass(lms: list[np.ndarray | None], cuts: np.ndarray, aspect: float, fps: float):
    """Face crops (pixels, per frame) and the clip breaks: cuts and jumps of the face crop."""
    cfg = dataclasses.replace(FACE_CROP, fps=fps)
    crop = FaceCrop(cfg)
    boxes: list[tuple[float, float, float] | None] = []
    breaks: dict[int, str] = {}
    for i, lm in enumerate(lms):
        if lm is None:
            crop.reset()
            boxes.append(None)
            continue
        if cuts[i]:
            crop.reset()
        box, restarted = crop.update(lm, aspect)
        if cuts[i]:
            breaks[i] = "cut"
        elif restarted and i > 0 and lms[i - 1] is not None:
            breaks[i] = "face jump"
        boxes.append(box)
    return boxes, breaks, cfg


# ------------------------------------------------------------------------------------------------------------
# dance

def _dance_box(lms: list[np.ndarray], w: int, h: int) -> tuple[tuple[float, float, float], float]:
    """One fixed ``(x0, y0, side)`` box in source pixels around the person's motion range over the whole video,
    and the person's median height in pixels."""
    mins, maxs, heights = [], [], []
    for lm in lms:
        vis = lm[:, 2] >= DANCE_VISIBILITY
        pts = lm[vis] if vis.sum() >= 4 else lm
        xy = pts[:, :2] * (w, h)
        mins.append(xy.min(0))
        maxs.append(xy.max(0))
        heights.append(float(xy[:, 1].max() - xy[:, 1].min()))
    lo = np.percentile(np.array(mins), DANCE_EXTENT_PCT, axis=0)
    hi = np.percentile(np.array(maxs), 100.0 - DANCE_EXTENT_PCT, axis=0)
    x0, y0 = lo
    x1, y1 = hi
    person_h = float(np.median(heights)) * (1.0 + DANCE_HEAD_ROOM)
    y0 -= DANCE_HEAD_ROOM * float(np.median(heights))
    side = max(x1 - x0, y1 - y0, 16.0) * DANCE_MARGIN
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    # Shift (never shrink) the box back inside the frame where it fits, so less has to be padded.
    if side <= w:
        cx = min(max(cx, side / 2), w - side / 2)
    if side <= h:
        cy = min(max(cy, side / 2), h - side / 2)
    return (float(cx - side / 2), float(cy - side / 2), float(side)), person_h


# ------------------------------------------------------------------------------------------------------------
# crops

def crop_resize(img: np.ndarray, box: tuple[float, float, float], size: int,
                border: int = cv2.BORDER_REFLECT_101) -> np.ndarray:
    """Crop the square ``box = (x0, y0, side)`` (source pixels, sub-pixel) and resize it to ``size x size``.

    Pixels outside the image are mirrored (``border``, reflect by default). Large downscales go through
    INTER_AREA first (no aliasing).
    """
    x0, y0, side = box
    h, w = img.shape[:2]
    # Pad by reflection first where the box leaves the image (cheap: only what is needed, at most one image).
    pl = max(0, int(math.ceil(-x0)) + 3)
    pt = max(0, int(math.ceil(-y0)) + 3)
    pr = max(0, int(math.ceil(x0 + side - w)) + 3)
    pb = max(0, int(math.ceil(y0 + side - h)) + 3)
    if pl or pt or pr or pb:
        lim_x, lim_y = w - 1, h - 1  # BORDER_REFLECT_101 cannot pad more than the image size minus one
        pl, pr, pt, pb = min(pl, lim_x), min(pr, lim_x), min(pt, lim_y), min(pb, lim_y)
        img = cv2.copyMakeBorder(img, pt, pb, pl, pr, border)
        x0, y0 = x0 + pl, y0 + pt
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
                          borderMode=border)


def map_landmarks(lm: np.ndarray, box: tuple[float, float, float], w: int, h: int, kind: str) -> np.ndarray:
    """Source-normalised landmarks -> normalised coordinates of the crop ``box = (x0, y0, side)`` in source
    pixels (:func:`models.posenorm.crop_landmarks`, the function the live client uses)."""
    x0, y0, side = box
    return crop_landmarks(lm, (x0 / h, y0 / h, side / h), w / h, scale_z=(kind == "face"))


def _outside(box: tuple[float, float, float], w: int, h: int) -> int:
    """How many pixels (largest side) the box extends beyond the frame."""
    x0, y0, side = box
    return int(math.ceil(max(0.0, -x0, -y0, x0 + side - w, y0 + side - h)))


# ------------------------------------------------------------------------------------------------------------
# statistics

def _say(msg: str, log: Callable[[str], None] | None) -> str:
    if log is not None:
        log(msg)
    return msg


# ------------------------------------------------------------------------------------------------------------
# prepare: the stages of prepare_video, top to bottom

@dataclasses.dataclass
class _Source:
    """The frames being prepared: the file, what the container says, and the range read."""
    video: Path
    info: _VideoInfo
    kind: str
    start: int                       # first source frame read
    max_frames: int | None           # at most this many frames read (None: to the end)
    progress: bool                   # show progress bars

    def bar(self, desc: str) -> tqdm:
        """A progress bar over the frames read (total unknown when the container does not say)."""
        info, start, max_frames = self.info, self.start, self.max_frames
        total = info.frame_count - start if info.frame_count > start else None
        if max_frames is not None:
            total = max_frames if total is None else min(total, max_frames)
        return tqdm(total=total, desc=f"prepare {self.kind}: {desc}", unit="frame", disable=not self.progress,
                    dynamic_ncols=True)

    def frames(self, bar: tqdm) -> Iterator[tuple[int, np.ndarray]]:
        """``(source_index, rgb)`` of every frame read (see :func:`_iter_frames`)."""
        return _iter_frames(self.video, self.info, self.start, self.max_frames, bar)


@dataclasses.dataclass
class _Scan:
    """What pass 1 found, per frame read (index j = source frame start + j)."""
    width: int
    height: int
    num_landmarks: int
    diffs: list[float]                      # grey-thumbnail change from the previous frame (0 for the first)
    hdiffs: list[float]                     # colour-histogram distance from the previous frame (0 for the first)
    face_lms: list[np.ndarray | None]       # face: landmarks (None: no face); dance: empty
    dets: list[list[T.Detection]]           # dance: every person found, with track ids; face: empty
    tracker: T.PeopleTracker | None         # dance: the tracker that holds the tracks


def _check_args(kind: str, size, start, max_frames, min_clip_frames) -> None:
    """Raise :class:`PrepareError` for a bad argument of :func:`prepare_video`."""
    if kind not in KINDS:
        raise PrepareError(f"unknown kind {kind!r}: expected one of {', '.join(map(repr, KINDS))}")
    if int(size) != size or size < 16:
        raise PrepareError(f"size must be an integer >= 16, got {size!r}")
    if int(start) != start or start < 0:
        raise PrepareError(f"start must be an integer >= 0, got {start!r}")
    if max_frames is not None and (int(max_frames) != max_frames or max_frames < 1):
        raise PrepareError(f"max_frames must be None or an integer >= 1, got {max_frames!r}")
    if int(min_clip_frames) != min_clip_frames or min_clip_frames < 1:
        raise PrepareError(f"min_clip_frames must be an integer >= 1, got {min_clip_frames!r}")


def _frame_change(rgb: np.ndarray, prev: tuple | None) -> tuple[float, float, tuple]:
    """Thumbnail difference and colour-histogram distance of ``rgb`` from the previous frame's ``prev =
    (thumb, hist)`` (0, 0 for the first frame), and this frame's ``(thumb, hist)``."""
    thumb, hist = _thumb(rgb), _colour_hist(rgb)
    diff = 0.0 if prev is None else float(np.abs(thumb - prev[0]).mean())
    hdiff = 0.0 if prev is None else float(cv2.compareHist(hist, prev[1], cv2.HISTCMP_BHATTACHARYYA))
    return diff, hdiff, (thumb, hist)


def _first_pass(src: _Source, max_people: int) -> _Scan:
    """Pass 1: decode every frame; face: the face mesh (tracking mode); dance: every person, tracked over time;
    and the frame-to-frame changes the shot-cut detector needs."""
    face_lms: list[np.ndarray | None] = []
    diffs: list[float] = []
    hdiffs: list[float] = []
    dets: list[list[T.Detection]] = []
    width = height = None
    tracker = None
    prev = None
    with src.bar("1/2 landmarks") as pbar, contextlib.ExitStack() as stack:
        frames = src.frames(pbar)
        if src.kind == "face":
            extractor = stack.enter_context(LandmarkExtractor("face", static_image_mode=False))
        else:
            extractor = stack.enter_context(LandmarkExtractor("dance", static_image_mode=True))
            segment = stack.enter_context(PersonSegmenter())   # to tell one person from two merged into one skeleton
            detector, tracker = T.MultiPoseDetector(extractor, max_people), T.PeopleTracker()
        num_landmarks = extractor.num_landmarks
        for j, (_, rgb) in enumerate(frames):
            height, width = rgb.shape[:2]
            if src.kind == "face":
                face_lms.append(extractor(rgb))
            else:
                dets.append(tracker.update(j, detector(rgb, T.PersonMask(segment(rgb)))))
            diff, hdiff, prev = _frame_change(rgb, prev)
            diffs.append(diff)
            hdiffs.append(hdiff)
    return _Scan(width, height, num_landmarks, diffs, hdiffs, face_lms, dets, tracker)


def _people_table(tracks: list, start: int) -> list[dict]:
    """``report.people``: id, frames seen, first/last source frame, median height and centre x (pixels)."""
    return [{"id": t.id, "frames": len(t.frames), "first": start + t.frames[0], "last": start + t.frames[-1],
             "height_px": round(float(np.median(t.heights)), 1),
             "center_x_px": round(float(np.median([c[0] for c in t.centers])), 1)} for t in tracks]


def _choose_subject(src: _Source, scan: _Scan, person: int | None, notes: list[str],
                    log: Callable[[str], None] | None) -> tuple[list[dict], int]:
    """Dance: the people seen and the id of the one to follow (``person``, or :func:`trainer.track.pick_subject`);
    says which in ``notes``. Raises :class:`PrepareError` when nobody was seen or ``person`` is not one of them."""
    n = len(scan.diffs)
    tracks = scan.tracker.people(min(T.MIN_TRACK_FRAMES, max(1, n // 4)))  # short videos: any track counts
    people = _people_table(tracks, src.start)
    if not tracks:
        raise PrepareError(f"{src.video}: no person detected in any of the {n} frames read (from frame "
                           f"{src.start}); is this the right --kind?")
    if person is None:
        subject = T.pick_subject(tracks, scan.width, scan.height, n).id
    elif person not in {t.id for t in tracks}:
        raise PrepareError(f"{src.video}: there is no person {person}; people seen: "
                           + ", ".join(f"{p['id']} ({p['frames']} frames)" for p in people))
    else:
        subject = int(person)
    notes.append(_say(f"{len(tracks)} {'person' if len(tracks) == 1 else 'people'} seen; tracking person "
                      f"{subject}" + ("" if person is not None else " (the largest, most central, most often "
                                                                      "seen; choose another with --person N)"),
                      log))
    return people, subject


def _subject_landmarks(dets: list[list[T.Detection]], subject: int
                       ) -> tuple[list[np.ndarray | None], dict[int, str]]:
    """Dance: the subject's landmarks per frame (None where missing) and why each missing frame is missing
    ("no person", "person lost", "people crossing", "two people merged")."""
    lms: list[np.ndarray | None] = []
    missing_why: dict[int, str] = {}
    last_box = None                      # where the subject was last seen
    for j, ds in enumerate(dets):
        mine = [d for d in ds if d.track == subject]
        if not mine:
            lms.append(None)
            # a skeleton of two people (nobody's track) where the subject was last seen stands in its place
            here = [d for d in ds if d.merged and last_box is not None and T.overlap(d.box, last_box) > 0]
            missing_why[j] = "no person" if not ds else "two people merged" if here else "person lost"
            continue
        last_box = mine[0].box
        if mine[0].crossing:
            lms.append(None)
            missing_why[j] = "people crossing"
        else:
            lms.append(mine[0].landmarks)
    return lms, missing_why


def _shot_cuts(scan: _Scan) -> np.ndarray:
    """Boolean per frame read: a shot cut starts here (never at the first frame)."""
    cuts = _detect_cuts(np.array(scan.diffs), np.array(scan.hdiffs))
    cuts[0] = False
    return cuts


def _subject_present(lms: list[np.ndarray | None], cuts: np.ndarray, src: _Source, subject: int | None = None,
                     missing_why: dict[int, str] | None = None) -> np.ndarray:
    """Boolean per frame read: the subject was found. Keeps in ``cuts`` only the cuts inside a run of detections
    (the only ones that split a clip, and the ones reported). Raises :class:`PrepareError` if never found: for a
    chosen dance ``subject``, saying why its frames are not usable (``missing_why``)."""
    present = np.array([lm is not None for lm in lms])
    cuts[1:] &= present[1:] & present[:-1]  # only cuts that split a run of detections matter (and are reported)
    if not present.any():
        if subject is not None and missing_why:
            counts: dict[str, int] = {}
            for why in missing_why.values():
                counts[why] = counts.get(why, 0) + 1
            raise PrepareError(f"{src.video}: person {subject} is usable in none of the {len(lms)} frames read "
                               f"(from frame {src.start}: " + ", ".join(f"{why} in {k}" for why, k in
                                                                       sorted(counts.items(), key=lambda c: -c[1]))
                               + "); choose another with --person N")
        what = "pose" if src.kind == "dance" else "face"
        raise PrepareError(f"{src.video}: no {what} detected in any of the {len(lms)} frames read "
                           f"(from frame {src.start}); is this the right --kind?")
    return present


def _face_clips(lms: list[np.ndarray | None], present: np.ndarray, cuts: np.ndarray, scan: _Scan, fps: float,
                start: int):
    """Face: the clip table (with identity letters), the per-frame crop boxes (source pixels; None where no
    face) and the crop settings."""
    aspect, height = scan.width / scan.height, scan.height
    boxes_u, breaks, face_cfg = _face_pass(lms, cuts, aspect, fps)
    boxes = [None if b is None else (b[0] * height, b[1] * height, b[2] * height) for b in boxes_u]
    rows = clip_rows(present, breaks, lambda i: "no face", start)
    sigs = {i: face_signature(lm, aspect) for i, lm in enumerate(lms) if lm is not None}
    _label_identities(rows, sigs, start)
    return rows, boxes, face_cfg


def _dance_clips(present: np.ndarray, cuts: np.ndarray, missing_why: dict[int, str], subject: int,
                 start: int) -> list[ClipRow]:
    """Dance: the clip table, split at cuts and where the subject is missing; identity = the person id."""
    breaks = {i: "cut" for i in np.flatnonzero(cuts)}
    rows = clip_rows(present, breaks, lambda i: missing_why.get(i, "no person"), start)
    for r in rows:
        r.identity = str(subject)
    return rows


def _leading_gap(rows: list[ClipRow], missing_why: dict[int, str], start: int) -> ClipRow | None:
    """Dance: a row for the frames read before the first clip (None when it starts at the first frame), saying
    why none of them is in a clip (``missing_why`` per frame read, counted)."""
    if not rows or rows[0].start <= start:
        return None
    counts: dict[str, int] = {}
    for i in range(rows[0].start - start):
        why = missing_why.get(i, "no person")
        counts[why] = counts.get(why, 0) + 1
    why = ", ".join(f"{k} in {v}" for k, v in sorted(counts.items(), key=lambda c: -c[1]))
    return ClipRow(start, rows[0].start, f"before the first clip: {why}", identity=rows[0].identity)


def _keep_long_clips(rows: list[ClipRow], min_clip_frames: int, video: Path, notes: list[str],
                     log: Callable[[str], None] | None) -> list[ClipRow]:
    """Mark clips shorter than ``min_clip_frames`` dropped (``dataset = None``; the kept get a placeholder filled
    in pass 2), say so in ``notes``, and return the kept ones. Raises :class:`PrepareError` when none is left."""
    for r in rows:
        r.dataset = (0, 0)  # kept (filled in pass 2) unless dropped below
    _drop_short(rows, min_clip_frames)
    kept = [r for r in rows if r.dataset is not None]
    dropped = [r for r in rows if r.dataset is None]
    if dropped:
        notes.append(_say(f"dropped {len(dropped)} clip(s) shorter than {min_clip_frames} frames "
                          f"({sum(r.length for r in dropped)} frames): "
                          + ", ".join(f"{r.start}-{r.end - 1}" for r in dropped[:10])
                          + (" ..." if len(dropped) > 10 else ""), log))
    if not kept:
        raise PrepareError(f"{video}: no clip of at least {min_clip_frames} frames with the subject "
                           f"({len(rows)} shorter clip(s)); lower --min-clip-frames to keep them")
    return kept


def _dance_crop(lms: list[np.ndarray | None], kept: list[ClipRow], src: _Source, scan: _Scan, size: int,
                min_subject_fraction: float, notes: list[str], log: Callable[[str], None] | None):
    """Dance: the one fixed crop box for every frame (list of n), around the subject's motion over the kept
    clips. Refuses (PrepareError) or warns when the subject is small in it; notes its size and any padding."""
    width, height, start, video = scan.width, scan.height, src.start, src.video
    kept_lms = [lms[i - start] for r in kept for i in range(r.start, r.end)]
    box, person_h = _dance_box(kept_lms, width, height)
    frac = person_h / box[2]
    size_msg = (f"the subject is {person_h:.0f} px tall, {frac:.0%} of the {box[2]:.0f} px crop "
                f"({frac * size:.0f} px at {size}px)")
    if frac < min_subject_fraction:
        raise PrepareError(f"{video}: {size_msg}, below the {min_subject_fraction:.0%} this needs (the person "
                           f"moves over too wide a range, or is far away); use --start/--max-frames for a "
                           f"part where they stay in one place, or --min-subject 0 to accept it")
    if frac < SUBJECT_WARN_FRACTION:
        warnings.warn(f"{video}: {size_msg}: small for a model (below {SUBJECT_WARN_FRACTION:.0%})",
                      stacklevel=3)   # attributed to prepare_video's caller
        notes.append(f"warning: {size_msg}: small for a model (below {SUBJECT_WARN_FRACTION:.0%})")
    else:
        notes.append(_say(size_msg, log))
    pad = _outside(box, width, height)
    if pad:
        notes.append(_say(f"the crop extends up to {pad} px beyond the frame: padded by reflection "
                          f"(mirrored image, not repeated border pixels)", log))
    return [box] * len(scan.diffs)


def _note_face_padding(boxes: list, kept: list[ClipRow], scan: _Scan, start: int, notes: list[str],
                       log: Callable[[str], None] | None) -> None:
    """Face: say in ``notes`` in how many kept frames the crop leaves the frame (padded by reflection)."""
    pads = [_outside(boxes[i - start], scan.width, scan.height) for r in kept for i in range(r.start, r.end)]
    if max(pads) > 0:
        notes.append(_say(f"the face crop extends beyond the frame in {sum(p > 0 for p in pads)} of "
                          f"{len(pads)} frames (up to {max(pads)} px): padded by reflection", log))


@dataclasses.dataclass
class _Written:
    """What pass 2 wrote: source frames without the subject, and per dataset frame its source frame and box."""
    missing: list[int] = dataclasses.field(default_factory=list)
    source_frames: list[int] = dataclasses.field(default_factory=list)
    boxes: list[list[float]] = dataclasses.field(default_factory=list)   # x0, y0, side rounded to 0.01 px


def _add_frame(writer: DatasetWriter, flow_est: FlowEstimator, frame: np.ndarray, olm: np.ndarray,
               prev: np.ndarray | None, row: ClipRow, src_i: int, mask: np.ndarray | None = None) -> None:
    """Append one frame to the dataset: a new clip (no flow) at the clip's first frame, else with the backward
    flow from ``prev``; keep ``row.dataset`` (its dataset frame range) up to date."""
    if src_i == row.start:
        writer.begin_clip()
        row.dataset = (writer.manifest.num_frames, writer.manifest.num_frames)
        writer.add(frame, olm, mask=mask)
    else:
        flow, conf = flow_est(prev, frame)
        writer.add(frame, olm, flow.astype(np.float16), conf, mask=mask)
    row.dataset = (row.dataset[0], writer.manifest.num_frames)


def _second_pass(src: _Source, scan: _Scan, lms: list, boxes: list, clip_of: dict[int, ClipRow], size: int,
                 writer: DatasetWriter, flow_est: FlowEstimator, segment=None) -> _Written:
    """Pass 2: decode again; for each frame of a kept clip crop + resize to ``size``, map its landmarks into the
    crop, add it with the flow from the previous written frame and its person mask (``segment(frame)``). Raises :class:`PrepareError` when the decoder
    gives other frames than in pass 1."""
    out = _Written()
    n, seen, prev = len(scan.diffs), 0, None
    with src.bar("2/2 frames+flow") as pbar:
        for src_i, rgb in src.frames(pbar):
            j = src_i - src.start
            if j >= n or rgb.shape[:2] != (scan.height, scan.width):
                raise PrepareError(f"{src.video}: decoding differs between the two passes (frame {src_i})")
            seen += 1
            lm = lms[j]
            if lm is None:
                writer.note_missing(src_i)
                out.missing.append(src_i)
                prev = None
                continue
            row = clip_of.get(j)
            if row is None:  # a dropped clip
                prev = None
                continue
            box = tuple(float(v) for v in boxes[j])
            frame = crop_resize(rgb, box, size)
            _add_frame(writer, flow_est, frame, map_landmarks(lm, box, scan.width, scan.height, src.kind), prev,
                       row, src_i, None if segment is None else segment(frame))
            prev = frame
            out.source_frames.append(src_i)
            out.boxes.append([round(v, 2) for v in box])
        if seen != n:
            raise PrepareError(f"{src.video}: decoding differs between the two passes ({n} then {seen} frames)")
    return out


def _clip_of(kept: list[ClipRow], start: int) -> dict[int, ClipRow]:
    """Frame index (from ``start``) -> the kept clip it belongs to."""
    return {i - start: r for r in kept for i in range(r.start, r.end)}


def _manifest_extra(src: _Source, scan: _Scan, cut_frames: list[int], written: _Written, boxes: list,
                    kept: list[ClipRow], rows: list[ClipRow], people: list[dict], subject: int | None,
                    face_cfg: FaceCropConfig | None) -> dict:
    """``manifest.extra`` of a prepared dataset: the source, the shots, the crop per dataset frame, the clip
    table, the people (dance) and the coordinate and flow conventions."""
    kind, height = src.kind, scan.height
    if kind == "dance":
        crop = {"mode": "fixed", "box": written.boxes[0], "margin": DANCE_MARGIN,
                "box_height_units": [v / height for v in boxes[kept[0].start - src.start]]}
    else:
        crop = {**face_cfg.to_dict(), "mode": "tracked"}   # models.posenorm.FaceCrop with these settings
    return {
        "producer": "posecast prepare",
        "source_fps": src.info.fps,
        "source_size": [scan.width, height],
        "start": src.start,
        "frames_read": len(scan.diffs),
        "cuts": cut_frames,
        "source_frame_indices": written.source_frames,   # dataset frame i <- source frame source_frame_indices[i]
        "crop": {
            **crop,
            "aspect": scan.width / height,
            "format": "boxes: x0, y0, side in source pixels (square; outside the frame: reflect padding)",
            "padding": "reflect",
            "boxes": written.boxes,           # one per dataset frame
        },
        "clip_table": [r.to_dict() for r in rows],
        **({"people": people, "person": subject} if kind == "dance" else {}),
        "landmark_coords": "x, y normalised to the output frame (not clipped); 3rd = "
                           + ("visibility" if kind == "dance" else "z scaled like x"),
        "flow": {"method": "opencv DIS preset MEDIUM, backward", "fb_threshold_px": FB_THRESHOLD_PX},
        "masks": "MediaPipe selfie segmentation (general model) on each written frame, every person, 0..255",
    }


# ------------------------------------------------------------------------------------------------------------

def prepare_video(video, out_dir, *, kind: str, size: int = 256, start: int = 0, max_frames: int | None = None,
                  overwrite: bool = False, progress: bool = True, person: int | None = None,
                  max_people: int = MAX_PEOPLE, min_clip_frames: int = MIN_CLIP_FRAMES,
                  min_subject_fraction: float = SUBJECT_MIN_FRACTION,
                  log: Callable[[str], None] | None = None) -> PrepareReport:
    """Build a dataset folder ``out_dir`` from ``video`` (see module docstring). Returns a :class:`PrepareReport`.

    ``person`` (dance): the id of the person to track, as listed in ``report.people`` (default: the largest,
    most central, most often seen); ``max_people``: people looked for per frame. ``min_clip_frames``: shorter
    clips are dropped. ``min_subject_fraction`` (dance): refuse when the person's median height is below this
    fraction of the crop side (a warning below ``SUBJECT_WARN_FRACTION``). ``log``: where decisions are said
    (default: nowhere; ``posecast prepare`` prints them; they are also in ``report.notes``).

    Raises :class:`PrepareError` for bad arguments or an unusable video, ``FileExistsError`` when ``out_dir``
    exists and ``overwrite`` is false.
    """
    t0 = time.perf_counter()
    video, out = Path(video), Path(out_dir)
    _check_args(kind, size, start, max_frames, min_clip_frames)
    size, start = int(size), int(start)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (--overwrite replaces it)")
    src = _Source(video, _probe(video), kind, start, max_frames, progress)
    notes: list[str] = []

    # ---- pass 1: landmarks in source-normalised coordinates, the subject, shot changes ----
    scan = _first_pass(src, max_people)
    n = len(scan.diffs)
    cuts = _shot_cuts(scan)
    lms, people, subject, missing_why = scan.face_lms, [], None, {}
    if kind == "dance":
        people, subject = _choose_subject(src, scan, person, notes, log)
        lms, missing_why = _subject_landmarks(scan.dets, subject)
    present = _subject_present(lms, cuts, src, subject, missing_why)

    # ---- clips and crops ----
    face_cfg = None
    if kind == "face":
        rows, boxes, face_cfg = _face_clips(lms, present, cuts, scan, src.info.fps, start)
    else:
        rows = _dance_clips(present, cuts, missing_why, subject, start)
    kept = _keep_long_clips(rows, min_clip_frames, video, notes, log)
    if kind == "dance":
        gap = _leading_gap(rows, missing_why, start)
        rows = ([gap] if gap else []) + rows     # (not a clip: listed as dropped, with why)
        boxes = _dance_crop(lms, kept, src, scan, size, min_subject_fraction, notes, log)
    else:
        _note_face_padding(boxes, kept, scan, start, notes, log)

    # ---- pass 2: crop, resize, flow, write ----
    clip_of = _clip_of(kept, start)
    flow_est = FlowEstimator(fb_threshold_px=FB_THRESHOLD_PX)
    cut_frames = [start + int(i) for i in np.flatnonzero(cuts)]
    with DatasetWriter(out, kind=kind, height=size, width=size, fps=src.info.fps, num_landmarks=scan.num_landmarks,
                       source=str(video), overwrite=overwrite) as writer, PersonSegmenter() as segment:
        written = _second_pass(src, scan, lms, boxes, clip_of, size, writer, flow_est, segment)
        writer.manifest.extra = _manifest_extra(src, scan, cut_frames, written, boxes, kept, rows, people, subject,
                                                face_cfg)
    clips = [(int(a), int(b)) for a, b in writer.manifest.clips]  # final once the writer is closed
    absent = "no person" if kind == "dance" else "no face"
    return PrepareReport(frames_read=n, frames_written=len(written.source_frames), missing=written.missing,
                         clips=clips, out=out, seconds=time.perf_counter() - t0, cuts=list(cut_frames),
                         clip_table=rows, people=people, person=subject, notes=notes,
                         missing_why={i: missing_why.get(i - start, absent) for i in written.missing})
