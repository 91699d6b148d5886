"""The MediaPipe files the page runs, fetched once at install time and served by the bridge.

The page never loads anything from the internet. ``posecast web-assets`` (``make web-assets``; ``make venv`` runs
it) downloads three npm packages from the registry, checks each tarball against the sha512 pinned here (npm's own
``dist.integrity``) and unpacks what the page needs:

- ``@mediapipe/tasks-vision``: MediaPipe's current web API (its JS module and wasm, SIMD and not). The page runs
  its ``PoseLandmarker`` for dance models, on the CPU (XNNPACK in wasm) unless told otherwise: ~18 ms a frame
  (lite) on this 2-core box, where the legacy ``@mediapipe/pose`` solution, which runs its models in WebGL, took 380-700 ms
  in Chromium's software WebGL (docs/performance.md).
- ``@mediapipe/pose`` (the legacy solution): only its two landmark models (lite and full). The pose
  landmarker's model bundles (``pose_landmarker_lite.task``, ``pose_landmarker_full.task``) are assembled from
  them and from the pose detector in the ``mediapipe`` wheel, with the input metadata the Tasks API needs
  (pixels scaled to [0, 1], as the legacy graph fed them) written by MediaPipe's own metadata writer
  (:func:`build_pose_tasks`). Google's ready-made ``.task`` files live outside the package registries. The
  landmark models lose their segmentation head on the way (:func:`without_output`): the page never asks for a
  person mask, and the head is 16 % of the lite model's arithmetic and most of its full-resolution memory
  traffic (24 -> 17.5 ms a frame in Chromium here, the same landmarks to the last bit).
- ``@mediapipe/face_mesh`` (the legacy solution, its wasm and models): the page runs it for face models.

Like pip fetching the wheels it is an install step: nothing is fetched at run time, and ``posecast web`` refuses
to start, naming the command, when the files are missing. The folder: ``$POSECAST_WEB_ASSETS``, else
``~/.cache/posecast/web``; one sub-folder per package and version, written whole or not at all.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"


@dataclasses.dataclass(frozen=True)
class Package:
    name: str            # npm name
    version: str
    integrity: str       # npm dist.integrity (sha512, base64)
    check: str           # a file that must be there (the one the page loads first)
    only: tuple = ()     # keep only these files (empty: every file)
    skip_suffixes: tuple = (".map", ".cjs", ".d.ts", ".md")
    subfolders: tuple = ()   # files of these package sub-folders are kept too, flattened into the folder

    @property
    def folder(self) -> str:
        return f"{self.name.split('/')[-1]}-{self.version}"

    @property
    def url(self) -> str:
        short = self.name.split("/")[-1]
        return f"{REGISTRY}/{self.name}/-/{short}-{self.version}.tgz"

    def keeps(self, name: str) -> bool:
        return (not self.only or name in self.only) and not name.endswith(self.skip_suffixes)


#: What the bridge serves under /assets/NAME/: the npm packages, and the pose model bundles built from them.
PACKAGES = {
    "tasks": Package("@mediapipe/tasks-vision", "1.1.0",
                     "sha512-ZJqh0wMKOINorfSffvDAxzyO1//c+FiG3IkzOdNDnLqvBB3DbMfj0bB/tys2SNf9S914sgoIbIpF4HTOi336cg==",
                     "vision_bundle.mjs", subfolders=("wasm",)),
    "pose-models": Package("@mediapipe/pose", "0.5.1675469404",
                           "sha512-DFZsNWTsSphRIZppnUCuunzBiHP2FdJXR9ehc7mMi4KG+oPaOH0Em3d6kr7Py+TSyTXC1doH88KcF28k2sBxsQ==",
                           "pose_landmark_full.tflite", only=("pose_landmark_lite.tflite", "pose_landmark_full.tflite")),
    "face": Package("@mediapipe/face_mesh", "0.4.1633559619",
                    "sha512-Vc8cdjxS5+O2gnjWH9KncYpUCVXT0h714KlWAsyqJvJbIgUJBqpppbIx8yWcAzBDxm/5cYSuBI5p5ySIPxzcEg==",
                    "face_mesh.js"),
}
POSE_TASKS = {"lite": "pose_landmarker_lite.task", "full": "pose_landmarker_full.task"}
POSE_TASKS_FOLDER = f"pose-landmarker-{PACKAGES['pose-models'].version}-noseg"   # a new build, a new folder
SEGMENTATION_OUTPUT = "Identity_2"   # the landmark models' person mask (1, 256, 256, 1), not used by the page
SERVED = {"tasks": PACKAGES["tasks"].folder, "face": PACKAGES["face"].folder, "pose": POSE_TASKS_FOLDER}


class AssetsMissing(FileNotFoundError):
    pass


def assets_root() -> Path:
    env = os.environ.get("POSECAST_WEB_ASSETS")
    return Path(env) if env else Path.home() / ".cache" / "posecast" / "web"


def package_dir(key: str, root: Path | None = None) -> Path:
    return (root or assets_root()) / PACKAGES[key].folder


def served_dir(name: str, root: Path | None = None) -> Path:
    """The folder the bridge serves as /assets/NAME/ (``tasks``, ``face``, ``pose``)."""
    return (root or assets_root()) / SERVED[name]


def _complete(d: Path, check: str) -> bool:
    return (d / check).is_file() and (d / ".complete").is_file()


def missing(root: Path | None = None) -> list[str]:
    """What is not (completely) in ``root``: ``name@version`` of packages, and the pose model bundles."""
    out = [f"{pkg.name}@{pkg.version}" for key, pkg in PACKAGES.items()
           if not _complete(package_dir(key, root), pkg.check)]
    if not _complete((root or assets_root()) / POSE_TASKS_FOLDER, POSE_TASKS["full"]):
        out.append("the pose landmarker bundles (built from @mediapipe/pose)")
    return out


def require(root: Path | None = None) -> Path:
    """``root`` (default :func:`assets_root`) when every package is there; else :class:`AssetsMissing` naming
    what is missing and the command that fetches it."""
    root = root or assets_root()
    gone = missing(root)
    if gone:
        raise AssetsMissing(f"the MediaPipe files the page runs are not in {root} ({', '.join(gone)}): run "
                            f"`posecast web-assets` (or `make web-assets`) once, with access to the npm registry")
    return root


def check_integrity(data: bytes, integrity: str) -> None:
    algo, _, want = integrity.partition("-")
    if algo != "sha512":
        raise ValueError(f"unsupported integrity {algo!r}")
    got = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != want:
        raise ValueError(f"integrity mismatch: expected sha512-{want[:16]}…, got sha512-{got[:16]}…")


def _atomic_dir(root: Path, folder: str, fill) -> Path:
    """``fill(tmp)`` writes a temporary folder under ``root``, which then replaces ``root/folder`` whole."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=root))
    try:
        fill(tmp)
        dest = root / folder
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        return dest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def unpack(pkg: Package, data: bytes, root: Path) -> Path:
    """Check ``data`` (the package's tarball) against its pinned integrity and unpack what the page needs to its
    folder under ``root``, atomically. Only plain files under ``package/`` (and its ``subfolders``, flattened)."""
    check_integrity(data, pkg.integrity)

    def fill(tmp: Path) -> None:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for m in tar.getmembers():
                name = m.name.removeprefix("package/")
                folder, _, base = name.rpartition("/")
                if folder in pkg.subfolders:
                    name = base
                if (not m.isfile() or not m.name.startswith("package/") or "/" in name or name.startswith(".")
                        or not name or not pkg.keeps(name)):
                    continue
                (tmp / name).write_bytes(tar.extractfile(m).read())
        (tmp / ".complete").write_text(f"{pkg.name}@{pkg.version} {pkg.integrity}\n")

    return _atomic_dir(root, pkg.folder, fill)


def without_output(model: bytes, output: str) -> bytes:
    """The TFLite ``model`` with the operators that only compute the graph output ``output`` removed, that
    output a constant of zeros (same name, shape and place, so a graph that expects it still gets it) and the
    weights no operator reads any more dropped. Every other output is computed exactly as before."""
    import flatbuffers
    import numpy as np
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    m = tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(model, 0))
    if len(m.subgraphs) != 1:
        raise ValueError(f"expected a model with one subgraph, got {len(m.subgraphs)}")
    g = m.subgraphs[0]
    names = {g.tensors[o].name.decode(): o for o in g.outputs}
    if output not in names:
        raise ValueError(f"the model has no output {output!r} (it has {', '.join(names)})")
    producer = {t: k for k, op in enumerate(g.operators) for t in op.outputs}

    def needed_for(tensor: int) -> set[int]:
        ops, todo = set(), [tensor]
        while todo:
            k = producer.get(todo.pop())
            if k is not None and k not in ops:
                ops.add(k)
                todo.extend(t for t in g.operators[k].inputs if t >= 0)
        return ops

    keep = set().union(*(needed_for(o) for o in g.outputs if o != names[output]))
    const = g.tensors[names[output]]
    if any(names[output] in g.operators[k].inputs for k in keep):
        raise ValueError(f"the model's output {output!r} also feeds its other outputs: it cannot be removed")
    if const.type != tfl.TensorType.FLOAT32 or not all(d > 0 for d in const.shape):
        raise ValueError(f"the model's output {output!r} is not a float32 tensor of a fixed shape")
    g.operators = [op for k, op in enumerate(g.operators) if k in keep]
    used = {t for op in g.operators for t in op.inputs if t >= 0} | set(g.inputs) | set(g.outputs)
    live = {g.tensors[k].buffer for k in used}
    for k, t in enumerate(g.tensors):
        if k not in used and t.buffer and t.buffer not in live:
            m.buffers[t.buffer].data = None                          # weights only the removed operators read
    zeros = tfl.BufferT()
    zeros.data = np.zeros(int(np.prod(const.shape)), np.float32).view(np.uint8)
    m.buffers.append(zeros)
    const.buffer = len(m.buffers) - 1
    fb = flatbuffers.Builder(len(model))
    fb.Finish(m.Pack(fb), file_identifier=b"TFL3")
    return bytes(fb.Output())


def with_input_metadata(landmark_model: bytes) -> bytes:
    """A pose landmark model with the metadata MediaPipe's Tasks API requires: input RGB, pixels / 255, and its
    five outputs described."""
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer as mw

    writer = mw.MetadataWriter.create(bytearray(landmark_model))
    writer.add_general_info("pose landmarks", "MediaPipe pose landmark model (from @mediapipe/pose)")
    writer.add_image_input(norm_mean=[0.0], norm_std=[255.0])
    for name in ("landmarks", "presence", "segmentation", "heatmap", "world_landmarks"):
        writer.add_feature_output(name=name)
    return bytes(writer.populate()[0])


def pose_task(landmark_model: bytes, detector: bytes) -> dict[str, bytes]:
    """The files of a pose landmarker bundle: the detector as it is, the landmark model without its
    segmentation head (:func:`without_output`) and with the Tasks API's metadata (:func:`with_input_metadata`)."""
    return {"pose_detector.tflite": detector,
            "pose_landmarks_detector.tflite": with_input_metadata(without_output(landmark_model, SEGMENTATION_OUTPUT))}


def build_pose_tasks(root: Path) -> Path:
    """``pose_landmarker_{lite,full}.task`` from the legacy package's landmark models and the ``mediapipe``
    wheel's pose detector, into their own folder (atomically)."""
    import mediapipe
    from mediapipe.tasks.python.metadata.metadata_writers.model_asset_bundle_utils import create_model_asset_bundle

    detector = (Path(mediapipe.__file__).parent / "modules" / "pose_detection" / "pose_detection.tflite").read_bytes()
    models = package_dir("pose-models", root)

    def fill(tmp: Path) -> None:
        for variant, task in POSE_TASKS.items():
            files = pose_task((models / f"pose_landmark_{variant}.tflite").read_bytes(), detector)
            create_model_asset_bundle(files, str(tmp / task))
        (tmp / ".complete").write_text(f"built from {PACKAGES['pose-models'].name}@{PACKAGES['pose-models'].version}"
                                       f" and mediapipe {mediapipe.__version__}\n")

    return _atomic_dir(root, POSE_TASKS_FOLDER, fill)


def fetch(root: Path | None = None, *, log=print, opener=urllib.request.urlopen) -> Path:
    """Download and unpack every package that is missing from ``root``, then build the pose bundles; returns
    ``root``."""
    root = root or assets_root()
    for kind, pkg in PACKAGES.items():
        if f"{pkg.name}@{pkg.version}" not in missing(root):
            log(f"{pkg.name}@{pkg.version}: already in {root}")
            continue
        log(f"{pkg.name}@{pkg.version}: downloading {pkg.url}")
        with opener(pkg.url, timeout=120) as r:
            data = r.read()
        dest = unpack(pkg, data, root)
        log(f"{pkg.name}@{pkg.version}: {len(data) / 1e6:.1f} MB checked (sha512) and unpacked to {dest}")
    if not _complete(root / POSE_TASKS_FOLDER, POSE_TASKS["full"]):
        log(f"pose landmarker bundles: built in {build_pose_tasks(root)}")
    for old in root.glob("pose-landmarker-*"):            # earlier builds of the bundles, never served again
        if old.name != POSE_TASKS_FOLDER and old.is_dir():
            shutil.rmtree(old)
            log(f"removed an earlier build of the pose landmarker bundles: {old}")
    return root
