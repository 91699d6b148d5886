"""What the training frames say about a held-out face: every training frame, warped onto each held-out frame's own
face mesh (piecewise affine over MediaPipe's mesh triangles), scored by the face-region PSNR ``posecast eval``
reports (inside the face-mesh hull, squared error pooled over the frames).

It answers: could the training footage show the held-out face at all? For each held-out frame it keeps the best
training frame *as judged by that held-out frame itself* (an oracle: no model can choose this way), optionally
with the per-channel gain and offset that fit it best. A generator trained on those frames has only their pixels to
learn the face from; when even the oracle's pick, placed exactly on the held-out mesh, scores below a target, the
target asks for appearance the footage does not hold. For scale, it also warps the held-out shot's own real
frames from k frames earlier (``--lags``): how fast the face's appearance drifts from what a mesh warp explains.

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
from trainer.dataset import Dataset  # noqa: E402


def ranges(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        a, b = (int(x) for x in part.split(":"))
        out.extend(range(a, b))
    return out


class MeshWarp:
    """Warps any frame onto one destination mesh: the triangle under each destination pixel is found once."""

    def __init__(self, dst: np.ndarray, size: int):
        self.dst, self.tris = dst, mesh_triangles()
        self.tri_id = np.full((size, size), -1, np.int32)
        for k, tri in enumerate(self.tris):
            cv2.fillConvexPoly(self.tri_id, np.round(dst[tri] - 0.5).astype(np.int32), k)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.pix = np.stack([xx + 0.5, yy + 0.5, np.ones_like(xx)], -1)          # pixel centres, homogeneous

    def __call__(self, image: np.ndarray, src: np.ndarray) -> np.ndarray:
        d = np.concatenate([self.dst[self.tris], np.ones((len(self.tris), 3, 1), np.float32)], -1)   # (T, 3, 3)
        s = src[self.tris]                                                                              # (T, 3, 2)
        affine = np.linalg.solve(d, s)                                                                  # (T, 3, 2)
        whole = cv2.estimateAffinePartial2D(self.dst, src)[0]                                          # (2, 3)
        ids = self.tri_id
        maps = np.einsum("hwi,hwij->hwj", self.pix, affine[np.maximum(ids, 0)])
        maps = np.where((ids >= 0)[..., None], maps, self.pix @ whole.T) - 0.5
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


def sse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b) ** 2)[mask].sum())


def gain_fit(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``a`` with the per-channel gain and offset that bring it closest to ``b`` inside ``mask``."""
    out = a.astype(np.float64)
    for c in range(3):
        x, y = out[..., c][mask], b[..., c][mask].astype(np.float64)
        g, o = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)[0]
        out[..., c] = out[..., c] * g + o
    return np.clip(out, 0, 255)


def db(total_sse: float, count: int) -> float:
    return float(10 * np.log10(255.0 ** 2 / (total_sse / count)))


def bound(ds: Dataset, hds: Dataset, train: list[int], held: list[int], lags: list[int] = (),
          progress: bool = True) -> dict[str, float]:
    """The figures, in dB, keyed as printed: the training frames of ``ds`` warped onto the held-out frames of
    ``hds`` (the oracle's picks), and ``hds``' own frames ``lags`` earlier in the same clip. Frames without a
    whole mesh are left out."""
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
    pooled = {k: [0.0, 0] for k in keys}
    clip_of = np.full(len(hds), -1)
    for c, (a, b) in enumerate(hds.clips):
        clip_of[a:b] = c
    for n, i in enumerate(held):
        warp, real = MeshWarp(mesh[i], size), frames[i]
        mask = face_region(hds.landmarks[i], size, size).astype(bool)
        count = int(mask.sum()) * 3
        warped = {j: warp(np.ascontiguousarray(ds.frames[j]), meshes[0][j]) for j in train}
        errors = {j: sse(w, real, mask) for j, w in warped.items()}
        order = sorted(errors, key=errors.get)
        top = np.stack([warped[j][mask] for j in order[:blend_k]], -1).astype(np.float64)     # (P, 3, k)
        target = real[mask].astype(np.float64)
        weights = np.linalg.lstsq(top.reshape(-1, blend_k), target.ravel(), rcond=None)[0]
        found = {"best": errors[order[0]],
                 "best, gain-fitted": min(sse(gain_fit(w, real, mask), real, mask) for w in warped.values()),
                 "best per part": sum(min(sse(w, real, m) for w in warped.values())
                                      for m in part_masks(mesh[i], mask)),
                 f"best {blend_k} blended": float(((np.clip(top @ weights, 0, 255) - target) ** 2).sum())}
        if hds is ds:
            found["nearest in time"] = errors[min(train, key=lambda j: abs(j - i))]
        for k in lags:
            if i - k >= 0 and usable[i - k] and clip_of[i - k] == clip_of[i]:
                found[f"the same shot's frame {k} earlier"] = sse(
                    warp(np.ascontiguousarray(frames[i - k]), mesh[i - k]), real, mask)
        for key, value in found.items():
            pooled[key][0] += value
            pooled[key][1] += count
        if progress:
            print(f"held-out frame {i}: best training frame {order[0]} {db(errors[order[0]], count):.2f} dB "
                  f"({n + 1}/{len(held)})", flush=True)
    return {k: db(total, count) for k, (total, count) in pooled.items() if count}


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
    train, held = ranges(args.train), ranges(args.held)
    figures = bound(ds, hds, train, held, [int(k) for k in args.lags.split(",") if k])
    print(f"\n{len(held)} held-out frames, {len(train)} training frames; face-region PSNR pooled as "
          "`posecast eval` pools it:")
    for key, value in figures.items():
        what = key if key.startswith("the same") else f"training frame warped, {key}"
        print(f"  {what:<45} {value:6.2f} dB")


if __name__ == "__main__":
    main()
