"""Checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (config and metadata). Never pickles.

The JSON holds the ModelConfig, so ``load_generator`` rebuilds the network from the files alone; realtime/
uses it without importing trainer/. Writes are atomic (temp file + rename), so a crash never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .generator import SequentialGenerator
from .io import atomic_write
from .presets import ModelConfig
from .registry import build_generator

FORMAT = "posecast-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match its config."""


def save_checkpoint(stem: str | os.PathLike, tensors: dict[str, torch.Tensor], cfg: ModelConfig,
                    meta: dict | None = None) -> Path:
    """Write ``stem.safetensors`` and ``stem.json``. ``tensors`` keys are namespaced, e.g. ``G.trunk...``."""
    stem = Path(stem)
    weights = stem.with_suffix(".safetensors")
    doc = {"format": FORMAT, "version": VERSION, "config": cfg.to_dict(), "meta": meta or {}}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(weights, lambda p: save_file(flat, p, metadata={"format": FORMAT}))
    # The JSON goes last: its presence marks a complete checkpoint.
    atomic_write(stem.with_suffix(".json"), lambda p: Path(p).write_text(json.dumps(doc, indent=2)))
    return stem.with_suffix(".json")


def save_generator(stem: str | os.PathLike, generator: torch.nn.Module, meta: dict | None = None) -> Path:
    """``save_checkpoint`` of one generator: its weights as ``G.*`` and its own config (``generator.cfg``)."""
    return save_checkpoint(stem, {f"G.{k}": v for k, v in generator.state_dict().items()}, generator.cfg, meta)


def resolve(path: str | os.PathLike) -> Path:
    """Accept a run folder (its ``latest``/``generator`` checkpoint), a ``.json`` or a ``.safetensors`` path."""
    p = Path(path)
    if p.is_dir():
        for name in ("generator.json", "latest.json"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p}: no generator.json or latest.json checkpoint in this folder")
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint config not found")
    return p


def read_config(path: str | os.PathLike) -> tuple[ModelConfig, dict, Path]:
    """(config, meta, the .json's path) of a checkpoint, without reading its weights; clear errors for every way
    the JSON can be wrong."""
    cfg_path = resolve(path)
    try:
        doc = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: not a posecast checkpoint (format={doc.get('format') if isinstance(doc, dict) else None!r})")
    if doc.get("version") != VERSION:
        raise CheckpointError(f"{cfg_path}: checkpoint version {doc.get('version')} not supported (expected {VERSION})")
    try:
        cfg = ModelConfig.from_dict(doc["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: bad model config ({e})") from None
    return cfg, doc.get("meta", {}), cfg_path


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, tensors, meta) of a checkpoint; clear errors for every way it can be wrong."""
    cfg, meta, cfg_path = read_config(path)
    weights = cfg_path.with_suffix(".safetensors")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file missing")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({e})") from None
    return cfg, tensors, meta


def subdict(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with a readable error naming missing / unexpected / mis-shaped tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})")
        if bad:
            parts.append("wrong shape: " + ", ".join(f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                                                    for k in bad[:3]))
        raise CheckpointError(f"{what} weights do not match the config: " + "; ".join(parts))
    module.load_state_dict(state)


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SequentialGenerator, dict]:
    """Rebuild the generator from a checkpoint (eval mode). Returns (generator, meta)."""
    cfg, tensors, meta = read_checkpoint(path)
    g = build_generator(cfg)
    state = subdict(tensors, "G")
    if not state:
        raise CheckpointError(f"{resolve(path)}: no generator tensors (expected keys 'G.*')")
    load_state(g, state, "generator")
    return g.to(device).eval(), meta
