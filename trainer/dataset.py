"""The posecast dataset folder: one format written by ``posecast synth`` and ``posecast prepare``.

Layout of a dataset folder ``DIR``::

    DIR/manifest.json   # metadata, see DatasetManifest
    DIR/frames.npy      # uint8   (N, H, W, 3)  RGB frames
    DIR/landmarks.npy   # float32 (N, K, 3)     per frame: x, y normalised to [0, 1] of the frame,
                        #                       3rd value = visibility in [0, 1] (pose) or z (face);
                        #                       a landmark that was not found is NaN
    DIR/flow.npy        # float16 (N, H, W, 2)  backward flow in pixels: frame[i](p) ~ frame[i-1](p + flow[i](p));
                        #                       flow[i] is zero at the first frame of every clip
    DIR/flow_conf.npy   # uint8   (N, H, W)     flow confidence, 0 (unreliable / occluded) .. 255 (reliable)

Frames are grouped into clips (``manifest.clips``, half-open ``[start, stop)`` ranges of frame indices):
frames inside a clip are consecutive in time; a clip boundary marks a cut or a run of frames without detection.

Writing is crash-safe: everything goes to ``DIR.partial/`` and is renamed to ``DIR`` only once complete.
On close the writer also stores the subject's statistics (``extra["subject_stats"]``, see
:func:`subject_stats_for`): computed once, when the landmarks are written, and carried by training into the
model's checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from models.posenorm import FaceCropConfig, face_stats, subject_stats

FORMAT_NAME = "posecast-dataset"
FORMAT_VERSION = 1

_ARRAYS = {
    # name: (dtype, per-frame shape builder (H, W, K) -> shape)
    "frames": (np.uint8, lambda h, w, k: (h, w, 3)),
    "landmarks": (np.float32, lambda h, w, k: (k, 3)),
    "flow": (np.float16, lambda h, w, k: (h, w, 2)),
    "flow_conf": (np.uint8, lambda h, w, k: (h, w)),
}
# Arrays a dataset may have: every frame's or none. masks: the person's mask, 0..255 (the synthetic dancer's and
# face's exact coverage; prepare's from MediaPipe's selfie segmentation).
_OPTIONAL_ARRAYS = {
    "masks": (np.uint8, lambda h, w, k: (h, w)),
}


# extra["subject_stats_version"]: datasets written before the writer stored complete statistics lack it.
SUBJECT_STATS_VERSION = 2


def subject_stats_for(kind: str, landmarks: np.ndarray, extra: dict, fps: float) -> dict | None:
    """What a model trained on these frames says about its subject (``subject_stats`` in its metadata; the server
    announces it and the capture client maps live landmarks with it, see :func:`models.posenorm.live_normalizer`).

    dance: the body measures of :func:`models.posenorm.subject_stats`, plus ``crop`` (the fixed crop box in
    source-frame height units and the source aspect) for videos made by ``posecast prepare``; face: the face
    proportions of :func:`models.posenorm.face_stats`, plus ``crop`` (the :class:`FaceCropConfig` the frames
    were cropped with). None when there is nothing to say (a synthetic dataset without visible torso).
    """
    extra = extra if isinstance(extra, dict) else {}
    crop = extra.get("crop") if isinstance(extra.get("crop"), dict) else {}
    lms = np.asarray(landmarks, np.float32)
    if kind == "face":
        stats = (face_stats(lms) if len(lms) else None) or {}
        cfg = FaceCropConfig.from_dict(crop, fps=extra.get("source_fps", fps))
        return {**stats, "crop": cfg.to_dict()}
    stats = (subject_stats(lms) if len(lms) else None) or {}
    if crop.get("mode") == "fixed" and "box_height_units" in crop:
        stats["crop"] = {"mode": "fixed", "box": [float(v) for v in crop["box_height_units"]],
                         "aspect": float(crop["aspect"])}
    return stats or None


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Selection:
    """The frames a run trains on (``Dataset.select``)."""
    ranges: tuple[tuple[int, int], ...]   # [start, stop) dataset frame ranges, each inside one clip
    clips: tuple[int, ...]                # the clips they come from
    identities: tuple[str, ...]           # the identities of those clips (from the clip table; empty: unknown)
    frames: int

    def mixed(self) -> str | None:
        """A warning when the frames span more than one identity, else None."""
        if len(self.identities) < 2:
            return None
        return (f"the {self.frames} training frames (clips {', '.join(map(str, self.clips))}) span identities "
                f"{', '.join(self.identities)}: a model of one person trains on one (--identity "
                f"{self.identities[0]}); the faces will be mixed")


@dataclasses.dataclass
class DatasetManifest:
    kind: str                      # "dance" (33 MediaPipe pose landmarks) or "face" (468/478 face-mesh landmarks)
    height: int                    # frame height in pixels
    width: int                     # frame width in pixels
    fps: float                     # frames per second of the source
    num_landmarks: int             # K: 33 for pose, 468 or 478 for face mesh
    num_frames: int = 0            # N
    clips: list = dataclasses.field(default_factory=list)           # [[start, stop), ...]
    source: str = ""               # where the frames came from (video path, "synth:seed=..")
    missing_frames: list = dataclasses.field(default_factory=list)  # source frame indices without detection
    extra: dict = dataclasses.field(default_factory=dict)           # producer-specific (crop box, synth params)
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetManifest":
        if not isinstance(d, dict):
            raise DatasetError(f"expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT_NAME:
            raise DatasetError(f"not a posecast dataset manifest (format={d.get('format')!r})")
        if d.get("version") != FORMAT_VERSION:
            raise DatasetError(f"dataset format version {d.get('version')} is not supported (expected {FORMAT_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise DatasetError(f"unknown manifest keys: {sorted(unknown)}")
        m = cls(**d)
        m.validate()
        return m

    def validate(self) -> None:
        """Every field of the right type and range (checked before anything is allocated from it)."""
        def is_int(v) -> bool:
            return type(v) is int

        for name in ("height", "width", "num_landmarks"):
            if not is_int(getattr(self, name)) or not 1 <= getattr(self, name) <= 1 << 14:
                raise DatasetError(f"field {name!r} must be an integer in [1, 16384], got {getattr(self, name)!r}")
        if not is_int(self.num_frames) or self.num_frames < 0:
            raise DatasetError(f"field 'num_frames' must be an integer >= 0, got {self.num_frames!r}")
        if type(self.fps) not in (int, float) or not math.isfinite(self.fps) or self.fps <= 0:
            raise DatasetError(f"field 'fps' must be a finite number > 0, got {self.fps!r}")
        if not isinstance(self.kind, str) or not isinstance(self.source, str):
            raise DatasetError("fields 'kind' and 'source' must be strings")
        if not isinstance(self.clips, list) or not all(
                isinstance(c, list) and len(c) == 2 and all(map(is_int, c)) for c in self.clips):
            raise DatasetError(f"field 'clips' must be a list of [start, stop] integer pairs, got "
                               f"{str(self.clips)[:80]}")
        if not isinstance(self.missing_frames, list) or not all(map(is_int, self.missing_frames)):
            raise DatasetError("field 'missing_frames' must be a list of integers")
        if not isinstance(self.extra, dict):
            raise DatasetError("field 'extra' must be an object")


class DatasetWriter:
    """Append frames clip by clip, then ``close()`` to publish the folder atomically.

    Example::

        with DatasetWriter(out, kind="dance", height=256, width=256, fps=30, num_landmarks=33) as w:
            w.begin_clip()
            for frame, lms, flow, conf in ...:
                w.add(frame, lms, flow, conf)   # flow/conf of the first frame of a clip are ignored (zeroed)
    """

    def __init__(self, path: str | os.PathLike, *, kind: str, height: int, width: int, fps: float,
                 num_landmarks: int, source: str = "", overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} already exists (--overwrite replaces it)")
        self.manifest = DatasetManifest(kind=kind, height=height, width=width, fps=float(fps),
                                        num_landmarks=num_landmarks, source=source)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        if self._tmp.exists():
            shutil.rmtree(self._tmp)
        self._tmp.mkdir(parents=True)
        self._raw = {name: open(self._tmp / f"{name}.raw", "wb") for name in _ARRAYS}
        self._has_masks: bool | None = None          # decided by the first frame added
        self._clip_start: int | None = None
        self._closed = False

    # -- writing -------------------------------------------------------------------------------
    def begin_clip(self) -> None:
        """Start a new clip; the previous one (if any) is closed. Empty clips are dropped."""
        self._end_clip()
        self._clip_start = self.manifest.num_frames

    def add(self, frame: np.ndarray, landmarks: np.ndarray, flow: np.ndarray | None = None,
            flow_conf: np.ndarray | None = None, mask: np.ndarray | None = None) -> None:
        """Append one frame. ``flow``/``flow_conf`` are backward (to the previous frame of the clip); ``mask``: the
        person's mask (uint8 0..255, or a float in [0, 1] / bool), given for every frame or for none."""
        if self._clip_start is None:
            self.begin_clip()
        m = self.manifest
        h, w, k = m.height, m.width, m.num_landmarks
        if self._has_masks is None:
            self._has_masks = mask is not None
            if self._has_masks:
                self._raw["masks"] = open(self._tmp / "masks.raw", "wb")
        elif self._has_masks != (mask is not None):
            raise ValueError(f"frame {m.num_frames}: a mask is given for every frame or for none "
                             f"({'this one has none' if mask is None else 'the first frame had none'})")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.uint8:
                mask = np.clip(mask.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            if mask.shape != (h, w):
                raise ValueError(f"masks: expected shape {(h, w)}, got {mask.shape}")
        first = self.manifest.num_frames == self._clip_start
        if flow is None or first:
            flow = np.zeros((h, w, 2), np.float16)
        if flow_conf is None or first:
            flow_conf = np.zeros((h, w), np.uint8) if first else np.full((h, w), 255, np.uint8)
        if flow_conf.dtype != np.uint8:  # accept [0, 1] floats
            flow_conf = np.clip(np.asarray(flow_conf, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        values = {"frames": frame, "landmarks": landmarks, "flow": flow, "flow_conf": flow_conf}
        arrays = {}
        for name, (dtype, shape_fn) in _ARRAYS.items():             # every array checked before any is written
            arrays[name] = arr = np.ascontiguousarray(values[name], dtype=dtype)
            expected = shape_fn(h, w, k)
            if arr.shape != expected:
                raise ValueError(f"{name}: expected shape {expected}, got {arr.shape}")
        for name, arr in arrays.items():
            self._raw[name].write(arr.tobytes())
        if mask is not None:
            self._raw["masks"].write(np.ascontiguousarray(mask).tobytes())
        m.num_frames += 1

    def note_missing(self, source_index: int) -> None:
        """Record a source frame that had no detection (it also ends the current clip)."""
        self.manifest.missing_frames.append(int(source_index))
        self._end_clip()

    def _end_clip(self) -> None:
        if self._clip_start is not None and self.manifest.num_frames > self._clip_start:
            self.manifest.clips.append([self._clip_start, self.manifest.num_frames])
        self._clip_start = None

    def close(self) -> Path:
        """Finish every array, write the manifest, and atomically move the folder into place."""
        if self._closed:
            return self.path
        self._end_clip()
        m = self.manifest
        for name, (dtype, shape_fn) in {**_ARRAYS, **_OPTIONAL_ARRAYS}.items():
            if name not in self._raw:
                continue
            self._raw[name].close()
            raw_path = self._tmp / f"{name}.raw"
            shape = (m.num_frames, *shape_fn(m.height, m.width, m.num_landmarks))
            with open(self._tmp / f"{name}.npy", "wb") as out, open(raw_path, "rb") as src:
                np.lib.format.write_array_header_1_0(
                    out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                          "shape": shape})
                shutil.copyfileobj(src, out, 16 << 20)
            raw_path.unlink()
        extra = m.extra if isinstance(m.extra, dict) else {}
        m.extra = {**extra, "subject_stats": subject_stats_for(
            m.kind, np.load(self._tmp / "landmarks.npy", mmap_mode="r"), extra, m.fps),
            "subject_stats_version": SUBJECT_STATS_VERSION}
        (self._tmp / "manifest.json").write_text(m.to_json())
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self._tmp, self.path)
        self._closed = True
        return self.path

    def abort(self) -> None:
        for f in self._raw.values():
            f.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Dataset:
    """Read-only view of a dataset folder (arrays are memory-mapped)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.is_file():
            raise DatasetError(f"{self.path}: no manifest.json — is this a dataset made by `posecast synth` "
                               f"or `posecast prepare`?")
        try:
            self.manifest = DatasetManifest.from_dict(json.loads(mpath.read_text()))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{mpath}: invalid JSON ({e})") from None
        except (DatasetError, TypeError) as e:  # TypeError: a field of the wrong kind for the dataclass
            raise DatasetError(f"{mpath}: {e}") from None
        m = self.manifest
        for name, (dtype, shape_fn) in _ARRAYS.items():
            f = self.path / f"{name}.npy"
            if not f.is_file():
                raise DatasetError(f"{self.path}: missing {f.name}")
            arr = np.load(f, mmap_mode="r")
            expected = (m.num_frames, *shape_fn(m.height, m.width, m.num_landmarks))
            if arr.shape != expected or arr.dtype != dtype:
                raise DatasetError(f"{f}: expected {np.dtype(dtype).name}{expected}, found {arr.dtype.name}{arr.shape}")
            setattr(self, name, arr)
        for name, (dtype, shape_fn) in _OPTIONAL_ARRAYS.items():
            f = self.path / f"{name}.npy"
            arr = np.load(f, mmap_mode="r") if f.is_file() else None
            expected = (m.num_frames, *shape_fn(m.height, m.width, m.num_landmarks))
            if arr is not None and (arr.shape != expected or arr.dtype != dtype):
                raise DatasetError(f"{f}: expected {np.dtype(dtype).name}{expected}, found {arr.dtype.name}{arr.shape}")
            setattr(self, name, arr)
        for start, stop in m.clips:
            if not (0 <= start < stop <= m.num_frames):
                raise DatasetError(f"{mpath}: clip [{start}, {stop}) is outside 0..{m.num_frames}")

    frames: np.ndarray
    landmarks: np.ndarray
    flow: np.ndarray
    flow_conf: np.ndarray
    masks: np.ndarray | None          # (N, H, W) uint8 person masks, when the dataset has them

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def clips(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in self.manifest.clips]

    def __len__(self) -> int:
        return self.manifest.num_frames

    def clip_identities(self) -> list[str]:
        """The identity of each clip (``clips`` order) from the clip table ``posecast prepare`` stored ("" where
        the dataset has none: a synthetic one, or one written by hand)."""
        extra = self.manifest.extra if isinstance(self.manifest.extra, dict) else {}
        table = extra.get("clip_table") if isinstance(extra.get("clip_table"), list) else []
        kept = {tuple(r["dataset"]): str(r.get("identity") or "") for r in table
                if isinstance(r, dict) and isinstance(r.get("dataset"), list) and len(r["dataset"]) == 2
                and all(type(v) is int for v in r["dataset"])}
        return [kept.get(c, "") for c in self.clips]

    def select(self, clips: list[int] | None = None, identity: str | None = None,
               frames: list[tuple[int, int]] | None = None) -> "Selection":
        """The frames to train on: the clips numbered ``clips`` (the clip table's numbers) and/or of ``identity``,
        within the dataset frame ranges ``frames`` (each [start, stop)); None: no restriction. Errors name what
        does not exist; nothing selected is an error."""
        ranges = self.clips
        ids = self.clip_identities()
        chosen = list(range(len(ranges)))
        if clips is not None:
            bad = [c for c in clips if not 0 <= c < len(ranges)]
            if bad:
                raise DatasetError(f"{self.path}: no clip {', '.join(map(str, bad))} (clips 0-{len(ranges) - 1})")
            chosen = [c for c in chosen if c in set(clips)]
        if identity is not None:
            known = sorted({i for i in ids if i})
            if identity not in known:
                raise DatasetError(f"{self.path}: no clip of identity {identity!r} (the clip table has "
                                   f"{', '.join(known) if known else 'no identities'})")
            chosen = [c for c in chosen if ids[c] == identity]
        picked = []
        for c in chosen:
            a, b = ranges[c]
            parts = sorted((max(a, fa), min(b, fb)) for fa, fb in frames or [(a, b)] if min(b, fb) > max(a, fa))
            merged: list[list[int]] = []
            for pa, pb in parts:   # overlapping or touching ranges are one: no frame twice, no clip cut in two
                if merged and pa <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], pb)
                else:
                    merged.append([pa, pb])
            picked += [(c, pa, pb) for pa, pb in merged]
        if not picked:
            raise DatasetError(f"{self.path}: no frames selected (clips {clips}, identity {identity}, frames "
                               f"{frames})")
        return Selection(tuple((a, b) for _, a, b in picked), tuple(sorted({c for c, _, _ in picked})),
                         tuple(sorted({ids[c] for c, _, _ in picked if ids[c]})), sum(b - a for _, a, b in picked))

    def subject_stats_of(self, ranges: tuple[tuple[int, int], ...] | None) -> dict | None:
        """The subject's statistics over the frames of ``ranges`` only (all frames: the stored ones)."""
        if ranges is None or sorted(ranges) == sorted(self.clips):
            return self.subject_stats
        rows = np.concatenate([np.arange(a, b) for a, b in ranges])
        extra = self.manifest.extra if isinstance(self.manifest.extra, dict) else {}
        return subject_stats_for(self.kind, np.asarray(self.landmarks[rows]), extra, self.manifest.fps)

    @property
    def subject_stats(self) -> dict | None:
        """The subject's statistics the writer stored (:func:`subject_stats_for`); computed here only for a dataset
        written before the writer stored them."""
        extra = self.manifest.extra if isinstance(self.manifest.extra, dict) else {}
        if extra.get("subject_stats_version") == SUBJECT_STATS_VERSION:
            return extra.get("subject_stats")
        return subject_stats_for(self.kind, self.landmarks, extra, self.manifest.fps)
