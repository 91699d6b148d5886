"""Training speed for ``posecast bench --train`` (posecast/bench.py times the live path)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def bench_train(preset: str, size: int, *, clip_frames: int = 4, iterations: int = 4, device: str = "cpu") -> dict:
    """Training speed (iterations/s, one clip of ``clip_frames`` frames per iteration) on the synthetic dancer."""
    from models.presets import get_preset

    from .synth import synthesize
    from .train import Trainer, train_config_for

    cfg = get_preset(preset, size=size)
    with tempfile.TemporaryDirectory() as tmp:
        data = synthesize(Path(tmp) / "data", num_frames=max(16, clip_frames + 2), size=size, progress=False)
        tc = train_config_for(cfg, iterations=iterations + 1, clip_frames_start=clip_frames,
                              clip_frames_max=clip_frames, checkpoint_every=10**9, sample_every=10**9,
                              log_every=10**9, device=device)
        times = []
        t = Trainer(cfg, tc, data, Path(tmp) / "run", progress=False,
                    on_iteration=lambda it, logs: times.append(time.perf_counter()))
        t.run()
    per_it = float(np.median(np.diff(times)))  # the first iteration (warm-up) is excluded by the diff
    return {"what": "train", "preset": preset, "size": size, "clip_frames": clip_frames, "device": device,
            "it_per_s": round(1.0 / per_it, 3), "s_per_it": round(per_it, 2)}
