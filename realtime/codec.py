"""The picture codec of the wire, next to the protocol: the server encodes each generated RGB frame to JPEG,
clients (capture, its web view, the web bridge's page through the browser) decode it. One place for the colour
order (RGB everywhere in posecast; OpenCV's BGR only inside this module) and the quality."""

from __future__ import annotations

import cv2
import numpy as np

DEFAULT_QUALITY = 90


class JpegEncoder:
    """RGB uint8 (H, W, 3) -> JPEG bytes at ``quality`` (1-100). ``size``: frames of this side reuse one
    conversion buffer (the server's frames all have the model's size)."""

    def __init__(self, quality: int = DEFAULT_QUALITY, size: int | None = None):
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {quality}")
        self.quality = int(quality)
        self._params = [cv2.IMWRITE_JPEG_QUALITY, self.quality]
        self._bgr = np.empty((size, size, 3), np.uint8) if size else None

    def __call__(self, rgb: np.ndarray) -> bytes:
        bgr = self._bgr if self._bgr is not None and self._bgr.shape == rgb.shape else None
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR, dst=bgr)
        ok, jpeg = cv2.imencode(".jpg", bgr, self._params)
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return jpeg.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray | None:
    """JPEG bytes -> RGB uint8 (H, W, 3), or None when they are not a decodable image."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
