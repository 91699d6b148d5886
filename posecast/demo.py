"""``posecast demo``: the whole live pipeline on loopback with the bundled model.

A server (realtime/server.py) on a free loopback port, the capture client (clients/capture.py) streaming the
built-in synthetic dance (or a webcam / video with ``--source``), and a recording of input | output.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import models

DEFAULT_MODEL = Path(models.__file__).resolve().parent / "default"


def bundled_model() -> Path:
    """The bundled default model, a `lite` dance model (see models/default/README.md for the command that made it)."""
    if not (DEFAULT_MODEL / "generator.json").is_file():
        raise FileNotFoundError(f"the bundled model is missing: {DEFAULT_MODEL}/generator.json")
    return DEFAULT_MODEL


def demo(model: str | os.PathLike | None = None, *, source: str = "synthetic", frames: int = 300,
         out: str | os.PathLike = "demo/out.mp4", backend: str | None = None, headless: bool = True,
         realtime: bool = True, log_level: int = logging.WARNING) -> dict:
    """Serve ``model`` (default: the bundled one) on loopback and stream ``frames`` frames from ``source``.

    Returns the summary: frames_sent, frames_received, dropped, fps, latency_p50_ms, latency_p99_ms, output.
    """
    from clients.capture import capture
    from realtime.engine import list_backends

    from .process import server_process

    logging.getLogger("posecast").setLevel(log_level)
    model = Path(model) if model else bundled_model()
    backend = backend or ("onnxruntime" if "onnxruntime" in list_backends() else "torch")
    extra: tuple[str, ...] = ()
    if backend == "onnxruntime" and not os.access(model if model.is_dir() else model.parent, os.W_OK):
        # An installed, read-only model folder: the server keeps its exported ONNX in the user's cache instead.
        extra = ("--onnx-cache", str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "posecast"))
    # The server runs in its own process (as it would on a GPU box), the capture client in this one.
    with server_process(model, backend, extra_args=extra) as address:
        stats = capture(address, source, record=out, headless=headless, max_frames=frames, realtime=realtime,
                        timeout_s=30.0)
    return {
        "frames_sent": stats.frames_sent,
        "frames_received": stats.frames_received,
        "dropped": stats.dropped,
        "fps": round(stats.fps, 2),
        "latency_p50_ms": None if stats.latency_p50_ms is None else round(stats.latency_p50_ms, 2),
        "latency_p99_ms": None if stats.latency_p99_ms is None else round(stats.latency_p99_ms, 2),
        "output": stats.output,
        "model": str(model),
        "backend": backend,
        "stages_ms": {k: round(v, 2) for k, v in stats.stages.items() if v is not None},
        "errors": stats.errors,
    }
