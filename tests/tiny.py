"""Small model files for the tests: random-init checkpoints of any preset."""

from __future__ import annotations

from pathlib import Path

import torch

from models.checkpoint import save_generator
from models.registry import build_generator
from models.presets import get_preset

SERVER_SIZE = 32          # frame side of the tiny model the server, protocol and security tests serve

def random_checkpoint(root: Path, preset: str = "dance", *, seed: int = 0, meta: dict | None = None,
                      **fields) -> Path:
    """A checkpoint of ``preset`` (with ``fields`` overridden) at random init from ``seed``: ``root``/generator.*.
    Returns ``root`` (a run folder every loader accepts)."""
    torch.manual_seed(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    save_generator(root / "generator", build_generator(get_preset(preset, **fields)), meta)
    return root
