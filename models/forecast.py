"""Landmark smoothing and short-term forecasting: the frame on screen should show the pose of *now*, not of one
glass-to-glass latency ago.

* ``OneEuroFilter`` (Casiez, Roussel & Vogel, CHI 2012): the field's standard for jittery tracker output — a
  low-pass filter whose cutoff rises with the speed, so slow motion is smoothed and fast motion is not lagged.
* Forecasters, one interface: ``update(t, landmarks)`` with each new sample (t in seconds), then
  ``predict(horizon_s)``: the landmarks expected ``horizon_s`` after the last sample.
  - ``NoForecast``: the last sample (what is shown today);
  - ``ConstantVelocity``: the last sample moved on by the velocity between the last two (of the smoothed stream).
  - ``MeshForecaster``: a face mesh moved by the forecast of its centroid, whose step ``HeadMotion`` can measure on
    the image (``update(t, landmarks, step)``).

Landmarks are ``(K, 3)`` float arrays normalised to the frame (models/render.py): only x and y are smoothed and
forecast; column 2 (a pose's visibility, a face mesh's depth) passes through. A landmark that is missing (NaN) or,
for poses, not visible (visibility < ``VISIBLE``) in the newest sample stays exactly as it came: a forecast never
invents a hidden joint, and a joint that reappears starts afresh. Imports numpy only (client and server alike;
``HeadMotion`` imports OpenCV when made).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

VISIBLE = 0.5   # pose landmarks below this visibility are hidden (models/crop.py uses the same threshold)
ONE_EURO = {"min_cutoff": 1.5, "beta": 2.0}   # the filter's settings in front of the forecasters (chosen on seed 7)


def one_blas_thread():
    """A context in which numpy's BLAS runs on one thread (threadpoolctl): the forecaster's products are too small
    to gain from more, and BLAS threads that spin beside a busy server slow them 15x."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


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

    def update(self, t: float, landmarks: np.ndarray, step: np.ndarray | None = None) -> None:
        """``step``: the move of the whole landmark set since the previous sample as measured on the image ((2,)
        frame fractions, :class:`HeadMotion`), where one was; only a face mesh's forecast uses it."""
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

    def update(self, t: float, landmarks: np.ndarray, step: np.ndarray | None = None) -> None:
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


def window_features(xy: np.ndarray, ok: np.ndarray, horizon_frames, scale: float, context: bool) -> np.ndarray:
    """The learned forecaster's inputs: ``xy`` (B, N, K, 2) windows of N positions (oldest first), ``ok`` (B, K) the
    landmarks present over the whole window, ``horizon_frames`` scalar or (B,) -> (B, K, F) float32, one row per
    landmark: its positions relative to its newest one (N-1 pairs, times ``scale``), with ``context`` where it sits
    on the body (its newest position from the centroid of the present landmarks, in units of their spread: 2), and
    the horizon in frames. Shared by training (trainer/forecast.py) and inference."""
    b, n, k, _ = xy.shape
    rel = (xy[:, :-1] - xy[:, -1:]) * scale                                      # (B, N-1, K, 2)
    parts = [rel.transpose(0, 2, 1, 3).reshape(b, k, -1)]
    if context:     # where the landmark is on the body: its newest position from the centroid, in body sizes
        w = ok[:, None, :].astype(np.float64)
        newest = np.nan_to_num(xy[:, -1])                                         # (B, K, 2)
        centroid = (newest * w[:, 0, :, None]).sum(1, keepdims=True) / np.maximum(w.sum(2), 1.0)[..., None]
        spread = np.sqrt((((newest - centroid) ** 2).sum(2) * w[:, 0]).sum(1) / np.maximum(w[:, 0].sum(1), 1.0))
        parts.append((newest - centroid) / np.maximum(spread, 1e-6)[:, None, None])
    parts.append(np.broadcast_to(np.reshape(np.asarray(horizon_frames, np.float32), (-1, 1, 1)), (b, k, 1)))
    return np.nan_to_num(np.concatenate(parts, 2)).astype(np.float32)


def body_features(x: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """A whole-body forecaster's input from per-landmark ``window_features`` ``x`` (..., K, F) and ``seen``
    (..., K) (present over the window): every landmark's features but the horizon (zero where not seen), then
    the K seen flags, then the horizon once -> (..., K*(F-1) + K + 1)."""
    lead = x[..., :-1] * seen[..., None]
    flat = lead.reshape(*lead.shape[:-2], -1)
    return np.concatenate([flat, seen.astype(np.float32), x[..., 0, -1:]], -1).astype(np.float32)


RATE_ALPHA = 0.7   # a learned forecast's rate is smoothed sample to sample by this factor (chosen on seed 7)


class LearnedForecaster(Forecaster):
    """A small MLP: per landmark (``arch`` "landmark", one network for every landmark of any layout) or per body
    (``arch`` "body", the bundled one: the whole 33-joint pose in, every joint out), from the last ``history``
    positions (relative to the newest, at the stream's frame rate ``fps``) and the horizon, the displacement at that
    horizon. Landmarks without the whole history present fall back to constant velocity behind the One Euro filter
    (or stay as they came). The forecast's rate (its move from the last sample, over the horizon) is smoothed from
    sample to sample by ``rate_alpha`` of the config (1: not at all): the network answers each sample's noise a
    little, and more so the further ahead it looks. Weights: ``load_forecaster`` (safetensors + JSON, made by
    trainer/forecast.py); inference is numpy matrix products: the bundled network ~0.04 ms, update + predict with
    its 20-pose window ~0.6 ms a frame (1.0–1.1 ms in the live client beside a server on 2 cores;
    docs/performance.md)."""

    name = "learned"
    MAX_GAP_FRAMES = 3.5   # samples further apart than this (frames at the model's fps) break the history

    def __init__(self, weights: dict[str, np.ndarray], config: dict, has_visibility: bool = True):
        self.w = [(np.asarray(weights[f"layers.{i}.weight"], np.float32).T,
                   np.asarray(weights[f"layers.{i}.bias"], np.float32)) for i in range(config["layers"])]
        self.history, self.fps, self.scale = int(config["history"]), float(config["fps"]), float(config["scale"])
        self.context = bool(config.get("context", False))
        self.arch = config.get("arch", "landmark")
        if self.arch not in ("landmark", "body"):
            raise ValueError(f"unknown forecaster arch {self.arch!r} (landmark or body)")
        self.num_landmarks = int(config.get("num_landmarks", 0))
        per = (self.history - 1) * 2 + (3 if self.context else 1)
        k = self.num_landmarks
        want, outs = (k * per + 1, 2 * k) if self.arch == "body" else (per, 2)
        if self.history < 2 or self.fps <= 0 or self.w[0][0].shape[0] != want or self.w[-1][0].shape[1] != outs:
            raise ValueError(f"weights of {self.w[0][0].shape[0]} inputs and {self.w[-1][0].shape[1]} outputs do "
                             f"not fit history {self.history}, context {self.context}, arch {self.arch} ({want} "
                             f"inputs, {outs} outputs)")
        self.rate_alpha = float(config.get("rate_alpha", 1.0))
        if not 0 < self.rate_alpha <= 1:
            raise ValueError(f"rate_alpha must be in (0, 1], got {self.rate_alpha}")
        self.config = dict(config)
        # Until a landmark's history is whole (a stream's first ``history`` samples, after a gap): constant velocity,
        # behind the One Euro filter unless the forecaster filters its input itself (on seed 7's first 20 samples
        # the shown stream's jitter 4.0x the raw stream's unfiltered, 1.1x filtered; docs/performance.md).
        self._fallback = ConstantVelocity(has_visibility)
        if not config.get("one_euro"):
            self._fallback = Smoothed(self._fallback, ONE_EURO)
        # Trained behind a One Euro filter: the filter is part of the forecaster (it learned to undo its lag).
        self.smoother = OneEuroFilter(**config["one_euro"], has_visibility=has_visibility) \
            if config.get("one_euro") else None
        super().__init__(has_visibility)

    def reset(self) -> None:
        super().reset()
        self._samples: list[tuple[float, np.ndarray]] = []
        self._rate: np.ndarray | None = None         # (K, 2) the smoothed rate after the newest sample (NaN: none)
        self._rate_before: np.ndarray | None = None  # ... and after the one before it
        self._rate_t: float | None = None            # the sample ``_rate`` belongs to
        for part in (self._fallback, self.smoother):    # (both set before Forecaster.__init__ calls this)
            if part is not None:
                part.reset()

    def update(self, t: float, landmarks: np.ndarray, step: np.ndarray | None = None) -> None:
        if self._last is not None and t <= self._last[0]:
            self.reset()                                   # time went back (a new stream): start afresh
        if self.smoother is not None:
            landmarks = self.smoother(t, landmarks)
        super().update(t, landmarks)
        self._fallback.update(t, landmarks)
        self._samples.append((float(t), self._last[1]))
        span = (self.history - 1) / self.fps
        while len(self._samples) > 2 and self._samples[1][0] <= t - span:
            self._samples.pop(0)                           # keep one sample at or before the window's start

    def window(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The last ``history`` positions at the model's frame rate, ending at the newest sample: ((N, K, 2)
        oldest first, (K,) present throughout), interpolated linearly on the samples' times, so a camera at 24 or
        60 fps (or one that skips a frame) feeds the model what it was trained on. None until the samples span
        the window or where two samples are more than ``MAX_GAP_FRAMES`` frames apart within it."""
        times = np.array([t for t, _ in self._samples])
        t_last = times[-1]
        want = t_last - np.arange(self.history - 1, -1, -1) / self.fps              # (N,) oldest first
        if times[0] > want[0] + 1e-6:
            return None
        lo = np.clip(np.searchsorted(times, want - 1e-6, side="right") - 1, 0, len(times) - 1)
        hi = np.minimum(lo + 1, len(times) - 1)
        gap = times[hi] - times[lo]
        if (gap > self.MAX_GAP_FRAMES / self.fps).any():
            return None
        w = np.where(gap > 0, np.clip((want - times[lo]) / np.where(gap > 0, gap, 1.0), 0.0, 1.0), 0.0)
        w = np.where(np.abs(want - times[lo]) < 1e-6, 0.0, w)                        # on a sample: that sample
        stack = np.stack([lm for _, lm in self._samples])                          # (S, K, 3)
        present = np.stack([_present(lm, self.has_visibility) for lm in stack])    # (S, K)
        xy = stack[lo, :, :2] * (1 - w)[:, None, None] + stack[hi, :, :2] * w[:, None, None]
        ok = present[lo].all(0) & np.where(w[:, None] > 0, present[hi], True).all(0)
        return xy.astype(np.float32), ok

    def features(self, horizon_s: float) -> tuple[np.ndarray, np.ndarray] | None:
        """((K, in) MLP inputs, (K,) which landmarks have the whole history present), or None (no window)."""
        win = self.window()
        if win is None:
            return None
        xy, ok = win
        return window_features(xy[None], ok[None], horizon_s * self.fps, self.scale, self.context)[0], ok

    def predict(self, horizon_s: float) -> np.ndarray:
        if horizon_s == 0:
            return super().predict(0.0)
        out = self._fallback.predict(horizon_s)
        feats = self.features(horizon_s)
        if feats is None or not feats[1].any():
            return self._smooth_rate(out, horizon_s)
        x, ok = feats
        if self.arch == "body":
            if len(ok) != self.num_landmarks:
                raise ValueError(f"this forecaster was trained on bodies of {self.num_landmarks} landmarks; got "
                                 f"{len(ok)}")
            move = self.run(body_features(x, ok)[None])[0].reshape(-1, 2)
            out[ok, :2] = self._last[1][ok, :2] + move[ok] / self.scale
        else:
            out[ok, :2] = self._last[1][ok, :2] + self.run(x[ok]) / self.scale
        return self._smooth_rate(out, horizon_s)

    def _smooth_rate(self, out: np.ndarray, horizon_s: float) -> np.ndarray:
        """``out`` with each landmark's rate (its move from the last sample / ``horizon_s``) smoothed by
        ``rate_alpha`` against the smoothed rate of the last prediction from an earlier sample (so predicting
        twice from one sample, at any horizons, smooths once; live there is one prediction a sample, at a lead
        that changes slowly); a landmark hidden or missing starts afresh, and so do the stream's first sample (one
        sample has no rate) and a sample more than ``MAX_GAP_FRAMES`` after the last prediction."""
        if self.rate_alpha >= 1.0:
            return out
        base, t = self._last[1], self._last[0]
        if len(self._samples) < 2:
            self._rate = self._rate_before = self._rate_t = None
            return out
        ok = _present(out, self.has_visibility) & _present(base, self.has_visibility)
        rate = np.full((len(out), 2), np.nan, np.float32)
        rate[ok] = (out[ok, :2] - base[ok, :2]) / np.float32(horizon_s)
        if self._rate_t != t:
            fresh = self._rate_t is None or t - self._rate_t > self.MAX_GAP_FRAMES / self.fps
            self._rate_before, self._rate_t = None if fresh else self._rate, t   # (after a gap: nothing to keep)
        before = self._rate_before
        if before is not None and before.shape == rate.shape:
            rate = np.where(np.isfinite(before), before + np.float32(self.rate_alpha) * (rate - before), rate)
        self._rate = rate
        out[ok, :2] = base[ok, :2] + rate[ok] * np.float32(horizon_s)
        return out

    def run(self, x: np.ndarray) -> np.ndarray:
        """The network on (M, F) inputs -> (M, 2) displacements (times ``scale``; a body network: (1, 2K)).
        Run it on one BLAS thread where the cores are busy (``one_blas_thread``; the capture client does): a
        multi-threaded BLAS sharing 2 busy cores with a server took 18 ms a frame instead of 1."""
        h = x
        for i, (w, b) in enumerate(self.w):
            h = h @ w + b
            if i < len(self.w) - 1:
                h = np.maximum(h, 0.0)
        return h


def load_forecaster(path, has_visibility: bool = True) -> LearnedForecaster:
    """A learned forecaster saved by trainer/forecast.py: ``path`` is its folder (``forecaster.json`` +
    ``forecaster.safetensors``)."""
    from safetensors.numpy import load_file

    folder = Path(path)
    try:
        config = json.loads((folder / "forecaster.json").read_text())
        if not isinstance(config, dict) or config.get("format") != "posecast-forecaster":
            raise ValueError("forecaster.json is not a posecast-forecaster config")
        weights = load_file(str(folder / "forecaster.safetensors"))
        return LearnedForecaster(weights, config, has_visibility)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{folder}: not a forecaster (forecaster.json + forecaster.safetensors): {e}") from None


class Wrapped(Forecaster):
    """A forecaster around another one (``inner``), under its name; ``reset`` resets both."""

    def __init__(self, inner: Forecaster, has_visibility: bool | None = None):
        self.inner, self.name = inner, inner.name
        super().__init__(inner.has_visibility if has_visibility is None else has_visibility)

    def reset(self) -> None:
        super().reset()
        if hasattr(self, "inner"):                 # (Forecaster.__init__ calls this before inner is set)
            self.inner.reset()


class Smoothed(Wrapped):
    """``inner`` fed through a One Euro filter: what a forecaster without a noise model of its own needs in front
    of it (constant velocity alone turns MediaPipe's jitter into 5x the jitter; behind the filter 1.3x)."""

    def __init__(self, inner: Forecaster, one_euro: dict):
        self.filter = OneEuroFilter(**one_euro, has_visibility=inner.has_visibility)
        super().__init__(inner)

    def reset(self) -> None:
        super().reset()
        self.filter.reset()

    def update(self, t: float, landmarks: np.ndarray, step: np.ndarray | None = None) -> None:
        super().update(t, landmarks)
        self.inner.update(t, self.filter(t, landmarks))   # (a raw step would not match filtered landmarks)

    def predict(self, horizon_s: float) -> np.ndarray:
        return self.inner.predict(horizon_s)


class SquareFrame(Wrapped):
    """``inner`` on landmarks of a ``aspect`` (width / height) frame, in square units (x times ``aspect``): the
    learned forecaster was trained on square frames, and on a 16:9 camera a frame fraction across is 1.78 of one
    down. Landmarks come in and go out in the frame's own fractions."""

    def __init__(self, inner: Forecaster, aspect: float):
        if not aspect > 0:
            raise ValueError(f"aspect must be > 0, got {aspect}")
        self.aspect = float(aspect)
        super().__init__(inner)

    def update(self, t: float, landmarks: np.ndarray, step: np.ndarray | None = None) -> None:
        super().update(t, landmarks)
        square = np.array(landmarks, np.float32, copy=True)
        square[:, 0] *= self.aspect
        if step is not None:
            step = np.asarray(step, np.float32) * np.float32([self.aspect, 1.0])
        self.inner.update(t, square, step)

    def predict(self, horizon_s: float) -> np.ndarray:
        out = self.inner.predict(horizon_s)
        out[:, 0] /= self.aspect
        return out


def for_frame(forecaster: "Forecaster", aspect: float) -> "Forecaster":
    """``forecaster`` for landmarks of a frame ``aspect`` wide (width / height): in square units
    (:class:`SquareFrame`) unless the frame is square or nothing is forecast."""
    if aspect == 1.0 or forecaster.name == "none":
        return forecaster
    return SquareFrame(forecaster, aspect)


MESH_GAIN = 0.8    # a face mesh moves by this fraction of its centroid's forecast (chosen on shot 0 of Megamind)


class MeshForecaster(Wrapped):
    """A face mesh moved by the forecast of what drives it: its centroid (the head's motion, with the noise of
    hundreds of points averaged out), forecast by ``inner`` as one landmark and damped by ``gain`` (a head's
    motion turns often: a shorter step errs less); the mesh's shape (mouth, eyes) stays as last seen. The centroid
    moves by the image's own step where ``update`` is given one (:class:`HeadMotion`), else by the mean step of
    the points. Per-point forecasts of a face mesh chase each point's tracker noise: on the face mesh of
    shared/data/Megamind.avi at 100 ms, constant velocity per point errs 0.93x showing the past on the shots not
    used to choose ``gain``, this 0.74x driven by the points and 0.68x by the image (docs/performance.md)."""

    def __init__(self, inner: Forecaster, gain: float = MESH_GAIN):
        if not 0 <= gain <= 2:
            raise ValueError(f"gain must be in [0, 2], got {gain}")
        self.gain = float(gain)
        super().__init__(inner, has_visibility=False)

    def reset(self) -> None:
        super().reset()
        self._centroid: np.ndarray | None = None

    def update(self, t: float, landmarks: np.ndarray, step: np.ndarray | None = None) -> None:
        lm = np.asarray(landmarks, np.float32)
        if self._last is not None and t <= self._last[0]:
            self.reset()
        prev = self._last[1] if self._last is not None else None
        if prev is not None and prev.shape != lm.shape:
            prev = None                                 # another layout (a refined mesh): a new track
        super().update(t, lm)
        ok = _present(lm, False)
        # The drive moves by the image's step, or the mean step of the points seen in both samples: a point lost
        # or found does not move the centroid.
        both = ok & _present(prev, False) if prev is not None else ok
        if prev is None or self._centroid is None or not both.any():
            drive = np.full((1, 3), np.nan, np.float32)
            if ok.any():
                drive[0, :2], drive[0, 2] = lm[ok, :2].mean(0), 1.0
            self.inner.reset()                          # nothing in common with the last sample: a new track
        else:
            drive = self._centroid.copy()
            if step is not None and np.shape(step) != (2,):
                raise ValueError(f"step must be (2,) frame fractions (NaN: none measured), got shape {np.shape(step)}")
            measured = step is not None and np.isfinite(step).all()
            drive[0, :2] += np.asarray(step, np.float32) if measured else (lm[both, :2] - prev[both, :2]).mean(0)
        self._centroid = drive
        if np.isfinite(drive).all():
            self.inner.update(t, drive)

    def predict(self, horizon_s: float) -> np.ndarray:
        out = super().predict(horizon_s)
        if horizon_s == 0 or not np.isfinite(self._centroid).all():
            return out
        if self.inner._last is None:
            return out
        move = (self.inner.predict(horizon_s)[0, :2] - self._centroid[0, :2]) * self.gain
        if np.isfinite(move).all():
            out[:, :2] += move                          # NaN (missing) points stay NaN
        return out


class HeadMotion:
    """The step of a face between consecutive frames as the image shows it: the median optical flow (OpenCV's DIS,
    ultrafast preset) inside a square about the face mesh (clipped to the frame), from the previous frame to this
    one, the box scaled down (bilinear) to at most ``max_side`` pixels. The tracker's mesh jitters from frame to
    frame as a whole; the pixels' own motion measures the head's step with less of that noise (on Megamind's face,
    the two agree with a correlation of 0.92-0.99 on the large moves, 0.66 on a still head's small ones).
    ``__call__(image, landmarks)`` with every frame and its mesh (normalised to that frame, None where none was
    found) -> the step since the last frame, (2,) frame fractions, or None: on the first frame, after a frame
    without a mesh (a forecaster is not updated there, and the step must span the same two samples as the mesh's),
    after a change of frame size, and where the box is under ``MIN_SIDE`` pixels either way once scaled: a small
    face, or one half out of the frame (the forecast then moves by the mesh's own step). ~0.4 ms a frame on an idle
    core, ~1 ms in the capture client beside MediaPipe and a server (docs/performance.md)."""

    MIN_SIDE = 32   # DIS needs this much either way: OpenCV 4.11 crashes (SIGSEGV) on a wide image under 32 high

    def __init__(self, max_side: int = 96):
        if max_side < self.MIN_SIDE:
            raise ValueError(f"max_side must be >= {self.MIN_SIDE}, got {max_side}")
        import cv2

        from models.visualize import to_grey

        self.max_side = int(max_side)
        self._cv2, self._grey = cv2, to_grey
        self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self.reset()

    def reset(self) -> None:
        self._prev: np.ndarray | None = None      # the previous frame, grey (our own copy)

    def __call__(self, image: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray | None:
        cv2 = self._cv2
        grey = self._grey(image)
        if landmarks is None:
            self._prev = None
            return None
        if np.shares_memory(grey, image):
            grey = grey.copy()                            # the caller's grey frame: ours to keep
        prev, self._prev = self._prev, grey
        if prev is None or prev.shape != grey.shape:
            return None
        ok = _present(np.asarray(landmarks), False)
        if not ok.any():
            return None
        h, w = grey.shape
        pts = np.asarray(landmarks, np.float64)[ok, :2] * (w, h)
        centre, half = (pts.min(0) + pts.max(0)) / 2, (pts.max(0) - pts.min(0)).max() / 2
        x0, y0 = np.maximum(np.floor(centre - half).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(centre + half).astype(int), (w, h))
        if x1 <= x0 or y1 <= y0:
            return None                                   # the mesh is off the frame
        s = min(1.0, self.max_side / max(x1 - x0, y1 - y0))
        size = (round((x1 - x0) * s), round((y1 - y0) * s))
        if min(size) < self.MIN_SIDE:
            return None
        a, b = (cv2.resize(np.ascontiguousarray(f[y0:y1, x0:x1]), size, interpolation=cv2.INTER_LINEAR)
                for f in (prev, grey))
        try:
            flow = self._flow.calc(a, b, None)
        except cv2.error:
            return None
        scale = np.array([size[0] / (x1 - x0) * w, size[1] / (y1 - y0) * h])     # flow pixels per frame width
        return (np.median(flow.reshape(-1, 2), axis=0) / scale).astype(np.float32)


DEFAULT_FORECASTER = Path(__file__).with_name("forecaster")   # the bundled learned forecaster (whole bodies, 33 joints)
FORECASTERS = {"none": NoForecast, "constant_velocity": ConstantVelocity}
FORECASTER_NAMES = (*FORECASTERS, "learned")
DEFAULT_FORECAST = {"dance": "learned", "face": "constant_velocity"}   # the best measured for each (the client's)


def make_forecaster(name: str, kind: str = "dance", learned: str | Path | None = None,
                    one_euro: dict | str | None = "auto") -> Forecaster:
    """``none``, ``constant_velocity``, ``learned`` (the model in folder ``learned``; default the bundled one,
    ``DEFAULT_FORECASTER``) or ``auto`` (``DEFAULT_FORECAST[kind]``), for landmarks of ``kind``: ``dance`` (MediaPipe Pose: per joint, visibility
    respected) or ``face`` (a face mesh: moved by its centroid's forecast, :class:`MeshForecaster`). ``one_euro``:
    the One Euro filter in front (``{"min_cutoff": Hz, "beta": ...}``, None: none, "auto": ``ONE_EURO`` for
    constant velocity on poses, where the noise would be amplified, none otherwise: the learned forecaster
    sees through the noise itself and a face mesh's centroid averages it out)."""
    if kind not in ("dance", "face"):
        raise ValueError(f"kind must be 'dance' or 'face', got {kind!r}")
    if name == "auto":
        name = DEFAULT_FORECAST[kind]
    if name == "none":
        return NoForecast(has_visibility=kind == "dance")
    if name == "learned":
        inner = load_forecaster(learned or DEFAULT_FORECASTER)
        if kind == "face" and inner.arch == "body":
            raise ValueError(f"the learned forecaster in {learned or DEFAULT_FORECASTER} forecasts whole bodies of "
                             f"{inner.num_landmarks} landmarks; a face mesh moves with its centroid: use "
                             f"constant_velocity (the default for faces), or a per-landmark forecaster "
                             f"(posecast train-forecaster --arch landmark)")
    elif name in FORECASTERS:
        inner = FORECASTERS[name]()
    else:
        raise ValueError(f"forecaster must be one of {', '.join(FORECASTER_NAMES)}, auto; got {name!r}")
    if one_euro == "auto":
        one_euro = ONE_EURO if (name, kind) == ("constant_velocity", "dance") else None
    if one_euro:
        inner = Smoothed(inner, one_euro)
    return inner if kind == "dance" else MeshForecaster(inner)


def display_error(forecaster: Forecaster, times: np.ndarray, observed: np.ndarray, truth_at,
                  horizon_s: float, smoother: OneEuroFilter | None = None,
                  cost_ms: list | None = None, steps: np.ndarray | None = None) -> tuple[float, float]:
    """(error, jitter) of what a display shows ``horizon_s`` after each sample when it renders the forecaster's
    prediction: error = mean distance (frame fractions) between the prediction and the true landmarks at display
    time (``truth_at(t)`` -> (K, 3)) over the landmarks present in both; jitter = mean magnitude of the shown
    stream's frame-to-frame acceleration (second difference). ``observed`` (N, K, 3) samples at ``times`` (N,).
    ``cost_ms``: a list that receives each sample's update + predict time (smoothing included), ms. ``steps``:
    (N, 2) each sample's step measured on the image (:class:`HeadMotion`; NaN: none), handed to ``update``."""
    forecaster.reset()
    if smoother is not None:
        smoother.reset()
    errors, shown = [], []
    for i, (t, lm) in enumerate(zip(times, observed)):
        t0 = time.perf_counter()
        forecaster.update(t, smoother(t, lm) if smoother is not None else lm,
                          None if steps is None else steps[i])
        p = forecaster.predict(horizon_s)
        if cost_ms is not None:
            cost_ms.append((time.perf_counter() - t0) * 1e3)
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
    x horizon: forecaster, smoothing, horizon_ms, client (true on the one row per forecaster x horizon set up as the
    capture client runs it: constant velocity behind the filter, the others without), error, jitter, the raw
    stream's jitter_raw, and cost_ms (the median CPU time of one sample's update + predict). ``learned``: the
    folder of the learned forecaster to measure (default the bundled one)."""
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
    learned = learned or (DEFAULT_FORECASTER if (DEFAULT_FORECASTER / "forecaster.json").exists() else None)
    for name in [*FORECASTERS, *(["learned"] if learned else [])]:
        inside = name == "learned" and load_forecaster(learned).smoother is not None
        for smoothing in ("one_euro",) if inside else ("none", "one_euro"):   # (a learned one may filter itself)
            for h in horizons_ms:
                smoother = OneEuroFilter(**ONE_EURO) if smoothing == "one_euro" and not inside else None
                cost: list[float] = []
                error, jitter = display_error(make_forecaster(name, learned=learned, one_euro=None), times,
                                              observed, truth_at,
                                              h / 1000.0, smoother, cost)
                client = smoothing == ("one_euro" if inside or name == "constant_velocity" else "none")
                rows.append({"what": "forecast", "forecaster": name, "smoothing": smoothing, "horizon_ms": int(h),
                             "client": client, "seed": seed, "error": round(error, 5), "jitter": round(jitter, 5),
                             "jitter_raw": round(raw_jitter, 5), "cost_ms": round(float(np.median(cost)), 3)})
    return rows


def stream_at(times, landmarks, t: float, has_visibility: bool = True) -> np.ndarray | None:
    """A recorded landmark stream (``times`` increasing, ``landmarks`` (K, 3) each) linearly interpolated at ``t``;
    None outside it. A landmark missing (or, ``has_visibility``, hidden) on either side is missing (NaN)."""
    if not len(times) or t < times[0] or t > times[-1]:
        return None
    j = int(np.searchsorted(times, t, side="left"))
    if times[j] == t:
        return landmarks[j]
    (t0, a), (t1, b) = (times[j - 1], landmarks[j - 1]), (times[j], landmarks[j])
    out = a + (b - a) * np.float32((t - t0) / (t1 - t0))
    out[~(_present(a, has_visibility) & _present(b, has_visibility)), :2] = np.nan
    return out


class DisplayErrorMeter:
    """The display-time pose error of a live stream: ``sample(t, landmarks)`` with every landmark sample the
    source gives (capture time, the raw landmarks: the truth), ``shown(t, landmarks)`` when a frame rendered from
    ``landmarks`` goes on screen at ``t`` (same clock). A shown frame is scored once a sample at or after ``t``
    exists, against the two samples around ``t`` interpolated linearly (the stream itself, replayed on its
    timestamps, is the truth): the mean distance over the landmarks present in both, frame fractions.
    ``keep_s``: how long samples are kept (frames shown later than that after capture are not scored)."""

    def __init__(self, has_visibility: bool = True, keep_s: float = 3.0):
        self.has_visibility, self.keep_s = has_visibility, float(keep_s)
        self._samples: list[tuple[float, np.ndarray]] = []
        self._waiting: list[tuple[float, np.ndarray]] = []
        self.errors: list[float] = []

    def sample(self, t: float, landmarks: np.ndarray | None) -> None:
        if landmarks is None:
            return
        if self._samples and t <= self._samples[-1][0]:
            self._samples.clear()                           # a new stream
        self._samples.append((float(t), np.asarray(landmarks, np.float32)))
        while self._samples[0][0] < t - self.keep_s:
            self._samples.pop(0)
        self._score()

    def shown(self, t: float, landmarks: np.ndarray | None) -> None:
        if landmarks is not None:
            self._waiting.append((float(t), np.asarray(landmarks, np.float32)))
            self._score()

    def truth_at(self, t: float) -> np.ndarray | None:
        """The stream interpolated at ``t`` (None outside the samples kept; see ``stream_at``)."""
        return stream_at([s for s, _ in self._samples], [lm for _, lm in self._samples], t, self.has_visibility)

    def _score(self) -> None:
        last = self._samples[-1][0] if self._samples else None
        keep = []
        for t, lm in self._waiting:
            if last is None or t > last:
                keep.append((t, lm))                         # the truth at t is not known yet
                continue
            truth = self.truth_at(t)
            if truth is None or truth.shape != lm.shape:
                continue                                     # shown too late to score, or another layout
            ok = _present(truth, False) & _present(lm, self.has_visibility)
            if ok.any():
                self.errors.append(float(np.linalg.norm(lm[ok, :2] - truth[ok, :2], axis=1).mean()))
        self._waiting = keep

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.errors)) if self.errors else None


class Shot(NamedTuple):
    """One uninterrupted piece of a recorded landmark stream (posecast/forecasting.py ``stream_shots``): ``times``
    (N,) s, ``landmarks`` (N, K, 3) and, where the frames were there to measure it, each sample's step on the
    image (``steps`` (N, 2), NaN where none, :class:`HeadMotion`) and what measuring it cost (``step_ms`` (N,))."""

    times: np.ndarray
    landmarks: np.ndarray
    steps: np.ndarray | None = None
    step_ms: np.ndarray | None = None


def bench_forecast_stream(shots: list, kind: str, horizons_ms=(50, 100, 150),
                          learned: str | Path | None = None) -> list[dict]:
    """``posecast bench --forecast --video/--recording``: display-time error and jitter of the forecasters on a
    recorded landmark stream, the recording itself (interpolated on its timestamps) as the truth. ``shots``: the
    stream's uninterrupted pieces, :class:`Shot` or ``(times (N,), landmarks (N, K, 3))`` each (a forecast never
    spans a cut); every figure is the mean over the shots, weighted by their frames. Face meshes are forecast per
    point (``drive`` "points"), by their centroid moved by the points' step ("centroid") and, where every shot has
    its steps measured on the image, by the image's step ("image", the capture client's default on a camera or a
    video); poses per joint. ``learned``: a learned forecaster's folder (a body one serves poses only). The image
    drive's ``cost_ms`` includes measuring the step; ``client`` marks the rows set up as the capture client runs
    them."""
    def truth_for(times, lms):
        def truth_at(t: float) -> np.ndarray:      # past the end of the shot: nothing to score
            at = stream_at(times, lms, t, has_visibility=False)
            return np.full_like(lms[0], np.nan) if at is None else at
        return truth_at

    shots = [Shot(np.asarray(t, np.float64), np.asarray(x, np.float32), *rest) for t, x, *rest in shots if len(t) >= 3]
    if not shots:
        raise ValueError("no shot of 3 frames or more to forecast")
    has_steps = all(s.steps is not None for s in shots)
    step_ms = np.concatenate([s.step_ms for s in shots if s.step_ms is not None] or [np.zeros(0)])
    vis = kind == "dance"
    candidates = [("none", "points", lambda: NoForecast(vis)), ("constant_velocity", "points",
                                                                lambda: ConstantVelocity(vis))]
    if kind == "face":
        candidates.append(("constant_velocity", "centroid", lambda: make_forecaster("constant_velocity", "face")))
        if has_steps:
            candidates.append(("constant_velocity", "image", lambda: make_forecaster("constant_velocity", "face")))
    if learned is not None or kind == "dance":
        model = load_forecaster(learned or DEFAULT_FORECASTER, vis)
        if kind == "dance":
            candidates.append(("learned", "points", lambda: load_forecaster(learned or DEFAULT_FORECASTER)))
        elif model.arch == "landmark":
            candidates.append(("learned", "centroid", lambda: MeshForecaster(load_forecaster(learned))))
    # how the capture client drives each (a face: by the image's step where it has the frames)
    mesh_drive = "image" if has_steps else "centroid"
    client_drive = {"none": "points", "learned": "points" if kind == "dance" else mesh_drive,
                    "constant_velocity": None if kind == "dance" else mesh_drive}   # (poses: behind the filter)
    weights = np.array([len(s.times) for s in shots], np.float64)
    raw = np.array([display_error(NoForecast(vis), t, x, truth_for(t, x), 0.0)[1] for t, x, *_ in shots])
    rows = []
    for name, drive, make in candidates:
        for h in horizons_ms:
            res, cost = [], []
            for t, x, steps, _ in shots:
                res.append(display_error(make(), t, x, truth_for(t, x), h / 1000.0, cost_ms=cost,
                                         steps=steps if drive == "image" else None))
            if drive == "image":
                cost = np.asarray(cost) + (float(np.median(step_ms)) if step_ms.size else 0.0)
            err, jit = np.array(res).T
            rows.append({"what": "forecast", "forecaster": name, "drive": drive, "smoothing": "none",
                         "horizon_ms": int(h), "client": drive == client_drive.get(name),
                         "shots": len(shots), "frames": int(weights.sum()),
                         "error": round(float(np.average(err, weights=weights)), 5),
                         "jitter": round(float(np.average(jit, weights=weights)), 5),
                         "jitter_raw": round(float(np.average(raw, weights=weights)), 5),
                         "cost_ms": round(float(np.median(cost)), 3)})
    return rows
