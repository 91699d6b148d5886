"""Evaluation on held-out clips: generate from labels alone (zero history), compare with the real frames.

A pose-to-video model exists to draw the person, and a fixed camera's room fills most of the frame, so the
full-frame figures alone flatter a model that draws nothing. Every figure is therefore reported inside the
person's region too, next to the score of drawing nothing at all, and the output is checked by re-detecting
the pose on it.

Figures (over every generated frame of every selected clip; regions from models/crop.py). Full-frame PSNR is the
mean of per-frame PSNRs (as before); region PSNRs pool the squared error of all frames (so one frame that happens
to be exact cannot make a region's figure infinite):
    psnr, ssim             full frame: PSNR in dB (8-bit RGB) and SSIM (OpenCV quality module, mean over RGB)
    psnr_person            PSNR inside the person's region (the filled hull of the frame's label map grown by
    ssim_person              PERSON_MARGIN of the frame side: the region the background plate is estimated
                             outside of), and the mean SSIM map over it
    psnr_head              PSNR inside the head region (hull of the head landmarks, grown); dance models
    psnr_background        PSNR outside the person's region (the room)
    psnr_person_strict     with the dataset's person masks: PSNR on the subject's own pixels (the parts of the mask
                             reaching into the person's region: trainer.clips.subject_mask; the grown hull above
                             also holds the room around the body)
    psnr_outside_person    ... and PSNR outside it: where the frame must be the room (a box drawn around the
                             person shows here)
    psnr_baseline          full-frame / person-region PSNR of drawing nothing: the background plate estimated
    psnr_person_baseline     from the evaluated clips with the person masked out, shown as every frame
    flicker                mean |out_t - warp(out_{t-1}, gt_flow_t)| in 8-bit grey levels over confident pixels
    flicker_real           the same figure for the real clip (the floor a perfect model would reach)
    flicker_ratio          flicker / flicker_real
    pose_error             MediaPipe (pose for dance models, face mesh for face models) run on every generated
                             frame: mean distance between the detected and the driving landmarks, as a fraction
                             of the frame side, over the landmarks present in both, over frames with a detection
    pose_error_real        the same on the real frames (MediaPipe's own error on this footage: the reference)
    pose_error_ratio       pose_error / pose_error_real
    detect_rate            fraction of generated frames in which MediaPipe finds the person (face)
    mirrored_rate          dance models: fraction of the generated frames with a detection in which it is
                             mirrored (left shoulder and hip read as the right ones: the person seen from behind,
                             what a featureless face makes MediaPipe do); each such frame adds ~0.2 to pose_error
    mirrored_rate_real     the same on the real frames
    detect_rate_real       the same on the real frames
    psnr_face              face models: PSNR inside the face (the filled hull of the driving face mesh)
    mouth_correlation      face models: Pearson correlation, over the frames where face mesh finds a face in both
                             the generated and the real frame, of the mouth's opening in the two (inner lips 13-14
                             over the outer eye corners' distance): does the mouth follow? (1: exactly)
    eye_correlation        the same for the eyes' opening (lids 159-145 and 386-374, mean of both eyes)
    frames                 frames generated
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from models.checkpoint import load_generator
from models.crop import VISIBLE, face_region
from models.landmarks import FACE_NUM_LANDMARKS, FACE_POINTS
from models.visualize import VideoWriter, label_preview, side_by_side, to_uint8
from models.warp import warp

from .clips import ClipSource
from .dataset import Dataset

CONFIDENT = 0.5  # flow confidence above which a pixel counts for flicker
FEW_FRAMES = 30  # an evaluation of fewer frames warns that its figures mean little


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.PSNR(a, b))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    score = cv2.quality.QualitySSIM_compute(a, b)[0]
    return float(np.mean(score[:3]))


def masked_sse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """(sum of squared 8-bit errors, value count) over the pixels of ``mask`` (all channels)."""
    sel = mask.astype(bool)
    d = a[sel].astype(np.float64) - b[sel].astype(np.float64)
    return float(np.sum(d * d)), int(d.size)


class _Pooled:
    """PSNR of the squared error pooled over every frame added: one perfect frame cannot make it infinite,
    and frames weigh by how much of the region they hold."""

    def __init__(self):
        self.sse, self.count = 0.0, 0

    def add(self, sse_count: tuple[float, int]) -> None:
        self.sse += sse_count[0]
        self.count += sse_count[1]

    def value(self) -> float | None:
        if not self.count:
            return None
        mse = self.sse / self.count
        return float("inf") if mse == 0 else float(10.0 * np.log10(255.0 ** 2 / mse))


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float | None:
    """PSNR in dB over the pixels where ``mask`` (H, W) is non-zero (all channels); None for an empty mask,
    inf for identical pixels."""
    pooled = _Pooled()
    pooled.add(masked_sse(a, b, mask))
    return pooled.value()


def masked_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean of the SSIM map (OpenCV quality module, mean over RGB) over the pixels of ``mask``; None if empty."""
    sel = mask.astype(bool)
    if not sel.any():
        return None
    qmap = cv2.quality.QualitySSIM_compute(a, b)[1]
    return float(np.mean(qmap[sel][:, :3]))


def flicker(frames: torch.Tensor, gt_flow: torch.Tensor, conf: torch.Tensor) -> tuple[float, float]:
    """(sum of |f_t - warp(f_{t-1}, flow_t)| over confident pixels in 8-bit levels, pixel count).

    frames (T, 3, S, S) in [-1, 1]; gt_flow (T, 2, S, S); conf (T, 1, S, S).
    """
    if frames.shape[0] < 2:
        return 0.0, 0.0
    warped = warp(frames[:-1], gt_flow[1:])
    diff = (frames[1:] - warped).abs().mean(1, keepdim=True) * 127.5
    w = (conf[1:] > CONFIDENT).float()
    return float((diff * w).sum()), float(w.sum())


def landmark_error(kind: str, detected: np.ndarray, driving: np.ndarray) -> float | None:
    """Mean distance (fraction of the frame side) between detected and driving landmarks over those present in
    both (pose: visibility >= VISIBLE and finite; face: the 468 mesh points, finite); None if none is."""
    d, g = np.asarray(detected, np.float64), np.asarray(driving, np.float64)
    if kind == "face":  # irises (478-point meshes) are not scored: compare the 468 mesh points
        n = min(len(d), len(g), FACE_NUM_LANDMARKS)
        d, g = d[:n], g[:n]
    ok = np.isfinite(d[:, :2]).all(1) & np.isfinite(g[:, :2]).all(1)
    if kind == "dance":
        with np.errstate(invalid="ignore"):
            ok &= (d[:, 2] >= VISIBLE) & (g[:, 2] >= VISIBLE)
    if not ok.any():
        return None
    return float(np.mean(np.linalg.norm(d[ok, :2] - g[ok, :2], axis=1)))


def face_openings(landmarks: np.ndarray) -> tuple[float, float] | None:
    """(mouth, eyes) opening of a face mesh: the inner lips' distance and the mean of the two eyes' lid distances,
    each over the distance between the outer eye corners (scale-free); None when a point is missing."""
    p = np.asarray(landmarks, np.float64)[:, :2]
    if len(p) < FACE_NUM_LANDMARKS:
        return None
    f = FACE_POINTS
    dist = lambda a, b: float(np.linalg.norm(p[f[a]] - p[f[b]]))  # noqa: E731
    scale = dist("right_eye_outer", "left_eye_outer")
    values = (dist("upper_lip_inner", "lower_lip_inner") / max(scale, 1e-9),
              0.5 * (dist("right_eye_top", "right_eye_bottom") + dist("left_eye_top", "left_eye_bottom")) /
              max(scale, 1e-9))
    return values if scale > 0 and np.isfinite(values).all() else None


def correlation(a: list[float], b: list[float]) -> float | None:
    """Pearson correlation of two equally long series; None with fewer than 3 values or one constant."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


# Left/right pairs whose swap tells a mirrored detection: shoulders and hips.
_MIRROR_PAIRS = ((11, 12), (23, 24))


def is_mirrored(detected: np.ndarray, driving: np.ndarray) -> bool | None:
    """True when a pose detection is the driving pose's mirror image: its shoulders and hips (both present in
    both) lie nearer the driving ones swapped left for right than as they are; None when no pair is present."""
    d, g = np.asarray(detected, np.float64), np.asarray(driving, np.float64)
    straight = swapped = 0.0
    n = 0
    for a, b in _MIRROR_PAIRS:
        rows = [a, b]
        with np.errstate(invalid="ignore"):
            ok = (np.isfinite(d[rows, :2]).all() and np.isfinite(g[rows, :2]).all()
                  and (d[rows, 2] >= VISIBLE).all() and (g[rows, 2] >= VISIBLE).all())
        if not ok:
            continue
        straight += np.linalg.norm(d[a, :2] - g[a, :2]) + np.linalg.norm(d[b, :2] - g[b, :2])
        swapped += np.linalg.norm(d[a, :2] - g[b, :2]) + np.linalg.norm(d[b, :2] - g[a, :2])
        n += 1
    return None if not n else bool(swapped < straight)


class _Mean:
    """Running mean of the values given (None skipped)."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, v: float | None) -> None:
        if v is not None:
            self.total += v
            self.count += 1

    def value(self) -> float | None:
        return self.total / self.count if self.count else None


class _PoseProbe:
    """MediaPipe run over one clip's frames in order (tracking, as prepare does), scoring them against the
    driving landmarks; a fresh detector per clip so that tracking never crosses a cut."""

    def __init__(self, kind: str):
        self.kind = kind
        self.error, self.frames, self.found = _Mean(), 0, 0
        self.mirrored = _Mean()
        self._extractor = None

    def begin_clip(self) -> None:
        from models.detect import LandmarkExtractor

        self.close()
        self._extractor = LandmarkExtractor(self.kind)

    def add(self, rgb: np.ndarray, driving: np.ndarray) -> np.ndarray | None:
        """Detect on ``rgb``, score against ``driving``; returns the detection (None: none)."""
        found = self._extractor(rgb)
        self.frames += 1
        if found is not None:
            self.found += 1
            self.error.add(landmark_error(self.kind, found, driving))
            if self.kind == "dance":
                flip = is_mirrored(found, driving)
                self.mirrored.add(None if flip is None else float(flip))
        return found

    def rate(self) -> float:
        return self.found / self.frames if self.frames else 0.0

    def close(self) -> None:
        if self._extractor is not None:
            self._extractor.close()
            self._extractor = None


def _ratio(a, b):
    return a / b if a is not None and b else None


class Scorer:
    """Accumulates every figure of the module docstring over clips: ``add_clip(generated, clip)`` per clip (a
    ``ClipSource.load`` dict and the frames made for it), then ``result()``. ``plate`` (S, S, 3) uint8 is the
    drawing-nothing baseline; ``pose=False`` skips MediaPipe."""

    _only_with_masks = ("psnr_person_strict", "psnr_outside_person")      # reported when the data has masks

    def __init__(self, kind: str, plate: np.ndarray, *, pose: bool = True):
        self.kind, self.plate = kind, plate
        self.m = {k: _Mean() for k in ("psnr", "ssim", "ssim_person", "psnr_baseline")}
        self.m.update({k: _Pooled() for k in ("psnr_person", "psnr_head", "psnr_face", "psnr_background",
                                              "psnr_person_baseline", *self._only_with_masks)})
        self.openings: list[tuple] = []    # face: (generated's (mouth, eyes), real's) of frames found in both
        self.fl, self.fl_real = [0.0, 0.0], [0.0, 0.0]
        self.probes = {"gen": _PoseProbe(kind), "real": _PoseProbe(kind)} if pose else {}
        self.frames = 0
        self.has_masks = False             # the data had person masks: both mask figures reported (None if empty)

    def add_clip(self, generated: torch.Tensor, clip: dict, writer=None) -> None:
        """generated (T, 3, S, S) in [-1, 1] for ``clip`` (frames, labels, landmarks, person, head, flow, conf)."""
        m, plate = self.m, self.plate
        for p in self.probes.values():
            p.begin_clip()
        try:
            for t in range(generated.shape[0]):
                gen = to_uint8(generated[t].numpy())
                real = to_uint8(clip["frames"][t].numpy())
                lm = clip["landmarks"][t].numpy()
                person = clip["person"][t, 0].numpy().astype(np.uint8)
                m["psnr"].add(psnr(gen, real))
                m["ssim"].add(ssim(gen, real))
                m["psnr_person"].add(masked_sse(gen, real, person))
                m["ssim_person"].add(masked_ssim(gen, real, person))
                m["psnr_background"].add(masked_sse(gen, real, 1 - person))
                m["psnr_baseline"].add(psnr(plate, real))
                m["psnr_person_baseline"].add(masked_sse(plate, real, person))
                if "person_mask" in clip:
                    self.has_masks = True
                    strict = (clip["person_mask"][t, 0].numpy() >= 0.5).astype(np.uint8)
                    m["psnr_person_strict"].add(masked_sse(gen, real, strict))
                    m["psnr_outside_person"].add(masked_sse(gen, real, 1 - strict))
                if self.kind == "dance":
                    m["psnr_head"].add(masked_sse(gen, real, clip["head"][t, 0].numpy()))
                else:
                    m["psnr_face"].add(masked_sse(gen, real, face_region(lm, *real.shape[:2])))
                if self.probes:
                    found = self.probes["gen"].add(gen, lm), self.probes["real"].add(real, lm)
                    if self.kind == "face" and found[0] is not None and found[1] is not None:
                        pair = face_openings(found[0]), face_openings(found[1])
                        if None not in pair:
                            self.openings.append(pair)
                if writer:
                    writer.write(side_by_side(label_preview(clip["labels"][t].numpy()), gen, real))
                self.frames += 1
        finally:
            for p in self.probes.values():
                p.close()
        for acc, frames in ((self.fl, generated), (self.fl_real, clip["frames"])):
            s, n = flicker(frames, clip["flow"], clip["conf"])
            acc[0] += s
            acc[1] += n

    def result(self) -> dict:
        fl, fl_real = self.fl, self.fl_real
        result = {k: v.value() for k, v in self.m.items() if k not in self._only_with_masks or self.has_masks}
        result.update({"flicker": fl[0] / fl[1] if fl[1] else 0.0,
                       "flicker_real": fl_real[0] / fl_real[1] if fl_real[1] else 0.0,
                       "frames": self.frames})
        result["flicker_ratio"] = _ratio(result["flicker"], result["flicker_real"])
        if self.probes:
            gen, real = self.probes["gen"], self.probes["real"]
            result.update({"pose_error": gen.error.value(), "pose_error_real": real.error.value(),
                           "detect_rate": gen.rate(), "detect_rate_real": real.rate()})
            if self.kind == "dance":
                result.update({"mirrored_rate": gen.mirrored.value(), "mirrored_rate_real": real.mirrored.value()})
            else:
                pairs = self.openings
                result["mouth_correlation"] = correlation([g[0] for g, _ in pairs], [r[0] for _, r in pairs])
                result["eye_correlation"] = correlation([g[1] for g, _ in pairs], [r[1] for _, r in pairs])
            result["pose_error_ratio"] = _ratio(result["pose_error"], result["pose_error_real"])
        return result


@torch.no_grad()
def evaluate(run: str | os.PathLike, data: str | os.PathLike, *, clips: list[int] | None = None,
             identity: str | None = None, frame_ranges: tuple[tuple[int, int], ...] | None = None,
             video: str | os.PathLike | None = None, max_frames: int | None = None, device: str = "cpu",
             pose: bool = True, progress: bool = True) -> dict:
    """Evaluate the generator of ``run`` on ``data`` (see the module docstring for the figures); optionally write
    a label | generated | real video. ``clips``, ``identity``, ``frame_ranges``: only those frames
    (``Dataset.select``). ``pose=False`` skips the MediaPipe figures."""
    from tqdm import tqdm

    G, _ = load_generator(run, device)
    cfg = G.cfg
    ds = Dataset(data)
    if ds.kind != cfg.kind:
        raise ValueError(f"{data} is a {ds.kind!r} dataset but the model in {run} is a {cfg.kind!r} model")
    source = ClipSource(ds, cfg.size, ds.select(clips, identity, frame_ranges).ranges)
    total = source.num_frames if max_frames is None else min(max_frames, source.num_frames)
    if total < FEW_FRAMES:
        warnings.warn(f"only {total} frames to score: figures from fewer than {FEW_FRAMES} frames mean little "
                      "(flicker, the correlations and the region PSNRs move by whole units between short clips)",
                      stacklevel=2)
    scorer = Scorer(cfg.kind, to_uint8(source.background_plate().numpy()), pose=pose)
    writer = VideoWriter(video, fps=ds.manifest.fps or 30.0) if video else None
    bar = tqdm(total=total, disable=not progress, unit="frame", desc="eval")
    try:
        for a, b in source.clips:
            b = min(b, a + total - scorer.frames)
            if b <= a:
                break
            clip = source.load(a, b)
            fake = G.rollout(clip["labels"].unsqueeze(0).to(device),
                             landmarks=clip["landmarks"].unsqueeze(0))[0][0].cpu()
            scorer.add_clip(fake, clip, writer)
            bar.update(b - a)
    finally:
        bar.close()
        if writer:
            writer.close()
    if not scorer.frames:
        raise ValueError(f"{data}: no frames to evaluate")
    result = {**scorer.result(), "preset": cfg.name, "size": cfg.size}
    if video:
        result["video"] = str(Path(video))
    return result


def format_report(res: dict) -> str:
    """The human-readable eval table (what ``posecast eval`` prints without --json)."""
    def f(key, fmt="{:.2f}", unit=""):
        v = res.get(key)
        return "n/a" if v is None else fmt.format(v) + unit

    lines = [f"{res['preset']} {res['size']}px on {res['frames']} frames",
             f"  full frame     PSNR {f('psnr', unit=' dB')}   SSIM {f('ssim', '{:.3f}')}   "
             f"(drawing nothing: {f('psnr_baseline', unit=' dB')})",
             f"  person region  PSNR {f('psnr_person', unit=' dB')}   SSIM {f('ssim_person', '{:.3f}')}   "
             f"(drawing nothing: {f('psnr_person_baseline', unit=' dB')})"]
    if res.get("psnr_head") is not None:
        lines.append(f"  head region    PSNR {f('psnr_head', unit=' dB')}")
    if res.get("psnr_face") is not None:
        lines.append(f"  face           PSNR {f('psnr_face', unit=' dB')}")
    lines.append(f"  room           PSNR {f('psnr_background', unit=' dB')}")
    if "psnr_person_strict" in res:
        lines.append(f"  person mask    PSNR {f('psnr_person_strict', unit=' dB')} inside, "
                     f"{f('psnr_outside_person', unit=' dB')} outside (the dataset's masks)")
    lines.append(f"  flicker        {f('flicker')} (real clip {f('flicker_real')}, ratio {f('flicker_ratio')})")
    if "pose_error" in res:
        lines.append(f"  pose check     error {f('pose_error', '{:.4f}')} of the frame side on generated frames, "
                     f"{f('pose_error_real', '{:.4f}')} on real ones (ratio {f('pose_error_ratio')}); "
                     f"detected in {f('detect_rate', '{:.0%}')} (real {f('detect_rate_real', '{:.0%}')})")
    if "mouth_correlation" in res:
        lines.append(f"  mouth, eyes    their opening follows the real frames' with correlation "
                     f"{f('mouth_correlation')} (mouth), {f('eye_correlation')} (eyes)")
    if "mirrored_rate" in res:
        lines.append(f"  mirrored       {f('mirrored_rate', '{:.0%}')} of the detections read the person from behind "
                     f"(real {f('mirrored_rate_real', '{:.0%}')})")
    return "\n".join(lines)
