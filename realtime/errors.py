"""The live side's error type, below both modules that raise it.

``realtime/engine.py`` (loading and running backends) uses ``realtime/export.py`` (ONNX / TensorRT builds and
caches); both raise ``EngineError``. It lives here so that export.py does not import engine.py back (the two used
to import each other). ``realtime.engine.EngineError`` is the same class, for callers.
"""

from __future__ import annotations


class EngineError(RuntimeError):
    """A backend is unavailable here, or an engine cannot be built/loaded."""
