"""Generator architectures by name: ``ModelConfig.arch`` -> the network class, and ``build_generator``.

The table sits above the modules that define the architectures (models/generator.py, models/lite.py) and imports
them, so no architecture module needs another one imported to be buildable (``generator`` used to import ``lite``
at its bottom just to register it: a cycle). A new architecture is a class (a ``SequentialGenerator``) in its own
module plus one line here; tests iterate over ``ARCHITECTURES``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from .generator import Generator, SequentialGenerator
from .lite import LiteGenerator
from .presets import ModelConfig

#: ``ModelConfig.arch`` -> the class built from a config (``cls(cfg)``).
ARCHITECTURES: Mapping[str, type[SequentialGenerator]] = MappingProxyType({
    "vid2vid": Generator,       # vid2vid's global generator + local enhancers (models/generator.py)
    "lite": LiteGenerator,      # the CPU real-time person-crop generator (models/lite.py)
})


def build_generator(cfg: ModelConfig) -> SequentialGenerator:
    """The generator network of ``cfg`` (by ``cfg.arch``), freshly initialised."""
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"unknown generator architecture {cfg.arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[cfg.arch](cfg)
