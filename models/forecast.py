"""Landmark smoothing and short-term forecasting: the frame on screen should show the pose of *now*, not of one
glass-to-glass latency ago.

* ``OneEuroFilter`` (Casiez, Roussel & Vogel, CHI 2012): the field's standard for jittery tracker output — a
  low-pass filter whose cutoff rises with the speed, so slow motion is smoothed and fast motion is not lagged.
* Forecasters, one interface: ``update(t, landmarks)`` with each new sample (t in seconds), then
  ``predict(horizon_s)``: the landmarks expected ``horizon_s`` after the last sample.
  - ``NoForecast``: the last sample (what is shown today);
  - ``ConstantVelocity``: the last sample moved on by the velocity between the last two (of the smoothed stream).

Landmarks are ``(K, 3)`` float arrays normalised to the frame (models/render.py): only x and y are smoothed and
forecast; column 2 (a pose's visibility, a face mesh's depth) passes through. A landmark that is missing (NaN) or,
for poses, not visible (visibility < ``VISIBLE``) in the newest sample stays exactly as it came: a forecast never
invents a hidden joint, and a joint that reappears starts afresh. Imports numpy only (client and server alike).
"""

from __future__ import annotations

import math

import numpy as np

VISIBLE = 0.5   # pose landmarks below this visibility are hidden (models/crop.py uses the same threshold)
ONE_EURO = {"min_cutoff": 1.5, "beta": 2.0}   # the filter's settings in front of the forecasters (chosen on seed 7)


def _present(lm: np.ndarray, has_visibility: bool) -> np.ndarray:
    """(K,) bool: the landmark's x and y are finite (and, with visibility, it is visible)."""
    ok = np.isfinite(lm[:, :2]).all(1)
    if has_visibility:
        with np.errstate(invalid="ignore"):
            ok &= lm[:, 2] >= VISIBLE
    return ok


class OneEuroFilter:
    """One Euro filter over (K, 3) landmarks' x and y, sample by sample: ``__call__(t, landmarks)`` -> filtered
    landmarks. ``min_cutoff`` (Hz) sets the smoothing at rest, ``beta`` how fast the cutoff rises with speed
    (normalised units per second), ``d_cutoff`` (Hz) the smoothing of the speed estimate (the paper's defaults:
    1, 0, 1; MediaPipe's landmark smoothing uses a similar filter). ``has_visibility``: column 2 is a visibility
    (poses), not a depth (face meshes)."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0,
                 has_visibility: bool = True):
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError(f"One Euro filter: min_cutoff ({min_cutoff}) and d_cutoff ({d_cutoff}) must be > 0, "
                             f"beta ({beta}) >= 0")
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.has_visibility = has_visibility
        self.reset()

    def reset(self) -> None:
        self._t: float | None = None
        self._x: np.ndarray | None = None      # (K, 2) filtered positions (NaN: no state)
        self._dx: np.ndarray | None = None     # (K, 2) filtered speeds

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, t: float, landmarks: np.ndarray) -> np.ndarray:
        lm = np.array(landmarks, np.float32, copy=True)
        ok = _present(lm, self.has_visibility)
        xy = lm[:, :2].astype(np.float64)
        if self._x is None or self._t is None or t <= self._t:
            fresh = np.ones(len(lm), bool)
            self._x = np.full_like(xy, np.nan)
            self._dx = np.zeros_like(xy)
            dt = None
        else:
            fresh = ~np.isfinite(self._x).all(1)
            dt = t - self._t
        out = xy.copy()
        if dt is not None:
            go = ok & ~fresh
            dx = (xy[go] - self._x[go]) / dt
            dx_hat = self._dx[go] + self._alpha(self.d_cutoff, dt) * (dx - self._dx[go])
            cutoff = self.min_cutoff + self.beta * np.linalg.norm(dx_hat, axis=1, keepdims=True)
            out[go] = self._x[go] + self._alpha(cutoff, dt) * (xy[go] - self._x[go])
            self._dx[go] = dx_hat
        start = ok & fresh
        self._dx[start] = 0.0
        self._x[ok] = out[ok]
        self._x[~ok] = np.nan                   # hidden now: starts afresh when it comes back
        self._t = float(t)
        lm[ok, :2] = out[ok]
        return lm


class Forecaster:
    """``update(t, landmarks)`` with each sample, ``predict(horizon_s)`` for the landmarks expected that long after
    the last one; ``reset()`` forgets the stream."""

    name = "none"

    def __init__(self, has_visibility: bool = True):
        self.has_visibility = has_visibility
        self.reset()

    def reset(self) -> None:
        self._last: tuple[float, np.ndarray] | None = None

    def update(self, t: float, landmarks: np.ndarray) -> None:
        self._last = (float(t), np.array(landmarks, np.float32, copy=True))

    def predict(self, horizon_s: float) -> np.ndarray:
        if self._last is None:
            raise ValueError("predict() before any update()")
        return self._last[1].copy()


class NoForecast(Forecaster):
    """The last sample: the pose of one latency ago (no forecast)."""


class ConstantVelocity(Forecaster):
    """The last sample moved on by its velocity (the difference of the last two samples over their time apart):
    exact for motion at constant velocity. Landmarks hidden or missing in either sample stay as they came."""

    name = "constant_velocity"

    def reset(self) -> None:
        super().reset()
        self._prev: tuple[float, np.ndarray] | None = None

    def update(self, t: float, landmarks: np.ndarray) -> None:
        self._prev = self._last
        super().update(t, landmarks)

    def predict(self, horizon_s: float) -> np.ndarray:
        out = super().predict(horizon_s)
        if self._prev is None or horizon_s == 0:
            return out
        (t0, a), (t1, b) = self._prev, self._last
        if t1 <= t0:
            return out
        ok = _present(a, self.has_visibility) & _present(b, self.has_visibility)
        out[ok, :2] = b[ok, :2] + (b[ok, :2] - a[ok, :2]) * (horizon_s / (t1 - t0))
        return out


class LearnedForecaster(Forecaster):
    """A small MLP, shared by every landmark (so one model serves poses and face meshes): from a landmark's last
    ``history`` positions (relative to the newest, at the stream's frame rate ``fps``) and the horizon, its
    displacement at that horizon. Landmarks without the whole history present fall back to constant velocity
    (or stay as they came). Weights: ``load_forecaster`` (safetensors + JSON, made by trainer/forecast.py);
    inference is numpy matrix products (~0.1 ms for 33 landmarks)."""

    name = "learned"

    def __init__(self, weights: dict[str, np.ndarray], config: dict, has_visibility: bool = True):
        self.w = [(np.asarray(weights[f"layers.{i}.weight"], np.float32).T,
                   np.asarray(weights[f"layers.{i}.bias"], np.float32)) for i in range(config["layers"])]
        self.history, self.fps, self.scale = int(config["history"]), float(config["fps"]), float(config["scale"])
        self.config = dict(config)
        self._fallback = ConstantVelocity(has_visibility)
        # Trained behind a One Euro filter: the filter is part of the forecaster (it learned to undo its lag).
        self.smoother = OneEuroFilter(**config["one_euro"], has_visibility=has_visibility) \
            if config.get("one_euro") else None
        super().__init__(has_visibility)

    def reset(self) -> None:
        super().reset()
        self._samples: list[tuple[float, np.ndarray]] = []
        for part in (self._fallback, self.smoother):    # (both set before Forecaster.__init__ calls this)
            if part is not None:
                part.reset()

    def update(self, t: float, landmarks: np.ndarray) -> None:
        if self.smoother is not None:
            landmarks = self.smoother(t, landmarks)
        super().update(t, landmarks)
        self._fallback.update(t, landmarks)
        self._samples = (self._samples + [(float(t), self._last[1])])[-self.history:]

    def features(self, horizon_s: float) -> tuple[np.ndarray, np.ndarray]:
        """((K, in) MLP inputs, (K,) which landmarks have the whole history present)."""
        stack = np.stack([lm for _, lm in self._samples])                        # (N, K, 3), oldest first
        ok = np.all([_present(lm, self.has_visibility) for lm in stack], axis=0) if len(stack) == self.history \
            else np.zeros(stack.shape[1], bool)
        rel = (stack[:-1, :, :2] - stack[-1:, :, :2]) * self.scale               # (N-1, K, 2)
        x = np.concatenate([rel.transpose(1, 0, 2).reshape(len(ok), -1),
                            np.full((len(ok), 1), horizon_s * self.fps, np.float32)], 1)
        return np.nan_to_num(x).astype(np.float32), ok

    def predict(self, horizon_s: float) -> np.ndarray:
        if horizon_s == 0:
            return super().predict(0.0)
        out = self._fallback.predict(horizon_s)
        if len(self._samples) < self.history:
            return out
        x, ok = self.features(horizon_s)
        if ok.any():
            h = x[ok]
            for i, (w, b) in enumerate(self.w):
                h = h @ w + b
                if i < len(self.w) - 1:
                    h = np.maximum(h, 0.0)
            out[ok, :2] = self._last[1][ok, :2] + h / self.scale
        return out


def load_forecaster(path, has_visibility: bool = True) -> LearnedForecaster:
    """A learned forecaster saved by trainer/forecast.py: ``path`` is its folder (``forecaster.json`` +
    ``forecaster.safetensors``)."""
    import json
    from pathlib import Path

    from safetensors.numpy import load_file

    folder = Path(path)
    try:
        config = json.loads((folder / "forecaster.json").read_text())
        weights = load_file(str(folder / "forecaster.safetensors"))
        return LearnedForecaster(weights, config, has_visibility)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{folder}: not a forecaster (forecaster.json + forecaster.safetensors): {e}") from None


FORECASTERS = {"none": NoForecast, "constant_velocity": ConstantVelocity}


def make_forecaster(name: str, has_visibility: bool = True, learned: str | None = None) -> Forecaster:
    """``none``, ``constant_velocity``, or ``learned`` (the model in folder ``learned``)."""
    if name == "learned":
        if not learned:
            raise ValueError("the learned forecaster needs its folder")
        return load_forecaster(learned, has_visibility)
    if name not in FORECASTERS:
        raise ValueError(f"forecaster must be one of {', '.join(FORECASTERS)}, learned; got {name!r}")
    return FORECASTERS[name](has_visibility)


def display_error(forecaster: Forecaster, times: np.ndarray, observed: np.ndarray, truth_at,
                  horizon_s: float, smoother: OneEuroFilter | None = None) -> tuple[float, float]:
    """(error, jitter) of what a display shows ``horizon_s`` after each sample when it renders the forecaster's
    prediction: error = mean distance (frame fractions) between the prediction and the true landmarks at display
    time (``truth_at(t)`` -> (K, 3)) over the landmarks present in both; jitter = mean magnitude of the shown
    stream's frame-to-frame acceleration (second difference). ``observed`` (N, K, 3) samples at ``times`` (N,)."""
    forecaster.reset()
    if smoother is not None:
        smoother.reset()
    errors, shown = [], []
    for t, lm in zip(times, observed):
        forecaster.update(t, smoother(t, lm) if smoother is not None else lm)
        p = forecaster.predict(horizon_s)
        truth = truth_at(t + horizon_s)
        ok = _present(p, forecaster.has_visibility) & _present(truth, forecaster.has_visibility)
        if ok.any():
            errors.append(float(np.linalg.norm(p[ok, :2] - truth[ok, :2], axis=1).mean()))
        shown.append(p[:, :2])
    s = np.asarray(shown, np.float64)
    acc = np.linalg.norm(s[2:] - 2 * s[1:-1] + s[:-2], axis=-1) if len(s) > 2 else np.zeros((0, 1))
    return float(np.mean(errors)) if errors else float("nan"), float(np.nanmean(acc)) if acc.size else 0.0


def bench_forecast(seed: int = 7, horizons_ms=(50, 100, 150), seconds: float = 30.0, fps: float = 30.0,
                   noise: float = 0.002, learned: str | None = None) -> list[dict]:
    """``posecast bench --forecast``: display-time pose error and jitter of each forecaster (with and without One
    Euro smoothing) on the synthetic dancer's motion of ``seed`` (models/motion.py: the truth at every instant),
    sampled at ``fps`` for ``seconds`` with Gaussian noise of ``noise`` (frame fractions; MediaPipe's own jitter on
    real footage is of that order), displayed ``horizon`` ms after each sample. One row per forecaster x smoothing
    x horizon: forecaster, smoothing, horizon_ms, error, jitter, and the raw stream's jitter_raw. ``learned``: the
    folder of a learned forecaster to measure as well."""
    from models.motion import DanceMotion

    exact = DanceMotion(seed, fps=1000.0)                       # landmarks at any millisecond

    def truth_at(t: float) -> np.ndarray:
        return exact.landmarks(int(round(t * 1000.0)))

    rng = np.random.default_rng([seed, 1])
    times = np.arange(int(seconds * fps)) / fps
    observed = np.stack([truth_at(t) for t in times])
    observed[:, :, :2] += rng.normal(0.0, noise, observed[:, :, :2].shape).astype(np.float32)
    _, raw_jitter = display_error(NoForecast(), times, observed, truth_at, 0.0)
    rows = []
    for name in [*FORECASTERS, *(["learned"] if learned else [])]:
        inside = name == "learned" and make_forecaster(name, learned=learned).smoother is not None
        for smoothing in ("one_euro",) if inside else ("none", "one_euro"):   # (a learned one may filter itself)
            for h in horizons_ms:
                smoother = OneEuroFilter(**ONE_EURO) if smoothing == "one_euro" and not inside else None
                error, jitter = display_error(make_forecaster(name, learned=learned), times, observed, truth_at,
                                              h / 1000.0, smoother)
                rows.append({"what": "forecast", "forecaster": name, "smoothing": smoothing, "horizon_ms": int(h),
                             "seed": seed, "error": round(error, 5), "jitter": round(jitter, 5),
                             "jitter_raw": round(raw_jitter, 5)})
    return rows
