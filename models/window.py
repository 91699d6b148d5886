"""Where a generator draws: its window of the frame and the head window inside it, placed, cut and pasted — one
home, used by training, evaluation and the live session alike, so that all three draw the very same pixels.

* **The window** (``CropBox``): an integer-pixel rectangle of the model frame. Whole-frame generators draw in the
  whole frame; person-crop generators (models/lite.py) in a fixed-size window that follows the person, composited
  onto the background plate. Its position is snapped to ``CROP_STRIDE`` pixels (the generator's input stride, so
  a move shifts its features by whole cells) and smoothed over time (``BoxTracker``).
* **Smoothing** (``LowPass``): the one causal filter every placement goes through: the model window's centre here
  (its weight per frame, ``ModelConfig.window_smoothing``) and the stabilised face crop a face dataset's frames
  are cut with (models/posenorm.py ``FaceCrop``, its time constants in seconds turned into weights per frame at
  the video's frame rate by ``LowPass.from_time_constant``).
* **The head window**: a ``head_side`` x ``head_side`` square inside the window, on a pose's head or a face's
  eyes and lips (``head_box``): what lite's head branch refines and the face discriminator judges. One size rule,
  ``default_head_side``.
* **Placement** (``Placer``): both, frame by frame, for one stream (a training clip or a live session);
  ``place_clips`` for a batch of clips.
* **Cut and paste** (``cut``, ``paste`` for numpy arrays and torch tensors alike; ``cut_batch``, ``paste_batch``,
  ``cut_clips`` for batches of torch tensors).

Coordinates follow models/render.py: landmarks are ``(K, 3)`` with x, y normalised to [0, 1] of the frame.
Imports numpy (and cv2 through models.crop) only: loaded by the live server; torch is imported where a torch
function needs it.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from .crop import FACE_DETAIL_POINTS, VISIBLE, head_points
from .landmarks import FACE_NUM_LANDMARKS

CROP_STRIDE = 4              # window positions are multiples of this many pixels (lite's stride-4 input conv)
SMOOTHING = 0.6              # the window's centre: weight of its previous position in the per-frame moving average
                             #   (a model's own: ModelConfig.window_smoothing)


class LowPass:
    """A causal one-pole low-pass on a vector: ``value <- keep * value + (1 - keep) * x`` per frame; the first
    sample (and the first after ``reset``) is taken as it is. ``keep`` is the previous value's weight in [0, 1)."""

    def __init__(self, keep: float):
        if not 0.0 <= keep < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {keep}")
        self.keep = float(keep)
        self.value: np.ndarray | None = None

    @classmethod
    def from_time_constant(cls, tau_s: float, fps: float) -> "LowPass":
        """The filter with time constant ``tau_s`` seconds on frames ``1 / fps`` apart (keep = exp(-1 / (fps tau)))."""
        return cls(math.exp(-1.0 / max(fps * tau_s, 1e-9)))

    def reset(self) -> None:
        """Start over: the next sample is taken as it is."""
        self.value = None

    def update(self, x) -> np.ndarray:
        x = np.asarray(x, np.float64)
        self.value = x.copy() if self.value is None else self.keep * self.value + (1.0 - self.keep) * x
        return self.value


def default_head_side(size: int, kind: str = "dance") -> int:
    """Side in pixels of the head window of a ``size`` px model, a multiple of 8, at least 8: dance, the head of a
    body: size / 8; face, the eyes and the mouth of a face crop: 3/8 of the size."""
    return max(8, (size * 3 // 8 if kind == "face" else size // 8) // 8 * 8)


def detail_points(kind: str, landmarks: np.ndarray) -> np.ndarray | None:
    """(N, 2) normalised points the head window centres on: the visible head landmarks of a pose (0-10), the
    eyes and lips of a face mesh; None when there are none."""
    if kind == "face":
        lm = np.asarray(landmarks, np.float32)
        pts = lm[list(FACE_DETAIL_POINTS), :2] if len(lm) >= FACE_NUM_LANDMARKS else None
    else:
        pts = head_points("dance", landmarks)
    pts = None if pts is None else pts[np.isfinite(pts).all(1)]
    return pts if pts is not None and len(pts) else None


@dataclasses.dataclass(frozen=True)
class CropBox:
    """An integer-pixel window ``[y0, y0 + height) x [x0, x0 + width)`` of a frame."""

    x0: int
    y0: int
    height: int
    width: int

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.height), slice(self.x0, self.x0 + self.width)

    def inner(self, x0: int, y0: int, side: int) -> "CropBox":
        """The ``side`` x ``side`` window at (x0, y0) of this one, in frame pixels."""
        return CropBox(self.x0 + x0, self.y0 + y0, side, side)


def person_centre(landmarks: np.ndarray) -> np.ndarray | None:
    """(x, y) normalised centre of a pose: the middle of the present landmarks' bounding box; None when none is
    present. The bounding box (not the mean) keeps the crop steady while limbs swing."""
    lm = np.asarray(landmarks, np.float32)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(lm[:, :2]).all(1) & ((lm[:, 2] >= VISIBLE) if lm.shape[1] > 2 else True)
    if not ok.any():
        return None
    pts = lm[ok, :2]
    return (pts.min(0) + pts.max(0)) * 0.5


class BoxTracker:
    """Causal crop placement: ``update(landmarks) -> CropBox`` for one stream of frames (a training clip or a
    live session). The centre follows the person through a ``LowPass`` (``smoothing`` = weight of the old
    position), the box is snapped to ``CROP_STRIDE`` and clamped inside the frame. Frames without a
    person keep the last box (the frame centre before the first one)."""

    def __init__(self, frame_size: int, crop_height: int, crop_width: int, smoothing: float = SMOOTHING):
        if not (0 < crop_height <= frame_size and 0 < crop_width <= frame_size):
            raise ValueError(f"crop {crop_height}x{crop_width} must fit the {frame_size}px frame")
        self.frame_size, self.crop_height, self.crop_width = frame_size, crop_height, crop_width
        self.smoothing = smoothing
        self._centre = LowPass(smoothing)       # the smoothed centre in frame pixels

    def reset(self) -> None:
        self._centre.reset()

    def _box(self, centre_px: np.ndarray) -> CropBox:
        S, h, w = self.frame_size, self.crop_height, self.crop_width
        x0 = int(np.clip(round((centre_px[0] - w / 2) / CROP_STRIDE) * CROP_STRIDE, 0, S - w))
        y0 = int(np.clip(round((centre_px[1] - h / 2) / CROP_STRIDE) * CROP_STRIDE, 0, S - h))
        return CropBox(x0, y0, h, w)

    def update(self, landmarks: np.ndarray | None) -> CropBox:
        c = None if landmarks is None else person_centre(landmarks)
        if c is not None:
            self._centre.update(c.astype(np.float64) * self.frame_size)
        centre = self._centre.value
        return self._box(centre if centre is not None else np.full(2, self.frame_size / 2.0))


def head_box(landmarks: np.ndarray | None, window: CropBox, frame_size: int, side: int,
             kind: str = "dance") -> tuple[int, int]:
    """(x0, y0) in ``window`` pixels of the ``side`` x ``side`` head window: centred on ``detail_points`` (a
    pose's head, a face's eyes and lips), clamped inside ``window``; at its top centre when there are none.
    Stateless, so the live session and training place it identically."""
    pts = None if landmarks is None else detail_points(kind, landmarks)
    if pts is None:
        cx, cy = window.width / 2.0, side / 2.0
    else:
        c = pts.mean(0) * frame_size
        cx, cy = c[0] - window.x0, c[1] - window.y0
    x0 = int(np.clip(round(cx - side / 2.0), 0, window.width - side))
    y0 = int(np.clip(round(cy - side / 2.0), 0, window.height - side))
    return x0, y0


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one frame is drawn: the generator's window in the frame, and (models with a head window) the head
    window's (x0, y0) in that window."""

    box: CropBox
    head: tuple[int, int] | None = None

    def head_window(self, side: int) -> CropBox:
        """The head window in frame pixels."""
        return self.box.inner(*self.head, side)


class Placer:
    """One stream's placements, frame by frame: ``update(landmarks) -> Placement``. Whole-frame generators draw in
    the whole frame; a crop smaller than the frame follows the person (``BoxTracker``); ``head_side`` > 0 also
    places the head window. ``reset()`` starts the stream over (a new clip, a session's reset)."""

    def __init__(self, size: int, crop_hw: tuple[int, int], head_side: int = 0, smoothing: float = SMOOTHING,
                 kind: str = "dance"):
        self.size, self.crop_hw, self.head_side, self.smoothing = size, tuple(crop_hw), head_side, smoothing
        self.kind = kind
        self.follows = self.crop_hw != (size, size)    # a person crop (else the window is the whole frame)
        self._tracker = BoxTracker(size, *self.crop_hw, smoothing=smoothing) if self.follows else None
        self._whole = CropBox(0, 0, size, size)

    @classmethod
    def of(cls, cfg, head_side: int | None = None) -> "Placer":
        """The placer of a model config (models.presets.ModelConfig); ``head_side`` overrides the model's own
        (the face discriminator's window on models without a head branch)."""
        return cls(cfg.size, cfg.crop_hw, cfg.head_side if head_side is None else head_side, cfg.window_smoothing,
                   cfg.kind)

    def reset(self) -> None:
        if self._tracker is not None:
            self._tracker.reset()

    def update(self, landmarks: np.ndarray | None) -> Placement:
        box = self._tracker.update(landmarks) if self._tracker is not None else self._whole
        head = head_box(landmarks, box, self.size, self.head_side, self.kind) if self.head_side else None
        return Placement(box, head)

    def first(self) -> Placement:
        """Where a stream's window stands before any person was seen (a fresh placer's, left unchanged)."""
        return Placer(self.size, self.crop_hw, self.head_side, self.smoothing, self.kind).update(None)


def place_clips(placer: Placer, landmarks, batch: int, frames: int) -> list[list[Placement]]:
    """(B, T) placements of ``batch`` clips of ``frames`` frames, each from a fresh stream, as a live session
    places them from its first frame on. ``landmarks``: (B, T, K, 3) array or tensor; None only for whole-frame
    models."""
    if placer.follows and landmarks is None:
        raise ValueError("a model with a person crop places its window by the landmarks: pass them")
    rows = []
    for b in range(batch):
        placer.reset()
        rows.append([placer.update(None if landmarks is None else _numpy(landmarks[b, t])) for t in range(frames)])
    placer.reset()
    return rows


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


# -- the window's size ------------------------------------------------------------------------------------------

def typical_crop(frame_size: int) -> tuple[int, int]:
    """(height, width) of the person crop of a full-body dancer filling most of a frame (the built-in synthetic
    dancer's: the frame's height x 13/16 of its width): what benchmarks of an untrained crop model use."""
    return frame_size, (frame_size * 13 // 16) // 16 * 16


def crop_size_for(landmarks: np.ndarray, frame_size: int, aspect: float = 0.75, coverage: float = 98.0,
                  margin: float = 0.12, multiple: int = 16) -> tuple[int, int]:
    """(height, width) in pixels of a person crop that holds the person in ``coverage`` % of the frames of
    ``landmarks`` (N, K, 3), with ``margin`` to spare on each side, width = ``aspect`` x height (wider where the
    height is capped at the frame), rounded up to ``multiple`` and capped at the frame."""
    lm = np.asarray(landmarks, np.float32)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(lm[..., :2]).all(-1) & (lm[..., 2] >= VISIBLE)
    x = np.where(ok, lm[..., 0], np.nan)
    y = np.where(ok, lm[..., 1], np.nan)
    seen = ok.any(1)
    if not seen.any():
        raise ValueError("no frame has a visible landmark: cannot size the person crop")
    with np.errstate(invalid="ignore"):
        h = np.nanmax(y[seen], 1) - np.nanmin(y[seen], 1)
        w = np.nanmax(x[seen], 1) - np.nanmin(x[seen], 1)
    need_h = float(np.percentile(h, coverage)) * (1 + 2 * margin) * frame_size
    need_w = float(np.percentile(w, coverage)) * (1 + 2 * margin) * frame_size
    up = lambda v: min(frame_size, int(np.ceil(v / multiple) * multiple))  # noqa: E731
    height = up(max(need_h, need_w / aspect))
    return height, up(max(need_w, height * aspect))  # a frame-capped height does not narrow the window


# -- cut and paste ---------------------------------------------------------------------------------------------

def cut(x, box: CropBox):
    """The window of an (..., H, W) numpy array or torch tensor: a view."""
    ys, xs = box.slices()
    return x[..., ys, xs]


def paste(canvas, window, box: CropBox) -> None:
    """Write ``window`` (..., h, w) into ``canvas`` (..., H, W) at ``box``, in place (numpy or torch)."""
    ys, xs = box.slices()
    canvas[..., ys, xs] = window


def cut_batch(xs, boxes: list[CropBox]):
    """(B, C, S, S) torch tensor -> (B, C, h, w): each item's own window (boxes: B CropBoxes of one size). A list
    of (B, C_i, S, S) tensors gives their windows concatenated along the channels, (B, sum C_i, h, w)."""
    import torch

    xs = [xs] if torch.is_tensor(xs) else xs
    if len(boxes) != len(xs[0]):
        raise ValueError(f"{len(boxes)} windows for a batch of {len(xs[0])}")
    if len(boxes) == 1:
        return torch.cat([cut(x, boxes[0]) for x in xs], 1)
    return torch.stack([torch.cat([cut(x[i], b) for x in xs], 0) for i, b in enumerate(boxes)])


def paste_batch(canvas, windows, boxes: list[CropBox]):
    """A copy of ``canvas`` (B, C, S, S) with each item's window replaced by ``windows`` (B, C, h, w)."""
    out = canvas.clone()
    for i, b in enumerate(boxes):
        paste(out[i], windows[i], b)
    return out


def cut_clips(x, boxes: list[list[CropBox]]):
    """(B, T, C, S, S) torch tensor -> (B, T, C, h, w): every frame's window (boxes: (B, T) CropBoxes of one
    size). Differentiable, with a backward that pastes every window's gradient into one zeroed (B, T, C, S, S)
    tensor (autograd's own, through B x T selections and slices, zero-fills a whole clip for each frame: ~20 ms of
    a 256² training iteration)."""
    import torch

    if x.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing():
        return _cut_clips_function().apply(x, boxes)
    return _stack_windows(x, boxes)


def _stack_windows(x, boxes: list[list[CropBox]]):
    import torch

    return torch.stack([torch.stack([cut(x[b, t], bx) for t, bx in enumerate(row)]) for b, row in enumerate(boxes)])


@functools.cache
def _cut_clips_function():
    """The autograd Function behind :func:`cut_clips` (made on first use: this module does not import torch)."""
    import torch

    class CutClips(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, boxes):
            ctx.shape, ctx.boxes = x.shape, boxes
            return _stack_windows(x, boxes)

        @staticmethod
        def backward(ctx, grad):
            out = grad.new_zeros(ctx.shape)
            for b, row in enumerate(ctx.boxes):
                for t, bx in enumerate(row):
                    paste(out[b, t], grad[b, t], bx)
            return out, None

    return CutClips
