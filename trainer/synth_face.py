"""The built-in synthetic talking face: a textured face in a room, rendered from :mod:`models.face_motion`.

What the synthetic dancer is for dance models, this is for face models: ``posecast synth --kind face`` writes a
face dataset (the same format ``prepare --kind face`` writes from a video: 478 landmarks a frame, backward DIS
flow with its confidence) whose landmarks are known exactly, so the face pipeline trains, is evaluated on
held-out motion and is demoed without footage. ``seed`` drives the motion (head turns, nods, speech, blinks),
``appearance_seed`` the look (skin, hair, eyes, lips, shirt: :func:`trainer.synth.make_appearance`) and the room.

The face is the mesh's triangles (MediaPipe's tessellation), shaded by their normals under one light and drawn
far to near, at twice the size and averaged down; behind it the hair, the neck and shoulders; in the mesh's holes
the eyes (sclera, iris, pupil, a highlight) and the mouth (dark, with teeth when it opens).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import cv2
import numpy as np

from models.face_motion import LEFT_IRIS, RIGHT_IRIS, FaceMotion, face_template, mesh_triangles, place
from models.landmarks import FACE_CONTOURS, FACE_NUM_LANDMARKS_REFINED

from .dataset import DatasetWriter
from .synth import Appearance, check_synth_args, make_appearance, make_background, write_frames

_SS = 2                                   # supersampling
_LIGHT = np.array([-0.35, -0.45, -0.82])  # toward the light (from the upper left, in front)
_LIGHT = _LIGHT / np.linalg.norm(_LIGHT)


def _inside(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    path = poly.astype(np.float32).reshape(-1, 1, 2)
    return np.array([cv2.pointPolygonTest(path, (float(x), float(y)), False) >= 0 for x, y in pts])


@functools.lru_cache(maxsize=1)
def triangle_regions() -> dict[str, np.ndarray]:
    """Which triangles are lips and which eyebrows (boolean masks over :func:`mesh_triangles`), from the neutral
    template: a triangle's centre inside the outer lips and not in the mouth, or between a brow's two edges."""
    t = face_template(1.0, 0.3, 0.0)[:, :2]
    centres = t[mesh_triangles()].mean(1)
    lips = _inside(t[list(FACE_CONTOURS["lips_outer"][0])], centres) & ~_inside(
        t[list(FACE_CONTOURS["lips_inner"][0])], centres)
    brows = np.zeros(len(centres), bool)
    for name in ("right_eyebrow", "left_eyebrow"):
        lower, upper = FACE_CONTOURS[name]
        brows |= _inside(t[list(lower) + list(upper)[::-1]], centres)
    return {"lips": lips, "brows": brows}


@dataclasses.dataclass
class FaceFrame:
    frame: np.ndarray         # (H, W, 3) uint8 RGB
    landmarks: np.ndarray     # (478, 3) float32, normalised
    mask: np.ndarray          # (H, W) uint8: how much of each pixel the person covers (head, hair, neck, shoulders)


class FaceRenderer:
    """Renders :class:`models.face_motion.FaceState` frames of one look (``appearance_seed``) at ``size``²."""

    def __init__(self, size: int = 256, appearance_seed: int = 0):
        self.size = size
        self.app: Appearance = make_appearance(appearance_seed)
        self.background = np.clip(make_background(size * _SS, self.app, appearance_seed) + 0.5, 0, 255).astype(np.uint8)
        rng = np.random.default_rng([appearance_seed, 4242])
        tri = mesh_triangles().copy()
        t = face_template()[:, :2]                       # frontal: every triangle counter-clockwise on screen
        flip = np.cross(t[tri[:, 1]] - t[tri[:, 0]], t[tri[:, 2]] - t[tri[:, 0]]) < 0
        tri[flip] = tri[flip][:, [0, 2, 1]]
        self._tri = tri
        self._tint = rng.uniform(0.94, 1.04, len(self._tri))            # skin's blotches, a triangle each
        regions = triangle_regions()
        skin = np.array(self.app.skin)
        colour = np.repeat(skin[None], len(self._tri), 0) * self._tint[:, None]
        colour[regions["lips"]] = np.array(self.app.lips) * 0.9
        colour[regions["brows"]] = np.array(self.app.hair) * 0.8 + skin * 0.2
        self._colour = colour

    def render(self, state) -> FaceFrame:
        n = self.size * _SS
        img = self.background.copy()
        lm = place(state)
        p = lm[:, :2] * n
        pts3 = lm / state.scale                       # the posed template (face units; only depth and normals used)
        skin, hair = np.array(self.app.skin), np.array(self.app.hair)
        scale = state.scale * n
        centre = p[[10, 152]].mean(0)
        up = p[10] - p[152]
        up /= np.linalg.norm(up) + 1e-9
        side = np.array([-up[1], up[0]])
        # shoulders and neck (under the chin, tilted with the head a little), then the hair behind the head
        chin = p[152]
        shirt = np.array(self.app.shirt1)
        sh = np.array([[chin[0] - 0.95 * scale, n], [chin[0] - 0.85 * scale, chin[1] + 0.42 * scale],
                       [chin[0] - 0.3 * scale, chin[1] + 0.25 * scale], [chin[0] + 0.3 * scale, chin[1] + 0.25 * scale],
                       [chin[0] + 0.85 * scale, chin[1] + 0.42 * scale], [chin[0] + 0.95 * scale, n]])
        cv2.fillPoly(img, [sh.astype(np.int32)], tuple(float(c) for c in shirt))
        neck = np.array([[p[136][0] + 0.05 * scale, p[136][1]], [p[365][0] - 0.05 * scale, p[365][1]],
                         [chin[0] + 0.2 * scale, chin[1] + 0.3 * scale], [chin[0] - 0.2 * scale, chin[1] + 0.3 * scale]])
        cv2.fillConvexPoly(img, neck.astype(np.int32), tuple(float(c) for c in skin * 0.78))
        oval = p[list(FACE_CONTOURS["face_oval"][0][:-1])]
        rel = oval - centre
        along = rel @ up
        hair_pts = centre + rel * np.where(along > -0.05 * scale, 1.14, 1.02)[:, None] + up * 0.05 * scale
        if self.app.hair_long:
            hair_pts = np.concatenate([hair_pts, [chin - side * 0.55 * scale, chin + side * 0.55 * scale]])
            hair_pts = cv2.convexHull(hair_pts.astype(np.float32))[:, 0]
        cv2.fillPoly(img, [hair_pts.astype(np.int32)], tuple(float(c) for c in hair))
        # ears at the oval's widest points
        for k, s in ((234, -1), (454, 1)):
            cv2.ellipse(img, tuple(int(v) for v in p[k] + side * s * 0.02 * scale), (int(0.06 * scale), int(0.11 * scale)),
                        0, 0, 360, tuple(float(c) for c in skin * 0.85), -1)
        self._eyes(img, p, scale)
        self._mouth(img, p, state.mouth, scale)
        # the face: triangles facing the camera, far to near, shaded by their normals
        tri = self._tri
        a, b, c = pts3[tri[:, 0]], pts3[tri[:, 1]], pts3[tri[:, 2]]
        normal = np.cross(b - a, c - a)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
        normal *= np.where(normal[:, 2] > 0, -1.0, 1.0)[:, None]          # toward the camera (z negative)
        shade = 0.62 + 0.42 * np.clip(normal @ _LIGHT, 0, 1)
        area = np.cross(p[tri[:, 1]] - p[tri[:, 0]], p[tri[:, 2]] - p[tri[:, 0]])
        depth = a[:, 2] + b[:, 2] + c[:, 2]
        colours = np.clip(self._colour * shade[:, None], 0, 255).tolist()
        corners = np.round(p[tri] * 4).astype(np.int32)                    # 2 bits of sub-pixel precision
        for k in np.argsort(-depth)[area[np.argsort(-depth)] > 0]:          # far to near; those turned away skipped
            cv2.fillConvexPoly(img, corners[k], colours[k], lineType=cv2.LINE_AA, shift=2)
        frame = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
        person = (img != self.background).any(-1).astype(np.float32)       # everything drawn is the person
        mask = cv2.resize(person, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return FaceFrame(frame, lm, np.clip(mask * 255 + 0.5, 0, 255).astype(np.uint8))

    def _eyes(self, img, p, scale) -> None:
        for contour, iris in ((FACE_CONTOURS["right_eye"][0], RIGHT_IRIS), (FACE_CONTOURS["left_eye"][0], LEFT_IRIS)):
            x0, y0 = np.floor(p[list(contour)].min(0)).astype(int) - 2
            x1, y1 = np.ceil(p[list(contour)].max(0)).astype(int) + 3
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, img.shape[1]), min(y1, img.shape[0])
            if x1 <= x0 or y1 <= y0:
                continue
            q = p - (x0, y0)                              # the eye's box only
            poly = np.round(q[list(contour)] * 4).astype(np.int32)
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_AA, shift=2)
            eye = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
            eye[:] = (235, 232, 226)
            c = q[iris[0]]
            r = 0.6 * np.linalg.norm(q[iris[1]] - q[iris[3]])
            cv2.circle(eye, tuple(int(v) for v in c), int(r), tuple(float(v) for v in self.app.eyes), -1, cv2.LINE_AA)
            cv2.circle(eye, tuple(int(v) for v in c), int(r * 0.45), (15, 12, 12), -1, cv2.LINE_AA)
            cv2.circle(eye, tuple(int(v) for v in c + (-0.3 * r, -0.35 * r)), max(1, int(r * 0.18)), (250, 250, 250),
                        -1, cv2.LINE_AA)
            m = (mask.astype(np.float32) / 255)[..., None]
            box = img[y0:y1, x0:x1]
            box[:] = (box * (1 - m) + eye * m + 0.5).astype(np.uint8)

    def _mouth(self, img, p, opening: float, scale) -> None:
        inner = p[list(FACE_CONTOURS["lips_inner"][0])]
        cv2.fillPoly(img, [np.round(inner * 4).astype(np.int32)], (70, 20, 25), lineType=cv2.LINE_AA, shift=2)
        if opening > 0.15:                                # the upper teeth under the upper lip
            top = inner[11:20]
            teeth = np.concatenate([top, top[::-1] + (0, 0.035 * scale)])
            mask = np.zeros(img.shape[:2], np.uint8)
            cv2.fillPoly(mask, [np.round(inner * 4).astype(np.int32)], 255, shift=2)
            t = np.zeros(img.shape[:2], np.uint8)
            cv2.fillPoly(t, [np.round(teeth * 4).astype(np.int32)], 255, shift=2)
            img[(mask > 0) & (t > 0)] = (235, 230, 215)


def synthesize_face(out_dir, *, seed: int = 0, num_frames: int = 300, size: int = 256, fps: float = 30.0,
                    clip_frames: int | None = None, overwrite: bool = False, progress: bool = True,
                    appearance_seed: int = 0) -> Path:
    """Write a face dataset of the synthetic talking face (``kind="face"``: the stabilised face crop of ``prepare``,
    478 landmarks, DIS flow like ``prepare``, the person's exact mask) and return its path; the arguments as
    :func:`trainer.synth.synthesize`'s."""
    from models.posenorm import FaceCrop

    from .flow import FlowEstimator
    from .prepare import FACE_CROP, FB_THRESHOLD_PX, crop_resize, map_landmarks

    check_synth_args(num_frames, size, clip_frames, min_size=32)
    # Rendered a quarter larger than the dataset, then cut to the stabilised face crop exactly as `prepare` cuts
    # footage (and as the live client cuts what it sends): the face fills the crop the same way in all three.
    source = int(round(size * 1.25))
    motion, renderer = FaceMotion(seed=seed, fps=fps), FaceRenderer(source, appearance_seed)
    cfg = dataclasses.replace(FACE_CROP, fps=fps)
    crop = FaceCrop(cfg)
    flow_est = FlowEstimator(fb_threshold_px=FB_THRESHOLD_PX)
    writer = DatasetWriter(out_dir, kind="face", height=size, width=size, fps=fps,
                           num_landmarks=FACE_NUM_LANDMARKS_REFINED,
                           source=f"synth-face:seed={seed},appearance={appearance_seed}", overwrite=overwrite)
    writer.manifest.extra = {"synth": {"kind": "face", "seed": seed, "appearance_seed": appearance_seed, "size": size,
                                       "fps": fps, "clip_frames": clip_frames, "rendered_size": source,
                                       "appearance": dataclasses.asdict(renderer.app)},
                             "crop": {**cfg.to_dict(), "mode": "tracked"}, "source_fps": fps}
    prev = {"frame": None}

    def render(i: int, first: bool) -> dict:
        res = renderer.render(motion.state(i))
        box, _ = crop.update(res.landmarks, 1.0)                      # (x0, y0, side) in frame-height units
        box = tuple(v * source for v in box)
        frame = crop_resize(res.frame, box, size)
        flow = conf = None
        if not first:
            flow, conf = flow_est(prev["frame"], frame)
            flow = flow.astype(np.float16)
        prev["frame"] = frame
        return dict(frame=frame, landmarks=map_landmarks(res.landmarks, box, source, source, "face"), flow=flow,
                    flow_conf=conf, mask=crop_resize(res.mask, box, size))

    return write_frames(writer, num_frames, clip_frames, render, progress=progress, desc="synth face")
