"""The MediaPipe JS solutions the page runs, fetched once at install time and served by the bridge.

The page never loads anything from the internet: ``@mediapipe/pose`` and ``@mediapipe/face_mesh`` (the legacy
JS solutions; each npm package carries its wasm, its graph and its models) are downloaded from the npm registry
by ``posecast web-assets`` (``make web-assets``; ``make venv`` runs it) into a cache folder, checked against the
sha512 pinned here (npm's own ``dist.integrity``), and served from there. Like pip fetching the wheels, it is an
install step: nothing is fetched at run time, and ``posecast web`` refuses to start, naming the command, when the
files are missing.

The folder: ``$POSECAST_WEB_ASSETS``, else ``~/.cache/posecast/web``; one sub-folder per package and version
(``pose-0.5.1675469404/``), written whole or not at all.
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
    script: str          # the file the page loads with <script>
    skip: tuple = ()     # files of the tarball not needed (not served)

    @property
    def folder(self) -> str:
        return f"{self.name.split('/')[-1]}-{self.version}"

    @property
    def url(self) -> str:
        short = self.name.split("/")[-1]
        return f"{REGISTRY}/{self.name}/-/{short}-{self.version}.tgz"


PACKAGES = {
    "dance": Package("@mediapipe/pose", "0.5.1675469404",
                     "sha512-DFZsNWTsSphRIZppnUCuunzBiHP2FdJXR9ehc7mMi4KG+oPaOH0Em3d6kr7Py+TSyTXC1doH88KcF28k2sBxsQ==",
                     "pose.js", skip=("pose_landmark_heavy.tflite",)),     # 28 MB; the page uses lite/full
    "face": Package("@mediapipe/face_mesh", "0.4.1633559619",
                    "sha512-Vc8cdjxS5+O2gnjWH9KncYpUCVXT0h714KlWAsyqJvJbIgUJBqpppbIx8yWcAzBDxm/5cYSuBI5p5ySIPxzcEg==",
                    "face_mesh.js"),
}


class AssetsMissing(FileNotFoundError):
    pass


def assets_root() -> Path:
    env = os.environ.get("POSECAST_WEB_ASSETS")
    return Path(env) if env else Path.home() / ".cache" / "posecast" / "web"


def package_dir(kind: str, root: Path | None = None) -> Path:
    return (root or assets_root()) / PACKAGES[kind].folder


def missing(root: Path | None = None) -> list[str]:
    """The packages not (completely) in ``root``, as ``name@version``."""
    out = []
    for kind, pkg in PACKAGES.items():
        d = package_dir(kind, root)
        if not (d / pkg.script).is_file() or not (d / ".complete").is_file():
            out.append(f"{pkg.name}@{pkg.version}")
    return out


def require(root: Path | None = None) -> Path:
    """``root`` (default :func:`assets_root`) when every package is there; else :class:`AssetsMissing` naming
    what is missing and the command that fetches it."""
    root = root or assets_root()
    gone = missing(root)
    if gone:
        raise AssetsMissing(f"the MediaPipe JS files the page runs are not in {root} ({', '.join(gone)}): run "
                            f"`posecast web-assets` (or `make web-assets`) once, with access to the npm registry")
    return root


def check_integrity(data: bytes, integrity: str) -> None:
    algo, _, want = integrity.partition("-")
    if algo != "sha512":
        raise ValueError(f"unsupported integrity {algo!r}")
    got = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != want:
        raise ValueError(f"integrity mismatch: expected sha512-{want[:16]}…, got sha512-{got[:16]}…")


def unpack(pkg: Package, data: bytes, root: Path) -> Path:
    """Check ``data`` (the package's tarball) against its pinned integrity and unpack it to its folder under
    ``root``, atomically (a temporary folder renamed into place). Only plain files under ``package/``."""
    check_integrity(data, pkg.integrity)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{pkg.folder}.", dir=root))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for m in tar.getmembers():
                name = m.name.removeprefix("package/")
                if not m.isfile() or name == m.name or "/" in name or name.startswith(".") or name in pkg.skip:
                    continue
                src = tar.extractfile(m)
                (tmp / name).write_bytes(src.read())
        (tmp / ".complete").write_text(f"{pkg.name}@{pkg.version} {pkg.integrity}\n")
        dest = root / pkg.folder
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        return dest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fetch(root: Path | None = None, *, log=print, opener=urllib.request.urlopen) -> Path:
    """Download and unpack every package that is missing from ``root``; returns ``root``."""
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
    return root
