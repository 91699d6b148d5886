"""Training the learned pose forecaster (models/forecast.py ``LearnedForecaster``) on the synthetic dancer's motion.

Every training example is one landmark: its last ``history`` positions in a 30 fps stream with Gaussian noise
(0 to ``noise_max`` of the frame side, as MediaPipe's jitter), relative to the newest, and a horizon of 0 to
``horizon_max_s``; the target is where that landmark truly is at the horizon (models/motion.py gives the motion at
any instant), relative to the newest *noisy* position — so the model learns to see through the noise as well as to
extrapolate. Landmarks not visible over the whole window are left out. The motion seeds trained on must not be
the ones reported on (``posecast bench --forecast --seed N``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from models.forecast import VISIBLE, OneEuroFilter

STEP_HZ = 120     # the motion is sampled this often: horizons are multiples of 1/120 s


def motion_samples(seed: int, seconds: float) -> np.ndarray:
    """(N, K, 3) landmarks of the synthetic dancer's motion ``seed`` at STEP_HZ for ``seconds``."""
    from models.motion import DanceMotion

    motion = DanceMotion(seed, fps=float(STEP_HZ))
    return np.stack([motion.landmarks(i) for i in range(int(seconds * STEP_HZ))])


def filtered_streams(track: np.ndarray, rng: np.random.Generator, *, fps: float, noise_levels, smoother):
    """The ``fps`` stream of ``track`` (STEP_HZ) with Gaussian noise at each of ``noise_levels``, each passed through
    a fresh ``smoother()`` (None: raw) as the forecaster will see it live. -> (len(levels), N, K, 3)."""
    stride = int(round(STEP_HZ / fps))
    frames = track[::stride]
    out = []
    for sigma in noise_levels:
        noisy = frames.copy()
        noisy[..., :2] += rng.normal(0.0, sigma, noisy[..., :2].shape).astype(np.float32)
        if smoother is not None:
            f = smoother()
            noisy = np.stack([f(i / fps, lm) for i, lm in enumerate(noisy)])
        out.append(noisy)
    return np.stack(out)


def examples(track: np.ndarray, streams: np.ndarray, rng: np.random.Generator, count: int, *, history: int,
             fps: float, scale: float, horizon_max_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (M, (history-1)*2 + 1), targets (M, 2)) of ``count`` random windows of the streams (``fps``) of
    ``track`` (STEP_HZ, the truth the targets come from)."""
    stride = int(round(STEP_HZ / fps))
    h_max = int(horizon_max_s * STEP_HZ)
    n = streams.shape[1]
    anchors = rng.integers(history - 1, min(n, (len(track) - h_max - 1) // stride + 1), count)
    which = rng.integers(0, len(streams), count)
    hs = rng.integers(0, h_max + 1, count)
    idx = anchors[:, None] - np.arange(history - 1, -1, -1)[None, :]                # (count, history) oldest first
    window = streams[which[:, None], idx]                                            # (count, history, K, 3)
    target = track[anchors * stride + hs]                                           # (count, K, 3)
    truth_window = track[idx * stride]
    ok = (truth_window[..., 2] >= VISIBLE).all(1) & (target[..., 2] >= VISIBLE)     # (count, K)
    ok &= np.isfinite(window[..., :2]).all((1, 3))
    rel = (window[:, :-1, :, :2] - window[:, -1:, :, :2]) * scale                   # (count, history-1, K, 2)
    x = np.concatenate([rel.transpose(0, 2, 1, 3).reshape(count, rel.shape[2], -1),
                        np.broadcast_to((hs * fps / STEP_HZ)[:, None, None], (count, rel.shape[2], 1))], 2)
    y = (target[..., :2] - window[:, -1, :, :2]) * scale
    return x[ok].astype(np.float32), y[ok].astype(np.float32)


def train_forecaster(out: str | Path, *, seeds=(0, 1, 2, 3, 4, 5), seconds: float = 60.0, history: int = 10,
                     fps: float = 30.0, hidden: int = 64, steps: int = 3000, batch: int = 4096, lr: float = 1e-3,
                     noise_max: float = 0.004, horizon_max_s: float = 0.2, scale: float = 30.0, seed: int = 0,
                     one_euro: dict | None = None, progress: bool = True) -> Path:
    """Train the forecaster on ``seeds``' motion and write ``out``/forecaster.{json,safetensors}. ``one_euro``: the
    One Euro filter's parameters when the forecaster runs behind one (it then learns to undo the filter's lag; saved
    with it), None: on the raw landmarks."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    tracks = [motion_samples(s, seconds) for s in tqdm(seeds, desc="motion", disable=not progress)]
    levels = np.linspace(0.0, noise_max, 5)
    smoother = (lambda: OneEuroFilter(**one_euro)) if one_euro else None
    streams = [filtered_streams(t, rng, fps=fps, noise_levels=levels, smoother=smoother) for t in tracks]
    net = torch.nn.Sequential(torch.nn.Linear((history - 1) * 2 + 1, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    kw = dict(history=history, fps=fps, scale=scale, horizon_max_s=horizon_max_s)
    bar = tqdm(range(steps), desc="forecaster", disable=not progress)
    for _ in bar:
        k = rng.integers(len(tracks))
        x, y = examples(tracks[k], streams[k], rng, max(1, batch // tracks[k].shape[1]), **kw)
        loss = torch.nn.functional.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(y))
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
              "scale": scale, "hidden": hidden, "one_euro": one_euro, "trained_on": {"motion_seeds": list(seeds), "seconds": seconds,
                                                               "noise_max": noise_max, "horizon_max_s": horizon_max_s,
                                                               "steps": steps}}
    save_file(tensors, str(out / "forecaster.safetensors"))
    (out / "forecaster.json").write_text(json.dumps(config, indent=2))
    return out
