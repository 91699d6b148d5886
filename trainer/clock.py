"""Where a training iteration's time goes: wall time per named stage, for ``posecast bench --train``.

The trainer wraps each stage of an iteration (``with self.clock("data"): ...``); the default clock does nothing.
On a GPU the work is asynchronous, so a measuring clock synchronises the device at every stage boundary — that
costs a little, which is why only the benchmark measures.
"""

from __future__ import annotations

import collections
import contextlib
import time

import torch

STAGES = ("data", "generator", "losses", "backward", "discriminators", "optimizer")
#: data: sample a clip, render its label maps, move it to the device; generator: G's rollout over the clip and the
#: windows cut from it; losses: G's loss terms (the discriminators' forward passes for G included); backward: G's
#: backward pass; discriminators: D's forward, backward and step; optimizer: G's Adam step and the EMA update.


class StageClock:
    """Sums wall time per stage (seconds); ``device``: synchronise this CUDA device around every stage."""

    def __init__(self, device: torch.device | None = None):
        self.totals: collections.Counter = collections.Counter()
        self._sync = device is not None and device.type == "cuda"
        self._device = device

    @contextlib.contextmanager
    def __call__(self, stage: str):
        if self._sync:
            torch.cuda.synchronize(self._device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize(self._device)
            self.totals[stage] += time.perf_counter() - t0

    def reset(self) -> None:
        self.totals.clear()


class NoClock:
    """The trainer's default: stages are not timed."""

    _null = contextlib.nullcontext()

    def __call__(self, stage: str):
        return self._null
