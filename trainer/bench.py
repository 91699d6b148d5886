"""Training speed for ``posecast bench --train``: the real training iteration, timed stage by stage.

What is timed is what ``posecast train`` runs — ``Trainer`` itself, on a synthetic-dancer dataset, with the
preset's recipe: sampling and augmenting a clip, rendering its label maps, the generator's rollout, every loss,
the discriminators' step (adversarial phase), the backward pass, Adam and the EMA. Only the phase is forced
(``gan_start`` 0 or never) and the clip length fixed (``clip_frames``, the recipe's longest by default). The first
iteration is a warm-up and is not counted. posecast/bench.py times the live path.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .clock import STAGES, StageClock

PHASES = ("regression", "adversarial")


def bench_data(size: int, folder: str | Path, frames: int = 120, kind: str = "dance") -> Path:
    """The dataset the training figures use (``frames`` frames at ``size``): the synthetic dancer, or for
    ``kind`` "face" the synthetic talking face."""
    if kind == "face":
        from .synth_face import synthesize_face

        return synthesize_face(Path(folder) / f"face-{size}", num_frames=frames, size=size, progress=False)
    from .synth import synthesize

    return synthesize(Path(folder) / f"data-{size}", num_frames=frames, size=size, progress=False)


def bench_train(preset: str, size: int, *, phase: str = "adversarial", precision: str = "fp32",
                clip_frames: int = 8, iterations: int = 5, device: str = "cpu", data: str | Path | None = None,
                **fields) -> dict:
    """One row: it/s and ms per iteration in each stage (trainer/clock.py) of ``preset`` at ``size`` in ``phase``,
    over ``iterations`` iterations after a warm-up one. ``data``: a dataset (default: 120 synthetic frames of
    the preset's kind);
    ``fields``: TrainConfig fields on top of the recipe (what a change is measured with)."""
    from models.presets import get_preset

    from .train import Trainer, train_config_for

    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    cfg = get_preset(preset, size=size)
    with tempfile.TemporaryDirectory() as tmp:
        data = data or bench_data(size, tmp, kind=cfg.kind)
        tc = train_config_for(cfg, iterations=iterations + 1, clip_frames_start=clip_frames,
                              clip_frames_max=clip_frames, gan_start=0.0 if phase == "adversarial" else 2.0,
                              checkpoint_every=10**9, sample_every=10**9, log_every=10**9, device=device,
                              precision=precision, **fields)
        marks: list[float] = []

        def on_iteration(it: int, logs: dict) -> None:
            marks.append(time.perf_counter())
            if it == 1:                                  # the warm-up iteration is not counted
                trainer.clock.reset()

        trainer = Trainer(cfg, tc, data, Path(tmp) / "run", progress=False, on_iteration=on_iteration)
        trainer.clock = StageClock(trainer.device)
        trainer.run()
        per_it = (marks[-1] - marks[0]) / (len(marks) - 1)
        stages = {f"{s}_ms": round(trainer.clock.totals[s] / iterations * 1e3, 1) for s in STAGES}
    row = {"what": "train", "preset": preset, "size": size, "precision": precision,
           "precision_used": trainer.precision, "phase": phase, "clip_frames": clip_frames,
           "device": str(trainer.device), "it_per_s": round(1.0 / per_it, 3), "s_per_it": round(per_it, 3), **stages}
    row["other_ms"] = round(per_it * 1e3 - sum(stages.values()), 1)
    return row
