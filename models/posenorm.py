"""Body-scale statistics of a training subject, saved with the model, used to map a live person onto it."""

from __future__ import annotations

import numpy as np

L_SHOULDER, R_SHOULDER, L_HIP, R_HIP = 11, 12, 23, 24


def subject_stats(landmarks: np.ndarray, visibility_threshold: float = 0.5) -> dict | None:
    """Median shoulder width, shoulder/hip centres and torso length of pose landmarks (N, 33, 3).

    All values are in normalised frame coordinates. None when no frame shows both shoulders and hips.
    """
    lm = np.asarray(landmarks, np.float32)
    if lm.ndim != 3 or lm.shape[1] != 33:
        return None
    core = lm[:, [L_SHOULDER, R_SHOULDER, L_HIP, R_HIP]]
    ok = np.isfinite(core).all(axis=(1, 2)) & (core[:, :, 2] >= visibility_threshold).all(axis=1)
    if not ok.any():
        return None
    core = core[ok, :, :2]
    sh_c = core[:, :2].mean(axis=1)
    hip_c = core[:, 2:].mean(axis=1)
    return {
        "frames": int(ok.sum()),
        "shoulder_width": float(np.median(np.linalg.norm(core[:, 0] - core[:, 1], axis=1))),
        "torso_length": float(np.median(np.linalg.norm(sh_c - hip_c, axis=1))),
        "shoulder_center": [float(v) for v in np.median(sh_c, axis=0)],
        "hip_center": [float(v) for v in np.median(hip_c, axis=0)],
    }
