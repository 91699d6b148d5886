"""What the training frames say about a held-out face: every training frame, warped onto each held-out frame's own
face mesh (piecewise affine over MediaPipe's mesh triangles, the eyes and mouth filled), scored by the face-region
PSNR ``posecast eval`` reports (inside the face-mesh hull, squared error pooled over the frames).

It asks: could the training footage show the held-out face at all? For each held-out frame, oracles pick what fits
it best *as judged by that held-out frame itself* (no model can choose this way): the best training frame, the best
after a per-channel gain and offset fitted to it, the best frame for each part of the face, a least-squares blend of
the best eight. A generator trained on those frames learns the face from their pixels; when even the oracles, placed
on the held-out mesh, score below a target, that is strong evidence (not a proof: a generator can do more than
re-place pixels) that the target asks for appearance the footage does not hold. For scale, it also warps the
held-out shot's own real frames from k frames earlier (``--lags``): how fast the face's appearance drifts from what
a mesh warp explains.

    .venv/bin/python scripts/face-heldout-bound.py DATA [--train 0:97,152:174] [--held 174:197] [--lags 1,2,4,8]

DATA is a prepared face dataset (``posecast prepare VIDEO --kind face``); ranges are frame indices of it.
docs/performance.md ("The real-time face model") has the figures for Megamind.avi.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from models.crop import face_region  # noqa: E402
from models.face_motion import mesh_triangles  # noqa: E402
from models.landmarks import FACE_CONTOURS, FACE_NUM_LANDMARKS  # noqa: E402
from trainer.clips import parse_frame_ranges  # noqa: E402
from trainer.dataset import Dataset  # noqa: E402
from trainer.evaluate import _Pooled, masked_sse  # noqa: E402


def frames_of(text: str, ds: Dataset) -> list[int]:
    """The frame indices of ``ds`` in ``text`` (``train --frames``' syntax: ``0:97,152:174``)."""
    return [i for a, b in parse_frame_ranges(text) or ((0, len(ds)),) for i in range(a, min(b, len(ds)))]


def warp_triangles() -> np.ndarray:
    """(T, 3) landmark indices of the triangles a face is warped by: the mesh's faces, and the holes of the eyes and
    the mouth filled by fans from their rings, so the whole face moves with its mesh. The faces are the 3-cliques of
    MediaPipe's tessellation less the few that are not faces: a 3-cycle around other triangles, each of whose edges
    then lies in three cliques where a face's inner edge lies in two."""
    cliques = mesh_triangles()
    edges = np.sort(np.stack([cliques[:, [0, 1]], cliques[:, [1, 2]], cliques[:, [0, 2]]], 1), -1)   # (T, 3, 2)
    keys, counts = np.unique(edges.reshape(-1, 2), axis=0, return_counts=True)
    uses = {tuple(k): int(c) for k, c in zip(keys, counts)}
    faces = [tuple(t) for t, e in zip(cliques, edges) if not all(uses[tuple(x)] > 2 for x in e)]
    for group in ("left_eye", "right_eye", "lips_inner"):
        ring = FACE_CONTOURS[group][0][:-1]
        faces += [(ring[0], ring[k], ring[k + 1]) for k in range(1, len(ring) - 1)]
    return np.array(faces, np.int32)


class MeshWarp:
    """Warps any frame onto one destination mesh: the triangle under each destination pixel is found once.
    Triangles too thin to carry a map (under ``MIN_AREA`` px²) are left out; pixels no triangle covers (the few at
    the hull's edge) move by the affine map that fits the whole mesh best (least squares)."""

    MIN_AREA = 1e-2

    def __init__(self, dst: np.ndarray, size: int):
        tris = warp_triangles()
        d = dst[tris]
        area = 0.5 * np.abs(np.cross(d[:, 1] - d[:, 0], d[:, 2] - d[:, 0]))
        self.dst, self.tris = dst, tris[area >= self.MIN_AREA]
        self.tri_id = np.full((size, size), -1, np.int32)
        for k, tri in enumerate(self.tris):
            cv2.fillConvexPoly(self.tri_id, np.round(dst[tri] - 0.5).astype(np.int32), k)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.pix = np.stack([xx + 0.5, yy + 0.5, np.ones_like(xx)], -1)          # pixel centres, homogeneous

    def __call__(self, image: np.ndarray, src: np.ndarray) -> np.ndarray:
        homog = lambda p: np.concatenate([p, np.ones((*p.shape[:-1], 1), np.float64)], -1)  # noqa: E731
        affine = np.linalg.solve(homog(self.dst[self.tris].astype(np.float64)), src[self.tris])      # (T, 3, 2)
        whole = np.linalg.lstsq(homog(self.dst.astype(np.float64)), src, rcond=None)[0]               # (3, 2)
        ids = self.tri_id
        maps = np.einsum("hwi,hwij->hwj", self.pix, affine[np.maximum(ids, 0)])
        maps = np.where((ids >= 0)[..., None], maps, self.pix @ whole) - 0.5
        return cv2.remap(image, maps[..., 0].astype(np.float32), maps[..., 1].astype(np.float32),
                         cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


PARTS = {"right eye and brow": ("right_eye", "right_eyebrow"), "left eye and brow": ("left_eye", "left_eyebrow"),
         "mouth": ("lips_outer",)}


BLEND = 8   # the oracle's blend: the best this many warped training frames, weighted to fit the held-out frame


def part_masks(mesh: np.ndarray, face: np.ndarray) -> list[np.ndarray]:
    """The face region cut into the parts of ``PARTS`` (each point hull grown by 4 % of the side) and the rest."""
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * round(0.04 * face.shape[0]) + 1,) * 2)
    masks, rest = [], face.copy()
    for groups in PARTS.values():
        idx = sorted({i for g in groups for line in FACE_CONTOURS[g] for i in line})
        m = np.zeros(face.shape, np.uint8)
        cv2.fillConvexPoly(m, cv2.convexHull(np.round(mesh[idx] - 0.5).astype(np.int32)), 1)
        m = cv2.dilate(m, grow).astype(bool) & rest
        rest &= ~m
        masks.append(m)
    return [*masks, rest]


def gain_fit(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``a`` with the per-channel gain and offset that bring it closest to ``b`` inside ``mask``."""
    out = a.astype(np.float64)
    for c in range(3):
        x, y = out[..., c][mask], b[..., c][mask].astype(np.float64)
        g, o = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)[0]
        out[..., c] = out[..., c] * g + o
    return np.clip(out, 0, 255)


def bound(ds: Dataset, hds: Dataset, train: list[int], held: list[int], lags: list[int] = (),
          progress: bool = True) -> tuple[dict[str, float], dict[str, int]]:
    """(figures in dB keyed as printed, frame counts): the training frames of ``ds`` warped onto the held-out
    frames of ``hds`` (the oracle's picks), and ``hds``' own frames ``lags`` earlier in the same clip, scored on
    the held-out frames that have every lag in their clip. Frames without a whole mesh are left out."""
    size = ds.frames.shape[1]
    for d in (ds, hds):
        if d.frames.shape[1:3] != (size, size):
            raise ValueError(f"{d.path}: frames are {d.frames.shape[2]}x{d.frames.shape[1]}; "
                             f"this wants square frames of one size ({size})")
    meshes = [np.asarray(d.landmarks, np.float32)[:, :FACE_NUM_LANDMARKS, :2] * size for d in (ds, hds)]
    train = [j for j in train if np.isfinite(meshes[0][j]).all()]
    usable = np.isfinite(meshes[1]).all((1, 2))
    held = [i for i in held if usable[i]]
    if not train or not held:
        raise ValueError("no training or no held-out frame with a whole face mesh")
    frames, mesh = hds.frames, meshes[1]
    blend_k = min(BLEND, len(train))
    keys = ["best", "best, gain-fitted", "best per part", f"best {blend_k} blended"]
    keys += ["nearest in time"] if hds is ds else []
    keys += [f"the same shot's frame {k} earlier" for k in lags]
    pooled = {k: _Pooled() for k in keys}
    clip_of = np.full(len(hds), -1)
    for c, (a, b) in enumerate(hds.clips):
        clip_of[a:b] = c
    lag_frames = 0
    for n, i in enumerate(held):
        warp, real = MeshWarp(mesh[i], size), frames[i]
        mask = face_region(hds.landmarks[i], size, size).astype(bool)
        warped = {j: warp(np.ascontiguousarray(ds.frames[j]), meshes[0][j]) for j in train}
        errors = {j: masked_sse(w, real, mask) for j, w in warped.items()}       # (sse, count)
        order = sorted(errors, key=lambda j: errors[j][0])
        top = np.stack([warped[j][mask] for j in order[:blend_k]], -1).astype(np.float64)     # (P, 3, k)
        target = real[mask].astype(np.float64)
        weights = np.linalg.lstsq(top.reshape(-1, blend_k), target.ravel(), rcond=None)[0]
        count = target.size
        found = {"best": errors[order[0]][0],
                 "best, gain-fitted": min(masked_sse(gain_fit(w, real, mask), real, mask)[0] for w in warped.values()),
                 "best per part": sum(min(masked_sse(w, real, m)[0] for w in warped.values())
                                      for m in part_masks(mesh[i], mask)),
                 f"best {blend_k} blended": float(((np.clip(top @ weights, 0, 255) - target) ** 2).sum())}
        if hds is ds:
            found["nearest in time"] = errors[min(train, key=lambda j: abs(j - i))][0]
        if all(i - k >= 0 and usable[i - k] and clip_of[i - k] == clip_of[i] for k in lags):   # every lag, or none
            lag_frames += 1
            for k in lags:
                found[f"the same shot's frame {k} earlier"] = masked_sse(
                    warp(np.ascontiguousarray(frames[i - k]), mesh[i - k]), real, mask)[0]
        for key, value in found.items():
            pooled[key].add((value, count))
        if progress:
            one = _Pooled()
            one.add(errors[order[0]])
            print(f"held-out frame {i}: best training frame {order[0]} {one.value():.2f} dB "
                  f"({n + 1}/{len(held)})", flush=True)
    figures = {k: p.value() for k, p in pooled.items() if p.count}
    return figures, {"training": len(train), "held out": len(held), "with every lag": lag_frames}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--train", default="0:97,152:174", help="the training frames (default: Megamind's identity A)")
    ap.add_argument("--held", default="174:197", help="the held-out frames")
    ap.add_argument("--held-data", help="take the held-out frames from this dataset instead (same size; e.g. "
                    "`posecast synth --kind face` with another motion seed)")
    ap.add_argument("--lags", default="1,2,4,8", help="warp the held-out shot's own frames from this many earlier")
    args = ap.parse_args(argv)
    ds = Dataset(args.data)
    hds = Dataset(args.held_data) if args.held_data else ds
    figures, n = bound(ds, hds, frames_of(args.train, ds), frames_of(args.held, hds),
                       [int(k) for k in args.lags.split(",") if k])
    print(f"\n{n['held out']} held-out frames ({n['with every lag']} with every lag in their shot), "
          f"{n['training']} training frames; face-region PSNR pooled as `posecast eval` pools it:")
    for key, value in figures.items():
        what = key if key.startswith("the same") else f"training frame warped, {key}"
        print(f"  {what:<45} {value:6.2f} dB")


if __name__ == "__main__":
    main()
