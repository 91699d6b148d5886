"""Atomic file writes: THE one implementation every writer in posecast uses (checkpoints, ONNX / TensorRT
files and their sidecars, landmark recordings).

A file is written to a temporary name in its own folder and moved into place with ``os.replace``, so a reader
sees the old file or the new one, never half of one, and a crash leaves no partial file behind. Imports only the
standard library (clients use it without loading torch).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], *, fsync: bool = False,
                 tmp_suffix: str = "") -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, which then replaces ``path``.

    ``write``      called with the temporary file's path (a str); it may reopen, truncate or replace that file.
    ``fsync``      flush the file to disk before the rename (durable against power loss, not only crashes).
    ``tmp_suffix`` appended to the temporary name, for writers that choose a format by file suffix
                   (``tt.save`` wants ``.ep``). The temporary name is ``.NAME.<8 random chars>.tmp`` + suffix.

    The parent folder is created. The file gets the usual permissions (0666 minus the umask; ``mkstemp`` alone
    would make it 0600). On any failure the temporary file is removed and the exception re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{tmp_suffix}")
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
