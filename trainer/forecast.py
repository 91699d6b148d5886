"""Training the learned pose forecaster (models/forecast.py ``LearnedForecaster``) on the synthetic dancer's motion.

An example is a window of the last ``history`` poses of a 30 fps stream with Gaussian noise (0 to ``noise_max`` of
the frame side, as MediaPipe's jitter) and a horizon of 0 to ``horizon_max_s``; the target is where each landmark
truly is at the horizon (models/motion.py gives the motion at any instant), relative to its newest *noisy*
position — so the model learns to see through the noise as well as to extrapolate. ``arch="body"`` (the default)
reads the whole pose at once (every joint's window and where it sits on the body: the coordination of a dance move
is what predicts it); ``arch="landmark"`` is one small network applied to each landmark alone (any layout).
With ``augment`` every motion is also trained on carried around the frame (``carried``). Landmarks not visible
over the whole window are left out of the loss. Runs of three consecutive windows add the
shown stream's frame-to-frame acceleration to the loss (``smooth``), so a forecast does not turn the tracker's
noise into jitter. The motion seeds trained on must not be the ones reported on (``posecast bench --forecast
--seed N``; the default training seeds leave 6-9 and 40-99 out).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from models.forecast import RATE_ALPHA, VISIBLE, OneEuroFilter, body_features, window_features

STEP_HZ = 120     # the motion is sampled this often: horizons are multiples of 1/120 s


def motion_samples(seed: int, seconds: float) -> np.ndarray:
    """(N, K, 3) landmarks of the synthetic dancer's motion ``seed`` at STEP_HZ for ``seconds``."""
    from models.motion import DanceMotion

    motion = DanceMotion(seed, fps=float(STEP_HZ))
    return np.stack([motion.landmarks(i) for i in range(int(seconds * STEP_HZ))])


def carried(track: np.ndarray, rng: np.random.Generator, *, shift: float = 0.06, zoom: float = 0.12,
            max_hz: float = 0.8) -> np.ndarray:
    """``track`` (STEP_HZ) moved around the frame as a whole: a smooth random path (three sinusoids a coordinate,
    each at 0.05 to ``max_hz`` and up to ``shift`` of the frame: drifts, glides and, at higher ``max_hz``, sways) and
    a smooth zoom about the frame centre (up to ``zoom``, at 0.05 to ``min(0.5, max_hz)``). The synthetic
    dancer stays nearly in place; people in front of a camera do not, and a forecaster must not take a glide for a
    dance move. (Carrying at up to 0.8 Hz -- sways of ~0.9 of the frame a second, as unpredictable as the dance --
    taught the bundled forecaster to hedge: 0.50-0.54x showing the past on held-out seeds; at up to 0.3 Hz,
    drifts and glides, 0.46-0.50x.)"""
    t = np.arange(len(track))[:, None] / STEP_HZ
    offset = np.zeros((len(track), 2))
    for _ in range(3):
        offset += rng.uniform(0, shift, 2) * np.sin(2 * np.pi * rng.uniform(0.05, max_hz) * t + rng.uniform(0, 2 * np.pi, 2))
    scale = 1.0 + rng.uniform(0, zoom) * np.sin(2 * np.pi * rng.uniform(0.05, min(0.5, max_hz)) * t + rng.uniform(0, 2 * np.pi))
    out = track.copy()
    out[..., :2] = ((track[..., :2] - 0.5) * scale[:, :, None] + 0.5 + offset[:, None, :]).astype(np.float32)
    return out


def smoothed(stream: np.ndarray, smoother, fps: float) -> np.ndarray:
    """``stream`` (N, K, 3) at ``fps`` through a fresh ``smoother()`` sample by sample, as the forecaster sees it
    live; unchanged when ``smoother`` is None."""
    if smoother is None:
        return stream
    f = smoother()
    return np.stack([f(i / fps, lm) for i, lm in enumerate(stream)])


def filtered_streams(track: np.ndarray, rng: np.random.Generator, *, fps: float, noise_levels, smoother):
    """The ``fps`` stream of ``track`` (STEP_HZ) with Gaussian noise at each of ``noise_levels``, each passed through
    a fresh ``smoother()`` (None: raw) as the forecaster will see it live. -> (len(levels), N, K, 3)."""
    stride = int(round(STEP_HZ / fps))
    frames = track[::stride]
    out = []
    for sigma in noise_levels:
        noisy = frames.copy()
        noisy[..., :2] += rng.normal(0.0, sigma, noisy[..., :2].shape).astype(np.float32)
        out.append(smoothed(noisy, smoother, fps))
    return np.stack(out)


def examples(track: np.ndarray, streams: np.ndarray, rng: np.random.Generator, count: int, *, history: int,
             fps: float, scale: float, horizon_max_s: float, context: bool = False, run: int = 3,
             body: bool = False):
    """``count`` random runs of ``run`` consecutive windows of the streams (``fps``) of ``track`` (STEP_HZ, the truth
    the targets come from), one horizon per run -> (inputs (M, run, F), targets (M, run, 2)), M the landmarks present
    throughout: the inputs as models/forecast.py ``window_features`` makes them, the targets the true position at
    the horizon relative to the newest observed one (times ``scale``). A run lets training see what the shown
    stream does from one frame to the next (its jitter), not only each frame's error. ``body``: whole bodies
    instead (the inputs of models/forecast.py ``body_features``; see there)."""
    stride = int(round(STEP_HZ / fps))
    h_max = int(horizon_max_s * STEP_HZ)
    n = streams.shape[1]
    first = rng.integers(history - 1, min(n, (len(track) - h_max - 1) // stride + 1) - run + 1, count)
    anchors = first[:, None] + np.arange(run)[None, :]                               # (count, run)
    which = rng.integers(0, len(streams), count)
    hs = rng.integers(0, h_max + 1, count)
    idx = anchors[:, :, None] - np.arange(history - 1, -1, -1)[None, None, :]       # (count, run, history)
    window = streams[which[:, None, None], idx]                                     # (count, run, history, K, 3)
    target = track[anchors * stride + hs[:, None]]                                  # (count, run, K, 3)
    truth_window = track[idx * stride]
    seen = (truth_window[..., 2] >= VISIBLE).all(2) & np.isfinite(window[..., :2]).all((2, 4))   # (count, run, K)
    ok = seen & (target[..., 2] >= VISIBLE)
    c, k = count * run, track.shape[1]
    x = window_features(window[..., :2].reshape(c, history, k, 2), seen.reshape(c, k),
                        np.repeat(hs * fps / STEP_HZ, run), scale, context).reshape(count, run, k, -1)
    y = np.nan_to_num(target[..., :2] - window[:, :, -1, :, :2]) * scale            # (count, run, K, 2)
    newest = np.nan_to_num(window[:, :, -1, :, :2]) * scale        # (a tracker's missing point: out of the loss)
    keep = ok.all(1)                                                                 # (count, K)
    if body:        # whole bodies: (count, run, in), (count, run, K, 2) x2, (count, K) where the loss counts
        xb = body_features(x, seen)
        return xb.astype(np.float32), y.astype(np.float32), newest.astype(np.float32), keep
    pick = lambda a: a.transpose(0, 2, 1, 3)[keep].astype(np.float32)               # noqa: E731 -> (M, run, .)
    return pick(x), pick(y), pick(newest)


def recorded_track(times: np.ndarray, landmarks: np.ndarray, *, fps: float, history: int,
                   horizon_max_s: float) -> tuple[np.ndarray, np.ndarray] | None:
    """One uninterrupted shot of a recorded landmark stream (``times`` s, ``landmarks`` (N, K, 3), as
    posecast/forecasting.py ``stream_shots`` gives it) as training material: (track at STEP_HZ, streams (1, M, K, 3)
    at ``fps``), both linearly interpolated from the recording on its timestamps -- the truth and what the
    forecaster sees are the recording itself, with its own tracker jitter (no noise added). None when the shot is
    too short for a window of ``history`` frames, a run and the longest horizon."""
    times = np.asarray(times, np.float64) - float(times[0])
    landmarks = np.asarray(landmarks, np.float32)
    grid = np.arange(0.0, times[-1] + 1e-9, 1.0 / STEP_HZ)
    stride = int(round(STEP_HZ / fps))
    if (len(grid) - int(horizon_max_s * STEP_HZ) - 1) // stride + 1 < history + 3:
        return None
    flat = landmarks.reshape(len(landmarks), -1)
    track = np.stack([np.interp(grid, times, col) for col in flat.T], 1).reshape(len(grid), *landmarks.shape[1:])
    track = track.astype(np.float32)
    return track, track[::stride][None]


def redetected(seed: int, seconds: float, *, fps: float = 30.0, size: int = 256, progress: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic dancer's motion ``seed`` rendered at ``size`` (appearance ``seed % 5``) and re-detected by
    MediaPipe pose in tracking mode, as the capture client runs it -> (the exact motion at STEP_HZ, what MediaPipe
    saw at ``fps`` (N, 33, 3), NaN where it found nobody): an ``observed`` pair for ``train_forecaster``, with
    MediaPipe's own jitter and the exact truth."""
    from tqdm import tqdm

    from models.detect import LandmarkExtractor
    from models.motion import DanceMotion
    from trainer.synth import DancerRenderer

    motion, renderer = DanceMotion(seed, fps=fps), DancerRenderer(size, seed % 5)
    seen = []
    with LandmarkExtractor("dance", static_image_mode=False) as extract:
        for i in tqdm(range(int(seconds * fps)), desc=f"MediaPipe on motion {seed}", disable=not progress):
            lm = extract(renderer.render(motion.pose(i)).frame)
            seen.append(np.full((33, 3), np.nan, np.float32) if lm is None else lm.astype(np.float32))
    return motion_samples(seed, len(seen) / fps), np.stack(seen)


TRAIN_SEEDS = (0, 1, 2, 3, 4, 5, *range(10, 40), *range(100, 136))   # 6-9 and 40-99 are left for reports
CARRY_HZ = 0.3    # the carried copies drift and glide (``carried``: up to this frequency)


def train_forecaster(out: str | Path, *, seeds=TRAIN_SEEDS, seconds: float = 60.0, history: int = 20,
                     fps: float = 30.0, hidden: int | None = None, steps: int | None = None, batch: int | None = None,
                     lr: float = 1e-3,
                     noise_max: float = 0.004, horizon_max_s: float = 0.3, scale: float = 30.0, seed: int = 0,
                     one_euro: dict | None = None, context: bool = True, smooth: float | None = None, arch: str = "body",
                     augment: bool = True, carry_hz: float = CARRY_HZ, recorded=(), observed=(),
                     real_share: float | None = None, rate_alpha: float | None = None, progress: bool = True) -> Path:
    """Train the forecaster on ``seeds``' motion and write ``out``/forecaster.{json,safetensors,onnx}. ``hidden``,
    ``batch`` (landmark rows a step) and ``smooth`` (the weight of the acceleration term) default per ``arch``;
    ``steps`` to 20000. ``carry_hz``: how fast the carried copies (``augment``) move. ``recorded``: shots of
    recorded pose streams (``(times, landmarks)`` each, in square units; ``recorded_track``) trained on beside the
    synthetic motion: real tracker jitter. ``observed``: (track at STEP_HZ, what a tracker saw of it at ``fps``
    (N, K, 3)) pairs -- the synthetic dancer rendered and re-detected by MediaPipe: its jitter with the exact truth.
    ``real_share``: the fraction of steps drawn from those two (None: each shot or pair as likely as a motion
    seed). ``one_euro``: the
    One Euro filter's parameters when the forecaster runs behind one (it then learns to undo the filter's lag; saved
    with it), None: on the raw landmarks. ``rate_alpha``: how much of each sample's forecast rate it takes against
    the last one's, in (0, 1] (saved with it; None: models/forecast.py ``RATE_ALPHA`` for a whole-body network,
    where it was chosen, 1 (no smoothing) for a per-landmark one)."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    if arch not in ("body", "landmark"):
        raise ValueError(f"arch must be 'body' or 'landmark', got {arch!r}")
    body = arch == "body"     # the defaults of each (chosen on held-out motion seed 7, docs/performance.md)
    hidden = hidden or (512 if body else 128)
    batch = batch or (256 * 99 if body else 4096)     # landmark rows a step: 256 / 41 runs of 3 poses
    steps = steps or 20000
    smooth = (2.0 if body else 0.7) if smooth is None else smooth
    rate_alpha = (RATE_ALPHA if body else 1.0) if rate_alpha is None else float(rate_alpha)
    if not 0 < rate_alpha <= 1:
        raise ValueError(f"rate_alpha must be in (0, 1], got {rate_alpha}")

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    tracks = [motion_samples(s, seconds) for s in tqdm(seeds, desc="motion", disable=not progress)]
    if augment:       # each motion again, carried around the frame: people walk, lean and come closer
        tracks += [carried(t, rng, max_hz=carry_hz) for t in tracks]
    levels = np.linspace(0.0, noise_max, 5)
    smoother = (lambda: OneEuroFilter(**one_euro)) if one_euro else None
    streams = [filtered_streams(t, rng, fps=fps, noise_levels=levels, smoother=smoother) for t in tracks]
    used, real = 0, []
    for times, lms in recorded:
        if np.shape(lms)[1:] != tracks[0].shape[1:]:
            raise ValueError(f"a recorded shot of {np.shape(lms)[1]} landmarks; the synthetic motion has "
                             f"{tracks[0].shape[1]} (record poses: capture --save-landmarks with a dance model)")
        got = recorded_track(times, lms, fps=fps, history=history, horizon_max_s=horizon_max_s)
        if got is not None:
            track, stream = got
            real.append((track, smoothed(stream[0], smoother, fps)[None]))
            used += 1
    for track, seen in observed:
        if np.shape(seen)[1:] != tracks[0].shape[1:]:
            raise ValueError(f"an observed stream of {np.shape(seen)[1]} landmarks; the motion has {tracks[0].shape[1]}")
        real.append((np.asarray(track, np.float32), smoothed(np.asarray(seen, np.float32), smoother, fps)[None]))
    if len(recorded) and not used:
        raise ValueError(f"none of the {len(recorded)} recorded shots is long enough to train on (each needs "
                         f"{(history + 3) / fps + horizon_max_s:.1f} s without a gap)")
    features = (history - 1) * 2 + (3 if context else 1)
    k_all = tracks[0].shape[1]
    n_in = k_all * (features + 1) - k_all + 1 if arch == "body" else features     # body: see body_features
    n_out = 2 * k_all if arch == "body" else 2
    net = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    kw = dict(history=history, fps=fps, scale=scale, horizon_max_s=horizon_max_s, context=context)
    acc = lambda p: p[:, 2] - 2 * p[:, 1] + p[:, 0]                                 # noqa: E731 - over a run
    bar = tqdm(range(steps), desc="forecaster", disable=not progress)
    for _ in bar:
        k = rng.integers(len(tracks) + (len(real) if real_share is None else 0))
        if real and (k >= len(tracks) or (real_share is not None and rng.random() < real_share)):
            track, stream = real[rng.integers(len(real))]
        else:
            track, stream = tracks[k], streams[k]
        if arch == "body":
            x, y, newest, keep = examples(track, stream, rng, max(1, batch // (3 * k_all)), body=True, **kw)
            x, y, newest = (torch.from_numpy(a) for a in (x, y, newest))
            w = torch.from_numpy(keep.astype(np.float32))[:, None, :, None]           # (count, 1, K, 1)
            pred = net(x).reshape(y.shape)
            denom = w.sum().clamp(min=1.0) * 2
            loss = ((pred - y) ** 2 * w).sum() / (denom * y.shape[1])
            if smooth:
                d = acc(pred + newest) - acc(y + newest)
                loss = loss + smooth * (d ** 2 * w[:, 0]).sum() / denom
        else:
            x, y, newest = (torch.from_numpy(a) for a in
                            examples(track, stream, rng, max(1, batch // (3 * k_all)), **kw))
            pred = net(x)
            loss = torch.nn.functional.mse_loss(pred, y)
            if smooth:     # the shown stream's frame-to-frame acceleration against the truth's
                loss = loss + smooth * torch.nn.functional.mse_loss(acc(pred + newest), acc(y + newest))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    tensors = {f"layers.{i}.{k}": v.detach().contiguous() for i, m in enumerate(layers) for k, v in
               (("weight", m.weight), ("bias", m.bias))}
    config = {"format": "posecast-forecaster", "version": 1, "layers": len(layers), "history": history, "fps": fps,
              "scale": scale, "hidden": hidden, "one_euro": one_euro, "context": context, "arch": arch,
              "num_landmarks": int(k_all), "rate_alpha": rate_alpha,
              "trained_on": {"motion_seeds": list(seeds), "seconds": seconds, "noise_max": noise_max,
                             "horizon_max_s": horizon_max_s, "steps": steps, "smooth": smooth, "augment": augment,
                             "carry_hz": carry_hz, "recorded_shots": used, "observed_streams": len(observed),
                             "real_share": real_share}}
    # Each file is written beside its name and moved over it: an interrupted run leaves the old forecaster whole.
    save_file(tensors, str(out / "forecaster.safetensors.tmp"))
    (out / "forecaster.json.tmp").write_text(json.dumps(config, indent=2))
    export_onnx(net, n_in, out / "forecaster.onnx")
    (out / "forecaster.safetensors.tmp").replace(out / "forecaster.safetensors")
    (out / "forecaster.json.tmp").replace(out / "forecaster.json")
    return out


def export_onnx(net: torch.nn.Module, features: int, path: Path) -> Path:
    """The network as ONNX (input ``x`` (M, features), output ``displacement`` (M, outputs): for a per-landmark
    forecaster one row per landmark and 2 outputs, for a whole-body one one row per pose, its K landmarks'
    features and the horizon, and 2K outputs), for runtimes without numpy (a browser page, another language). The
    client itself runs the same weights from the safetensors in numpy. A runtime of its own also applies what is
    around the network: the constant-velocity fallback and ``rate_alpha`` from the JSON (models/forecast.py
    ``LearnedForecaster._smooth_rate``)."""
    import io
    import warnings

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)     # the TorchScript exporter's notice (opset 17 is fine)
        torch.onnx.export(net.eval(), (torch.zeros(1, features),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["displacement"],
                          dynamic_axes={"x": {0: "landmarks"}, "displacement": {0: "landmarks"}})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path

