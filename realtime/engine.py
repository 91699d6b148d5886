"""One backend-agnostic interface over the compiled generator: ``Engine.step(labels, previous) -> frame``.

Backends (by name): ``torch`` (plain PyTorch, the reference path), ``onnxruntime`` (CPU, or CUDA when present),
``tensorrt`` and ``torch-tensorrt`` (NVIDIA GPUs, optional extras). All take and return numpy float32 arrays in
the generator's conventions (see models/generator.py):

    labels   (1, (L+1)*C, S, S)  label maps of frames t-L..t in [0, 1]
    previous (1, L*3, S, S)      the L previously generated frames in [-1, 1] (None when L = 0)
    -> frame (1, 3, S, S)        in [-1, 1]

Loading never imports trainer/: the model is rebuilt from its checkpoint (models.checkpoint).
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from models.presets import ModelConfig

_BACKENDS: dict[str, Callable[..., "Engine"]] = {}


class EngineError(RuntimeError):
    """A backend is unavailable here, or an engine cannot be built/loaded."""


def register_backend(name: str):
    def deco(factory):
        _BACKENDS[name] = factory
        return factory
    return deco


def list_backends() -> list[str]:
    return sorted(_BACKENDS)


class Engine:
    """Base class: subclasses set ``cfg``, ``backend`` and implement ``_run``."""

    cfg: ModelConfig
    backend: str = "?"
    device: str = "cpu"

    def step(self, labels: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        cfg = self.cfg
        L, C, S = cfg.history_frames, cfg.label_nc, cfg.size
        if labels.shape != (1, (L + 1) * C, S, S):
            raise ValueError(f"labels must be {(1, (L + 1) * C, S, S)}, got {labels.shape}")
        if L and (previous is None or previous.shape != (1, L * 3, S, S)):
            raise ValueError(f"previous must be {(1, L * 3, S, S)}, got {None if previous is None else previous.shape}")
        return self._run(np.ascontiguousarray(labels, np.float32),
                         np.ascontiguousarray(previous, np.float32) if L else None)

    def _run(self, labels: np.ndarray, previous: np.ndarray | None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.backend} on {self.device} ({self.cfg.name}, {self.cfg.size}px, L={self.cfg.history_frames})"


@register_backend("torch")
class TorchEngine(Engine):
    """Plain PyTorch: the reference path the other backends are checked against."""

    backend = "torch"

    def __init__(self, model: str | os.PathLike, device: str = "cpu", **_):
        import torch

        from models.checkpoint import load_generator

        self._torch = torch
        self.device = device
        self.G, self.meta = load_generator(model, device)
        self.cfg = self.G.cfg

    def _run(self, labels, previous):
        torch = self._torch
        with torch.inference_mode():
            lab = torch.from_numpy(labels).to(self.device)
            prev = torch.from_numpy(previous).to(self.device) if previous is not None else None
            return self.G(lab, prev)[0].float().cpu().numpy()


def open_engine(model: str | os.PathLike, backend: str = "onnxruntime", **kwargs) -> Engine:
    """Build or load the engine of ``model`` (a run folder or checkpoint .json) on ``backend``."""
    if backend not in _BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; available: {', '.join(list_backends())}")
    return _BACKENDS[backend](model, **kwargs)
