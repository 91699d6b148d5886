"""Forecasting tools on top of every layer: ``posecast forecast-video`` (what forecasting the pose does to the
frame on screen, as a video) and ``stream_shots`` (a recorded stream for ``posecast bench --forecast --stream``).

The video:

Three panels side by side, at every displayed frame of the synthetic dancer's motion (``seed``: pick one nobody
trained the forecaster on): the pose *now*, in front of the camera (its label map); the model's output from the
landmarks captured one latency ago (what a client shows without forecasting); and its output from the
landmarks forecast one latency ahead by the learned forecaster. The true pose of the moment is drawn over both
outputs as a thin skeleton, and each panel prints its display-time pose error (models/forecast.py). The landmarks
the client sees carry Gaussian noise (``noise``, frame fractions), like MediaPipe's.

Offline and deterministic (every frame rendered, no network): the live counterpart is ``posecast capture
--emulate-latency MS``, which reports the same error of the frames it shows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np

_TRUTH = (90, 255, 120)     # the true pose, drawn over the outputs (RGB)


def _panel(rgb: np.ndarray, title: str, line2: str, truth: np.ndarray | None) -> np.ndarray:
    from models.landmarks import POSE_CONNECTIONS

    img = np.ascontiguousarray(rgb.copy())
    h, w = img.shape[:2]
    if truth is not None:
        ok = np.nan_to_num(truth[:, 2], nan=0.0) >= 0.5
        pts = np.round(np.nan_to_num(truth[:, :2]) * (w, h) * 16).astype(np.int32)
        for a, b in sorted(POSE_CONNECTIONS):
            if ok[a] and ok[b]:
                cv2.line(img, tuple(pts[a]), tuple(pts[b]), _TRUTH, 1, cv2.LINE_AA, 4)
    scale = max(0.35, w / 640)
    for j, text in enumerate((title, line2)):
        y = int(18 * scale / 0.4) * (j + 1)
        cv2.putText(img, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def forecast_video(out: str | os.PathLike = "demo/forecast.mp4", *, model: str | os.PathLike | None = None,
                   latency_ms: float = 100.0, seed: int = 8, seconds: float = 10.0, fps: float = 30.0,
                   noise: float = 0.002, forecaster: str | os.PathLike | None = None, backend: str | None = None,
                   progress: bool = True) -> dict:
    """Write the side-by-side video to ``out``; returns the mean display-time pose error of each output stream
    (``error_none``, ``error_forecast``, frame fractions, over the ``scored`` frames: those with a joint seen both
    in what was shown and at display time; NaN where none was), ``frames`` (written) and ``output``."""
    from tqdm import tqdm

    from clients.sources import preview_image
    from models.forecast import make_forecaster
    from models.motion import DanceMotion
    from models.visualize import VideoWriter
    from posecast.demo import bundled_model
    from realtime.engine import list_backends, open_engine
    from realtime.session import open_session

    if not 0 <= latency_ms <= 1000:
        raise ValueError(f"latency_ms must be in [0, 1000], got {latency_ms}")
    if seconds <= 0 or fps <= 0:
        raise ValueError(f"seconds ({seconds}) and fps ({fps}) must be > 0")
    model = Path(model) if model else bundled_model()
    backend = backend or ("onnxruntime" if "onnxruntime" in list_backends() else "torch")
    engine = open_engine(model, backend)
    if engine.cfg.kind != "dance":
        raise ValueError(f"{model} is a {engine.cfg.kind} model: the forecast video drives a dance model with the "
                         f"synthetic dancer")
    late, ahead = open_session(engine, "no forecast"), open_session(engine, "forecast")
    fc = make_forecaster("learned", "dance", learned=forecaster)
    exact = DanceMotion(seed, fps=1000.0)                        # the pose at any millisecond

    def truth_at(t: float) -> np.ndarray:
        return exact.landmarks(int(round(t * 1000.0)))

    rng = np.random.default_rng([seed, 2])
    lead = latency_ms / 1e3
    size = engine.cfg.size
    errors = {"none": [], "forecast": []}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = VideoWriter(out, fps=fps)
    try:
        for k in tqdm(range(int(seconds * fps)), desc="forecast video", disable=not progress):
            t = k / fps                                            # capture time of sample k
            seen = truth_at(t).copy()
            seen[:, :2] += rng.normal(0.0, noise, seen[:, :2].shape).astype(np.float32)
            fc.update(t, seen)
            shown = {"none": seen, "forecast": fc.predict(lead)}
            now = truth_at(t + lead)                               # the pose when the frame is on screen
            panels = [_panel(preview_image("dance", now, size), "the pose now (camera)", f"seed {seed}", None)]
            for name, session, title in (("none", late, f"no forecast ({latency_ms:g} ms late)"),
                                         ("forecast", ahead, f"forecast {latency_ms:g} ms ahead")):
                rgb, _ = session.step(shown[name])
                ok = (np.nan_to_num(now[:, 2]) >= 0.5) & (np.nan_to_num(shown[name][:, 2]) >= 0.5)
                err = float(np.linalg.norm(shown[name][ok, :2] - now[ok, :2], axis=1).mean()) if ok.any() else None
                if err is not None:                                # (no joint seen in both: nothing to score)
                    errors[name].append(err)
                panels.append(_panel(rgb, title, "error -" if err is None else f"error {err * size:.1f} px "
                                     "(green: now)", now))
            writer.write(np.hstack(panels))
    finally:
        writer.close()
    return {"output": str(out), "frames": int(seconds * fps), "scored": len(errors["none"]),
            "latency_ms": latency_ms, "seed": seed,
            "error_none": float(np.mean(errors["none"])) if errors["none"] else float("nan"),
            "error_forecast": float(np.mean(errors["forecast"])) if errors["forecast"] else float("nan"),
            "model": str(model), "backend": backend}


def stream_shots(path: str | Path, kind: str = "face", *, progress: bool = True) -> list:
    """A recorded landmark stream as its uninterrupted shots (models/forecast.py ``Shot``: times, landmarks and,
    from a video of a face, each frame's step measured on the image as the capture client measures it) for
    ``bench_forecast_stream``: a landmark recording (``capture --save-landmarks``, its capture times, or its fps)
    or a video (MediaPipe ``kind`` in tracking mode, as the capture client runs it, and the shot cuts ``prepare``
    finds). A shot also ends where nothing was detected."""
    from tqdm import tqdm

    from models.forecast import HeadMotion, Shot
    from trainer.prepare import _detect_cuts, _frame_change

    path = Path(path)
    if path.suffix == ".npz":
        from clients.sources import load_recording

        rec = load_recording(path)
        lms, ts = rec["landmarks"], rec["capture_ts"]
        times = ts - ts[0] if np.isfinite(ts).all() else np.arange(len(lms)) / rec["fps"]
        starts = np.zeros(len(lms), bool)
        steps = step_ms = None
    else:
        from models.detect import LandmarkExtractor

        if not path.exists():
            raise FileNotFoundError(f"video not found: {path}")
        cap = cv2.VideoCapture(str(path))
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not cap.isOpened() or not fps or fps <= 0:
            raise ValueError(f"{path}: not a readable video")
        frames, diffs, hdiffs, prev = [], [], [], None
        motion = HeadMotion() if kind == "face" else None
        steps, step_ms = [], []
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        with LandmarkExtractor(kind) as ex, tqdm(total=total, desc="landmarks", disable=not progress) as bar:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                frames.append(ex(rgb))
                if motion is not None:
                    t0 = time.perf_counter()
                    step = motion(rgb, frames[-1])
                    step_ms.append((time.perf_counter() - t0) * 1e3)
                    steps.append(np.full(2, np.nan, np.float32) if step is None else step)
                diff, hdiff, prev = _frame_change(rgb, prev)
                diffs.append(diff)
                hdiffs.append(hdiff)
                bar.update()
        cap.release()
        if not frames:
            raise ValueError(f"{path}: no frame could be read")
        k = next((f.shape[0] for f in frames if f is not None), 1)
        lms = np.stack([np.full((k, 3), np.nan, np.float32) if f is None else f.astype(np.float32) for f in frames])
        times = np.arange(len(lms)) / fps
        starts = _detect_cuts(np.array(diffs), np.array(hdiffs))
        steps, step_ms = (np.array(steps, np.float32), np.array(step_ms)) if motion is not None else (None, None)
    found = np.isfinite(lms[:, :, :2]).any((1, 2))
    shots, cur = [], []
    for i in range(len(lms)):
        if (starts[i] or not found[i]) and cur:
            shots.append(cur)
            cur = []
        if found[i]:
            cur.append(i)
    if cur:
        shots.append(cur)
    return [Shot(times[s], lms[s], None if steps is None else steps[s], None if step_ms is None else step_ms[s])
            for s in shots]
