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
    """The bundled default `dance` model (see models/default/README.md for the command that made it)."""
    if not (DEFAULT_MODEL / "generator.json").is_file():
        raise FileNotFoundError(f"the bundled model is missing: {DEFAULT_MODEL}/generator.json")
    return DEFAULT_MODEL


def demo(model: str | os.PathLike | None = None, *, source: str = "synthetic", frames: int = 300,
         out: str | os.PathLike = "demo/out.mp4", backend: str | None = None, headless: bool = True,
         realtime: bool = True, log_level: int = logging.WARNING) -> dict:
    """Serve ``model`` (default: the bundled one) on loopback and stream ``frames`` frames from ``source``.

    Returns the summary: frames_sent, frames_received, dropped, fps, latency_p50_ms, latency_p99_ms, output.
    """
    from realtime.engine import list_backends, open_engine
    from realtime.server import Server

    from .capture import capture

    logging.getLogger("posecast").setLevel(log_level)
    model = Path(model) if model else bundled_model()
    backend = backend or ("onnxruntime" if "onnxruntime" in list_backends() else "torch")
    kwargs = {}
    if backend == "onnxruntime" and not os.access(model if model.is_dir() else model.parent, os.W_OK):
        # An installed, read-only model folder: keep the exported ONNX in the user's cache instead.
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "posecast"
        cache.mkdir(parents=True, exist_ok=True)
        kwargs["onnx_path"] = cache / f"{model.name}.onnx"
    engine = open_engine(model, backend, **kwargs)
    with Server(engine, "tcp://127.0.0.1:0", stats_interval_s=3600) as server:
        server.start()
        stats = capture(server.endpoint, source, record=out, headless=headless, max_frames=frames,
                        realtime=realtime)
        server_stats = server.stats()
    return {
        "frames_sent": stats.frames_sent,
        "frames_received": stats.frames_received,
        "dropped": stats.dropped,
        "fps": round(stats.fps, 2),
        "latency_p50_ms": None if stats.latency_p50_ms is None else round(stats.latency_p50_ms, 2),
        "latency_p99_ms": None if stats.latency_p99_ms is None else round(stats.latency_p99_ms, 2),
        "output": stats.output,
        "model": str(model),
        "backend": engine.backend,
        "stages_ms": {k: round(v, 2) for k, v in stats.stages.items() if v is not None},
        "server_errors": server_stats.get("errors", 0),
    }
