"""Clips of a dataset as tensors at the model's resolution, with their label maps rendered on the fly.

Label maps come from ``models.render.render_labels``: the very renderer the live server uses.
"""

from __future__ import annotations

import dataclasses
import warnings

import cv2
import numpy as np
import torch

from models.crop import PERSON_MARGIN, feature_region, head_region, limb_region, person_region
from models.render import render_labels
from models.window import person_centre

from .dataset import Dataset, DatasetError


@dataclasses.dataclass
class Augment:
    limb_drop_prob: float = 0.05   # pose: probability of dropping each limb from the label map (vid2vid: 0.05)
    head_jitter_px: float = 1.0    # pose: Gaussian noise on head landmarks, pixels at the model resolution
    face_jitter_px: float = 0.5    # face: Gaussian noise on every landmark, pixels
    # A clip turned, scaled and moved as a whole (one similarity transform of its frames, flow, masks and
    # landmarks alike, about the subject's centre in its first frame), with probability ``tilt_prob``: poses at
    # angles, sizes and places the footage never shows (Megamind's held-out shot tilts the head ~17 degrees from
    # every training frame with its expression). Frames are mirrored at the border; flow and masks are empty there.
    tilt_prob: float = 0.0
    tilt_deg: float = 20.0         # rotation uniform in +-tilt_deg degrees
    tilt_scale: float = 0.1        # scale exp(uniform in +-tilt_scale)
    tilt_shift: float = 0.05       # shift uniform in +-tilt_shift x the side, each axis


def similarity_warp(size: int, matrix: np.ndarray, frame: np.ndarray, flow: np.ndarray, conf: np.ndarray,
                    mask: np.ndarray | None, landmarks: np.ndarray, *, z_scales: bool = False) -> tuple:
    """Move one frame's data by the 2x3 similarity ``matrix`` (pixel centres of the ``size`` x ``size`` frame, as
    cv2.warpAffine takes it: source -> destination): the frame (mirrored at the border), the backward flow
    (resampled, and its vectors turned and scaled with it: both frames of a pair move alike), its confidence (zero
    where the frame had no pixels, and one pixel inside that, where the flow mixes with the border's zeros) and the
    person mask (zero where the frame had none), and the normalised landmarks (a landmark at x maps to the pixel
    coordinate x * size - 0.5, as models/render.py draws it; NaN, missing, stays NaN; ``z_scales``: the third
    column is a face's depth, scaled with the frame, not a pose's visibility)."""
    dsize = (size, size)
    lin = matrix[:, :2].astype(np.float32)
    frame = cv2.warpAffine(frame, matrix, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    flow = cv2.warpAffine(flow, matrix, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT) @ lin.T
    conf = cv2.erode(cv2.warpAffine(conf, matrix, dsize, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT),
                     np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    if mask is not None:
        mask = cv2.warpAffine(mask, matrix, dsize, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    lm = np.array(landmarks, np.float32, copy=True)
    lm[:, :2] = ((lm[:, :2] * size - 0.5) @ lin.T + matrix[:, 2].astype(np.float32) + 0.5) / size
    if z_scales:
        lm[:, 2] *= float(np.sqrt(abs(np.linalg.det(lin))))
    return frame, np.ascontiguousarray(flow, np.float32), conf, mask, lm


def parse_frame_ranges(text: str | None) -> tuple[tuple[int, int], ...] | None:
    """``"200:270"`` -> ((200, 270),); ``":200,400:"`` -> ((0, 200), (400, <end>)); None/empty -> None (all)."""
    if not text:
        return None
    out = []
    for part in text.split(","):
        a, sep, b = part.strip().partition(":")
        if not sep:
            raise ValueError(f"frame range {part!r} must look like START:STOP")
        try:
            start = int(a) if a else 0
            stop = int(b) if b else 1 << 62
        except ValueError:
            raise ValueError(f"frame range {part!r} must look like START:STOP (integers)") from None
        if start < 0 or stop <= start:
            raise ValueError(f"frame range {part!r} is empty or negative")
        out.append((start, stop))
    return tuple(out)


def parse_clip_numbers(text: str | None) -> list[int] | None:
    """``"0,2"`` -> [0, 2]; None/empty -> None (every clip)."""
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--clips {text!r} must be clip numbers separated by commas (e.g. 0,2)") from None


def subject_mask(mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(S, S) uint8 {0, 1}: the parts of a person mask (uint8 0..255, everyone in the frame) that reach into the
    subject's ``region`` (its grown label-map hull): the whole subject, hair, neck and shoulders included, without
    the other people the mask also marks (unless they touch the subject)."""
    on = (mask >= 128).astype(np.uint8)
    n, parts = cv2.connectedComponents(on, connectivity=8)
    keep = np.unique(parts[(region > 0) & (on > 0)])
    return np.isin(parts, keep[keep > 0]).astype(np.uint8)


UNSEEN_WARN = 0.01   # background_plate warns when at least this share of the frame was never seen


class BackgroundUnseenWarning(UserWarning):
    """Part of the background is behind a person in every frame: the plate there is a guess."""


PLATE_BIN = 16   # plate samples within half this many levels of each other (every channel) show the same thing


def plurality(stack: np.ndarray, bin_width: int = PLATE_BIN, proposals: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of ``stack`` (N, H, W, 3) float in [0, 255] (NaN: no sample), the largest group of samples within
    ``bin_width / 2`` of a centre in every channel: its median and its size ((H, W, 3), NaN where no sample; (H, W)).

    A static background is what a pixel shows most often, not necessarily in more than half the samples: where a
    person the masks missed covers it in more frames than not, the median takes their colours, while the
    background's samples, all alike, still form the largest group (a person moves and changes). The centres are
    proposed by colour histograms (bins of ``bin_width`` levels a channel, on two grids half a bin apart; the
    ``proposals`` fullest bins of each, centred on their samples' mean); every sample near a centre then counts for
    it, so a group that a bin's edge splits is still counted whole."""
    n, H, W = stack.shape[:3]
    L = (255 + bin_width // 2) // bin_width + 1       # levels a channel, the shifted grid's top bin included
    codes = L ** 3
    out = np.full((H, W, 3), np.nan, np.float32)
    count = np.zeros((H, W), np.int64)
    rows = max(1, 4_000_000 // (W * codes))           # bounds the per-pixel histograms to ~32 MB
    for y in range(0, H, rows):
        part = stack[:, y:y + rows]
        h = part.shape[1]
        ok = np.isfinite(part[..., 0]).reshape(n, -1)
        filled = np.nan_to_num(part).reshape(n, -1, 3)
        weight = ok.astype(np.float32)
        pixel = np.arange(h * W) * codes
        best_count, best_centre = np.zeros(h * W, np.int64), np.zeros((h * W, 3), np.float32)

        def near(centre: np.ndarray) -> np.ndarray:
            return ok & (np.abs(filled - centre[None]).max(-1) <= bin_width / 2)

        for shift in (0, bin_width // 2):
            q = np.clip((filled + shift) // bin_width, 0, L - 1).astype(np.int64)
            code = (q[..., 0] * L + q[..., 1]) * L + q[..., 2]                  # (N, P)
            hist = np.bincount((code + pixel)[ok], minlength=h * W * codes).reshape(h * W, codes)
            for bin_ in np.argpartition(hist, -proposals, axis=1)[:, -proposals:].T:
                member = weight * (code == bin_[None])
                centre = np.einsum("np,npc->pc", member, filled) / np.maximum(member.sum(0), 1)[:, None]
                c = near(centre).sum(0)
                better = c > best_count
                best_count[better], best_centre[better] = c[better], centre[better]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # (no sample at all: NaN)
            mid = np.nanmedian(np.where(near(best_centre)[..., None], filled, np.nan), axis=0)
        out[y:y + h] = mid.reshape(h, W, 3)
        count[y:y + h] = best_count.reshape(h, W)
    return out, count


class ClipSource:
    """Frames, label maps and ground-truth flow of a dataset, resized to ``size``×``size``."""

    def __init__(self, dataset: Dataset, size: int, frame_ranges: tuple[tuple[int, int], ...] | None = None):
        self.ds = dataset
        self.size = size
        self.kind = dataset.kind
        clips = dataset.clips
        if frame_ranges is not None:
            clips = [(max(s, a), min(e, b)) for s, e in clips for a, b in frame_ranges if min(e, b) > max(s, a)]
        if not clips:
            raise DatasetError(f"{dataset.path}: no frames in the selected ranges {frame_ranges}")
        self.clips = clips
        m = dataset.manifest
        self._scale = (size / m.width, size / m.height)

    @property
    def num_frames(self) -> int:
        return sum(b - a for a, b in self.clips)

    def windows(self, length: int) -> list[tuple[int, int]]:
        """Every [start, start+length) that lies inside one clip."""
        return [(s, s + length) for a, b in self.clips for s in range(a, b - length + 1)]

    def longest_clip(self) -> int:
        return max(b - a for a, b in self.clips)

    def _resize(self, img: np.ndarray, interp=cv2.INTER_AREA) -> np.ndarray:
        if img.shape[0] == self.size and img.shape[1] == self.size:
            return img
        return cv2.resize(img, (self.size, self.size), interpolation=interp)

    def _others(self, index: int) -> np.ndarray:
        """(S, S) bool: where the dataset's mask of frame ``index`` has anyone, grown by 2 % of the side."""
        m = self._resize(np.asarray(self.ds.masks[index])) > 64
        r = max(1, round(0.02 * self.size))
        return cv2.dilate(m.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0

    def labels(self, index: int, rng: np.random.Generator | None = None, augment: Augment | None = None,
               landmarks: np.ndarray | None = None) -> np.ndarray:
        """(C, S, S) float32 label map of frame ``index`` (or of ``landmarks`` given for it)."""
        kw = {}
        if rng is not None and augment is not None:
            if self.kind == "dance":
                kw = dict(rng=rng, limb_drop_prob=augment.limb_drop_prob, head_jitter_px=augment.head_jitter_px)
            else:
                kw = dict(rng=rng, jitter_px=augment.face_jitter_px)
        lm = np.asarray(self.ds.landmarks[index]) if landmarks is None else landmarks
        return render_labels(self.kind, lm, self.size, self.size, **kw)

    def _tilt(self, start: int, rng: np.random.Generator, augment: Augment) -> np.ndarray | None:
        """The clip's similarity transform (``Augment.tilt_*``), 2x3 in pixels, or None (not this clip)."""
        if augment.tilt_prob <= 0 or rng.random() >= augment.tilt_prob:
            return None
        S = self.size
        lm = np.asarray(self.ds.landmarks[start], np.float32)
        centre = person_centre(lm) if self.kind == "dance" else np.nanmean(lm[:, :2], 0)  # a face's z: no visibility
        if centre is None or not np.isfinite(centre).all():
            centre = np.array([0.5, 0.5], np.float32)
        centre = centre * S - 0.5                              # pixel coordinates (models/render.py's convention)
        angle = rng.uniform(-augment.tilt_deg, augment.tilt_deg)
        scale = float(np.exp(rng.uniform(-augment.tilt_scale, augment.tilt_scale)))
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, scale)
        m[:, 2] += rng.uniform(-augment.tilt_shift, augment.tilt_shift, 2) * S
        return m

    def load(self, start: int, stop: int, seed: tuple[int, ...] | None = None,
             augment: Augment | None = None) -> dict[str, torch.Tensor]:
        """Frames start..stop-1 as tensors:
        labels (T, C, S, S) [0,1]; frames (T, 3, S, S) [-1,1]; flow (T, 2, S, S) px; conf (T, 1, S, S) [0,1];
        landmarks (T, K, 3) as stored (normalised to the frame; what crop-aware generators place their crop by);
        person, head, limbs, features (T, 1, S, S) {0, 1}: the person's, head's, limbs' and face features' regions
        (models/crop.py; head and limbs are empty for face data, whose features are its eyes and lips), from the
        unaugmented labels (what the losses weight and eval scores); person_mask (T, 1, S, S) {0, 1}: the subject's
        part of the dataset's person mask (:func:`subject_mask`), when it has masks.

        ``augment`` with ``seed`` (a sequence of ints): frame ``start + t`` is augmented from the random stream
        ``[*seed, t]``, its own (a frame's augmentation does not depend on which frames are loaded with it)."""
        tilt = None
        if augment is not None and seed is not None:     # the clip's own stream, apart from every frame's
            tilt = self._tilt(start, np.random.default_rng([*seed, 1 << 31]), augment)
        parts = [self._frame(i, None if augment is None or seed is None else np.random.default_rng([*seed, i - start]),
                             augment, tilt) for i in range(start, stop)]
        frames, flows, confs, labels, person, head, limbs, features, masks, lms = (np.stack(x) for x in zip(*parts))
        out = {
            "labels": torch.from_numpy(labels),
            "frames": torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0,
            "flow": torch.from_numpy(flows).permute(0, 3, 1, 2).contiguous(),
            "conf": torch.from_numpy(confs).unsqueeze(1).float() / 255.0,
            "landmarks": torch.from_numpy(lms),
            "person": torch.from_numpy(person).unsqueeze(1).float(),
            "head": torch.from_numpy(head).unsqueeze(1).float(),
            "limbs": torch.from_numpy(limbs).unsqueeze(1).float(),
            "features": torch.from_numpy(features).unsqueeze(1).float(),
        }
        if self.ds.masks is not None:            # the subject's part of the dataset's person masks, {0, 1}
            out = {"person_mask": torch.from_numpy(masks).unsqueeze(1).float(), **out}
        return out

    def _frame(self, i: int, rng: np.random.Generator | None, augment: Augment | None,
               tilt: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Everything :meth:`load` stacks, for frame ``i`` (mask: the subject's mask, or an empty placeholder),
        moved by the clip's ``tilt`` (:func:`similarity_warp`) when it has one."""
        ds = self.ds
        sx, sy = self._scale
        frame = self._resize(np.asarray(ds.frames[i]))
        flow = self._resize(np.asarray(ds.flow[i], np.float32), cv2.INTER_LINEAR) * np.float32((sx, sy))
        conf = self._resize(np.asarray(ds.flow_conf[i]), cv2.INTER_NEAREST)
        everyone = self._resize(np.asarray(ds.masks[i])) if ds.masks is not None else None
        lm = np.array(ds.landmarks[i], np.float32)
        if tilt is not None:
            frame, flow, conf, everyone, lm = similarity_warp(self.size, tilt, frame, flow, conf, everyone, lm,
                                                              z_scales=self.kind == "face")
        labels = self.labels(i, rng, augment, lm)
        clean = labels if augment is None else self.labels(i, landmarks=lm)
        person = person_region(clean)
        empty = np.zeros((self.size, self.size), np.uint8)
        head = head_region(self.kind, lm, self.size, self.size) if self.kind == "dance" else empty
        limbs = limb_region(lm, self.size, self.size) if self.kind == "dance" else empty
        features = feature_region(lm, self.size, self.size, kind=self.kind)
        mask = subject_mask(everyone, person) if everyone is not None else empty
        return frame, flow, conf, labels, person, head, limbs, features, mask, lm

    def background_plate(self, max_frames: int = 200, margin: float = PERSON_MARGIN,
                         warn_unseen: bool = False) -> torch.Tensor:
        """The static background of a fixed camera, (3, S, S) in [-1, 1]: per pixel, what the frames in which the
        person does not cover it show most often (:func:`plurality`).

        The person's region in a frame is the filled hull of its label map grown by ``margin`` x the frame side,
        so the estimate never sees the body even where the skeleton is thin; with the dataset's person masks
        (``masks.npy``: every person in the frame, not only the subject) their pixels, grown by 2 % of the side,
        are left out too, so passers-by leave no ghost. Pixels where no two frames agree (covered in every
        sampled frame but one, say), or where the largest group of alike samples is under a fifth of those seen,
        are inpainted from their surroundings. ``warn_unseen``: say so (:class:`BackgroundUnseenWarning`) when at
        least ``UNSEEN_WARN`` of the frame is behind a person in every frame sampled."""
        idx = [i for a, b in self.clips for i in range(a, b)]
        idx = [idx[k] for k in np.linspace(0, len(idx) - 1, min(max_frames, len(idx))).round().astype(int)]
        S = self.size
        stack = np.empty((len(idx), S, S, 3), np.float32)
        for k, i in enumerate(idx):
            frame = self._resize(np.asarray(self.ds.frames[i])).astype(np.float32)
            frame[person_region(self.labels(i), margin) > 0] = np.nan
            if self.ds.masks is not None:
                frame[self._others(i)] = np.nan
            stack[k] = frame
        plate, agree = plurality(stack)
        seen = np.isfinite(stack[..., 0]).sum(0)
        # Not to be trusted: where no two frames agree (or none shows the pixel), or the largest group of alike
        # samples is under a fifth of them (nothing stays put there).
        hole = ((agree < 2) | (agree < 0.2 * seen)).astype(np.uint8)
        unseen = seen == 0
        if warn_unseen and unseen.mean() >= UNSEEN_WARN:
            ys, xs = np.nonzero(unseen)
            warnings.warn(
                f"background plate: {unseen.mean():.1%} of the frame (x {xs.min()}-{xs.max()}, y {ys.min()}-{ys.max()} "
                f"of {S} px) is behind a person in every one of the {len(idx)} frames sampled: no frame shows the "
                "background there, so the plate is inpainted from its surroundings (a guess; live, it shows where "
                "a body stands elsewhere than the subject did). Footage in which the subject also leaves that spot "
                "lets the plate see it", BackgroundUnseenWarning, stacklevel=2)
        plate = np.rint(np.nan_to_num(plate)).clip(0, 255).astype(np.uint8)
        if hole.any():
            plate = cv2.inpaint(plate, hole, 3, cv2.INPAINT_TELEA)
        return torch.from_numpy(plate).permute(2, 0, 1).float() / 127.5 - 1.0

    def sample_batch(self, length: int, batch: int, rng: np.random.Generator, augment: Augment | None = None,
                     part: range | None = None, by_clip: bool = False) -> dict[str, torch.Tensor]:
        """``batch`` random windows of ``length`` frames, stacked: (B, T, ...). ``part``: load only these of the
        ``batch`` clips (a rank's share of a distributed iteration: every rank draws the same windows from the same
        ``rng``, and each clip is augmented from a seed of its own, so how a batch is split never changes it).
        ``by_clip``: every stretch of the chosen frames (``self.clips``: a clip, or the part of one a frame range
        keeps) long enough is drawn as often as any other, then a window in it (vid2vid's sampling: a sequence,
        then a start); otherwise every window is (a long shot drawn as often as it is long)."""
        clips = [(a, b) for a, b in self.clips if b - a >= length]
        if not clips:
            raise DatasetError(f"no clip has {length} consecutive frames (longest: {self.longest_clip()})")
        if by_clip:
            starts = []
            for _ in range(batch):
                a, b = clips[rng.integers(len(clips))]
                s = a + int(rng.integers(b - a - length + 1))
                starts.append((s, s + length))
        else:
            wins = self.windows(length)
            starts = [wins[rng.integers(len(wins))] for _ in range(batch)]
        seed = int(rng.integers(1 << 62))
        picks = [self.load(*starts[k], seed=(seed, k), augment=augment)
                 for k in (range(batch) if part is None else part)]
        return {k: torch.stack([p[k] for p in picks]) for k in picks[0]}


@dataclasses.dataclass
class Clip:
    """One iteration's clips on the training device, (B, T, ...), as the training step uses them: the data
    (:meth:`ClipSource.sample_batch`), what the generator made of it, and both cut to the generator's windows
    (``*_w``, (B, T, ., h, w)) and, with a face discriminator, to the head windows (``*_f``, (B, T, ., side, side))."""
    T: int
    labels: torch.Tensor                       # (B, T, C, S, S) label maps (augmented)
    real: torch.Tensor                         # (B, T, 3, S, S) frames in [-1, 1]
    flow: torch.Tensor                         # (B, T, 2, S, S) ground-truth backward flow, pixels
    conf: torch.Tensor                         # (B, T, 1, S, S) its confidence in [0, 1]
    person: torch.Tensor                       # (B, T, 1, S, S) {0, 1}: the regions the L1 weights (models/crop.py)
    head: torch.Tensor
    limbs: torch.Tensor
    features: torch.Tensor
    landmarks: torch.Tensor                    # (B, T, K, 3) on the CPU (the windows are placed from them)
    person_mask: torch.Tensor | None = None    # (B, T, 1, S, S) {0, 1} the subject's mask, when the data has masks
    fake: torch.Tensor | None = None           # (B, T, 3, S, S) generated frames
    flow_G: torch.Tensor | None = None         # (B, T, 2, h, w) the generator's flow, window coordinates
    mask: torch.Tensor | None = None           # (B, T, 1, h, w) its occlusion mask
    alpha: torch.Tensor | None = None          # (B, T, 1, h, w) compositing alpha (plate generators, with w_alpha)
    silhouette: torch.Tensor | None = None     # (B, T, 1, h, w) {0, 1}: the person (Trainer.silhouette_of)
    labels_w: torch.Tensor | None = None
    real_w: torch.Tensor | None = None
    fake_w: torch.Tensor | None = None
    flow_w: torch.Tensor | None = None
    conf_w: torch.Tensor | None = None
    labels_f: torch.Tensor | None = None       # (B, T, ., side, side)
    real_f: torch.Tensor | None = None
    fake_f: torch.Tensor | None = None
    judged: torch.Tensor | None = None         # (B, K) the frames the image and face discriminators judge (None: all)

    def judged_frames(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (B*K, ...): the frames the discriminators judge this iteration, as one batch (all T
        frames without ``judged``)."""
        if self.judged is not None:
            j = self.judged.to(x.device)
            x = x[torch.arange(len(j), device=x.device)[:, None], j]
        return x.reshape(-1, *x.shape[2:])

    @classmethod
    def from_batch(cls, batch: dict[str, torch.Tensor], T: int, device: torch.device) -> "Clip":
        """The data of a :meth:`ClipSource.sample_batch` on ``device`` (the landmarks stay on the CPU)."""
        on = {k: v.to(device) for k, v in batch.items() if k != "landmarks"}
        return cls(T=T, labels=on["labels"], real=on["frames"], flow=on["flow"], conf=on["conf"],
                   person=on["person"], head=on["head"], limbs=on["limbs"], features=on["features"],
                   landmarks=batch["landmarks"], person_mask=on.get("person_mask"))
