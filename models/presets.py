"""Model presets: small config dataclasses registered by name.

A preset fully describes a model (generator + discriminators + which labels it reads). The config is saved
as JSON next to the weights, so a checkpoint rebuilds its networks without any other code or options.

    >>> cfg = get_preset("dance", size=128)
    >>> cfg.label_nc, cfg.history_frames
    (3, 2)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from .render import label_channels
from .window import default_head_side

_PRESETS: dict[str, Callable[[], "ModelConfig"]] = {}


# Ranges of the size-like config fields: a damaged or hostile config file must not allocate gigabytes.
_BOUNDS = {"size": (16, 4096), "history_frames": (0, 16), "ngf": (1, 1024), "max_ngf": (1, 4096),
           "head_channels": (1, 256), "n_downsample": (0, 8), "n_blocks": (0, 64), "n_blocks_flow": (0, 64),
           "n_local": (0, 4), "ndf": (1, 1024), "d_layers": (1, 8), "d_scales": (1, 8), "temporal_frames": (2, 16)}


# The generator fields each architecture reads; the rest of ModelConfig (kind, size, history, the discriminators)
# every model reads. A config keeps the other architecture's fields at their defaults (``validate`` refuses a value
# that would be silently ignored) and does not save them.
ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "vid2vid": ("ngf", "n_downsample", "n_blocks", "n_blocks_flow", "max_ngf", "norm", "flow_max_px", "n_local"),
    "lite": ("ngf", "n_blocks", "person_crop", "crop_height", "crop_width", "head_crop", "head_channels",
             "window_smoothing", "window_border_px", "flow_grad_scale"),
}
LITE_STRIDE = 16    # lite's frame (and window) sides are multiples of this (a stride-4 input, then two stride-2 steps)
# What the lite preset set vid2vid's fields to before configs held only their architecture's (older files hold them).
_OLD_LITE_VALUES = {"n_downsample": 4, "n_blocks_flow": 0, "norm": "none"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str                         # preset name this config came from
    kind: str                         # label kind: "dance" (pose skeleton) or "face" (face-mesh contours)
    size: int = 256                   # square frame side in pixels (height = width)
    history_frames: int = 2           # L: previous generated frames (and L previous label maps) fed to G; 0 = per-frame
    # Generator.
    arch: str = "vid2vid"             # generator architecture: "vid2vid" (models/generator.py) | "lite" (models/lite.py)
    ngf: int = 32                     # channels after the first 7x7 conv of each encoder; doubled per downsample
    n_downsample: int = 3             # stride-2 convs in each encoder (and upsamplings in each decoder)
    n_blocks: int = 6                 # residual blocks on the summed encoder features (image branch)
    n_blocks_flow: int = 2            # extra residual blocks in the flow/mask branch
    max_ngf: int = 512                # channel cap
    norm: str = "instance"            # "instance" | "batch" | "none"
    flow_max_px: float = 0.0          # |flow| bound in pixels via tanh (0: unbounded, linear head)
    n_local: int = 0                  # coarse-to-fine local enhancers (0: global generator only)
    # Person crop (arch "lite"): the generator draws inside a crop_height x crop_width window of the frame that
    # follows the person (models/window.py) and composites it onto the background plate. 0 = the whole frame;
    # with person_crop the trainer sizes the window from the training data's landmarks before training.
    person_crop: bool = False
    crop_height: int = 0              # window height in pixels of the model frame (0: size)
    crop_width: int = 0               # window width in pixels of the model frame (0: size)
    head_crop: int = 0                # side in pixels of the head window refined by lite's head branch
                                      #   (0: no head branch; -1: models.window.default_head_side: size / 8
                                      #   for a body's head, 3/8 for a face's eyes and lips)
    head_channels: int = 24           # lite: channels of the head branch's convolutions
    window_smoothing: float = 0.6     # lite: weight of the window's previous centre in its per-frame moving average
    window_border_px: int = 6         # lite: the compositing alpha fades to zero over this many pixels at the border
    flow_grad_scale: float = 0.1      # lite: the flow/warp losses' gradient into the features the image shares
    # Discriminators.
    ndf: int = 32                     # first-layer channels of every PatchGAN (vid2vid: 64)
    d_layers: int = 3                 # stride-2 layers per PatchGAN
    d_scales: int = 2                 # spatial scales of the image discriminator
    temporal_frames: int = 3          # K consecutive frames judged by the temporal discriminator
    temporal_spacings: tuple = (1, 3) # frame spacings of the temporal discriminators (one D per spacing)

    @property
    def label_nc(self) -> int:
        """Channels of one frame's label map."""
        return label_channels(self.kind)

    @property
    def crop_hw(self) -> tuple[int, int]:
        """(height, width) of the window the generator draws in: the person crop, or the whole frame."""
        return (self.crop_height or self.size, self.crop_width or self.size)

    @property
    def head_side(self) -> int:
        """Side of the head window in pixels (0: no head branch)."""
        if self.head_crop == -1:
            return default_head_side(self.size, self.kind)
        return self.head_crop

    @property
    def has_plate_input(self) -> bool:
        """True when one generator step also takes the background plate's window (arch "lite")."""
        return self.arch == "lite"

    @property
    def is_temporal(self) -> bool:
        return self.history_frames > 0

    @staticmethod
    def unread_fields(arch: str) -> set[str]:
        """The generator fields an ``arch`` generator does not read (the other architectures')."""
        every = {f for fields in ARCH_FIELDS.values() for f in fields}
        return every - set(ARCH_FIELDS.get(arch, every))

    def to_dict(self) -> dict:
        """The fields this model reads (what is saved with its weights)."""
        unread = self.unread_fields(self.arch)
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in unread}
        d["temporal_spacings"] = list(self.temporal_spacings)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """A saved config; fields its architecture does not read (saved by older versions, which kept every
        field) are dropped."""
        if not isinstance(d, dict):
            raise ValueError(f"a model config is a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        arch = d.get("arch", "vid2vid")
        if isinstance(arch, str) and arch in ARCH_FIELDS:
            # Older files saved every field: the other architecture's at their defaults (or, for lite, at what its
            # preset set them to). Those go; any other value stays, for validate() to refuse.
            defaults = {f.name: f.default for f in dataclasses.fields(cls)}
            harmless = {**defaults, **(_OLD_LITE_VALUES if arch == "lite" else {})}
            d = {k: v for k, v in d.items()
                 if k not in cls.unread_fields(arch) or (v != harmless[k] and v != defaults[k])}
        if "temporal_spacings" in d:
            d["temporal_spacings"] = tuple(int(s) for s in d["temporal_spacings"])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def replace(self, **changes) -> "ModelConfig":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for f in dataclasses.fields(self):  # types first: a config file may hold anything
            v = getattr(self, f.name)
            ok = {"int": lambda: type(v) is int, "str": lambda: type(v) is str, "bool": lambda: type(v) is bool,
                  "float": lambda: type(v) in (int, float) and math.isfinite(v)}.get(f.type, lambda: True)()
            if not ok:
                raise ValueError(f"field {f.name!r} must be {f.type}, got {v!r}")
        for name, (lo, hi) in _BOUNDS.items():  # checked before anything is built (and allocated) from them
            if not lo <= getattr(self, name) <= hi:
                raise ValueError(f"field {name!r} must be in [{lo}, {hi}], got {getattr(self, name)}")
        if self.kind not in ("dance", "face"):
            raise ValueError(f"kind must be 'dance' or 'face', got {self.kind!r}")
        if self.arch not in ARCH_FIELDS:
            raise ValueError(f"arch must be one of {', '.join(ARCH_FIELDS)}, got {self.arch!r}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        ignored = [f"{n}={getattr(self, n)!r}" for n in sorted(self.unread_fields(self.arch))
                   if getattr(self, n) != defaults[n]]
        if ignored:
            raise ValueError(f"a {self.arch!r} generator does not read {', '.join(ignored)} (its fields: "
                             f"{', '.join(ARCH_FIELDS[self.arch])}): leave them out")
        # A whole-frame lite model (no person crop) has no window to smooth. (head_channels without a head branch
        # stays accepted: face-lite's preset sets it, and `--set head_crop=0` should not have to undo it.)
        if (self.arch == "lite" and not self.person_crop and self.crop_hw == (self.size, self.size)
                and self.window_smoothing != defaults["window_smoothing"]):
            raise ValueError(f"this lite generator does not read window_smoothing={self.window_smoothing!r}: its "
                             "window is the whole frame (no person_crop): nothing follows the person; leave it out")
        if self.arch == "lite":
            step, why = LITE_STRIDE, "lite's input strides"
        else:
            step, why = 2 ** (self.n_downsample + self.n_local), "2^(n_downsample + n_local)"
        if self.size < 16 or self.size % step:
            raise ValueError(f"size {self.size} must be >= 16 and a multiple of {step} ({why})")
        for name in ("crop_height", "crop_width"):
            v = getattr(self, name)
            if not 0 <= v <= self.size:
                raise ValueError(f"{name} {v} must be between 0 (the whole frame) and size {self.size}")
        if (self.person_crop or self.crop_height or self.crop_width) and self.kind == "face":
            raise ValueError("a person crop follows a body in the frame; a face dataset's frames are the stabilised "
                             "face crop already (the face-lite preset draws in them)")
        if not 0.0 <= self.window_smoothing < 1.0:
            raise ValueError(f"window_smoothing must be in [0, 1), got {self.window_smoothing}")
        if not 1 <= self.window_border_px <= min(self.crop_hw) // 2:
            raise ValueError(f"window_border_px {self.window_border_px} must be between 1 and half the window")
        if not 0.0 <= self.flow_grad_scale <= 1.0:
            raise ValueError(f"flow_grad_scale must be in [0, 1], got {self.flow_grad_scale}")
        if self.history_frames < 0:
            raise ValueError("history_frames must be >= 0")
        if self.norm not in ("instance", "batch", "none"):
            raise ValueError(f"norm must be instance|batch|none, got {self.norm!r}")
        if self.temporal_frames < 2:
            raise ValueError("temporal_frames must be >= 2")
        if self.head_crop < -1 or self.head_side > min(self.crop_hw):
            raise ValueError(f"head_crop {self.head_crop} must be -1 (auto), 0 (none) or a side that fits the "
                             f"{self.crop_hw[0]}x{self.crop_hw[1]} window")


def register_preset(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
    """Decorator: register a zero-argument function returning a ModelConfig under its config's name."""
    cfg = fn()
    if cfg.name in _PRESETS:
        raise ValueError(f"preset {cfg.name!r} registered twice")
    cfg.validate()
    _PRESETS[cfg.name] = fn
    return fn


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str, **overrides) -> ModelConfig:
    """The named preset, with fields overridden (e.g. ``size=128``)."""
    if name not in _PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    cfg = _PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg


def parse_overrides(items: list[str], cls: type = ModelConfig, exclude: tuple = ("name",)) -> dict:
    """``["ngf=16", "norm=batch", "temporal_spacings=1,3"]`` -> typed dict, checked against the dataclass ``cls``.

    Types come from the fields' defaults (ModelConfig: the ``dance`` preset's values)."""
    defaults = _PRESETS["dance"]() if cls is ModelConfig else cls()
    fields = [f.name for f in dataclasses.fields(cls) if f.name not in exclude]
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"bad override {item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        default = getattr(defaults, key)
        try:
            if isinstance(default, bool):
                if value.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    raise ValueError("expected true or false")
                out[key] = value.lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                out[key] = int(value)
            elif isinstance(default, float):
                out[key] = float(value)
            elif isinstance(default, tuple):
                out[key] = tuple(int(v) for v in value.split(",") if v)
            else:
                out[key] = value
        except ValueError as e:
            raise ValueError(f"bad override {item!r}: {e}") from None
    return out


# -- the presets -------------------------------------------------------------------------------------
# The published vid2vid models use ngf 128 (pose) / 64 (face), 9 blocks, 512-2048 px, and train for days on
# V100s. These defaults keep the same structure at a size that trains on a CPU or a single consumer GPU;
# scale them up with overrides (``--set ngf=64 --set n_blocks=9 --size 512``).

@register_preset
def _dance() -> ModelConfig:
    """Full-body dance model: pose skeleton labels, L = 2 history frames, flow + occlusion mask."""
    return ModelConfig(name="dance", kind="dance", size=256, history_frames=2, ngf=32, n_downsample=3,
                       n_blocks=6, n_blocks_flow=2)


@register_preset
def _dance_perframe() -> ModelConfig:
    """pix2pixHD-style baseline: the dance generator with no history (no flow, no mask)."""
    return dataclasses.replace(_dance(), name="dance-perframe", history_frames=0)


@register_preset
def _face() -> ModelConfig:
    """Talking-face model: face-mesh edge + distance-transform labels."""
    return ModelConfig(name="face", kind="face", size=256, history_frames=2, ngf=32, n_downsample=3,
                       n_blocks=6, n_blocks_flow=2)


@register_preset
def _face_lite() -> ModelConfig:
    """CPU real-time face model (models/lite.py): lite's generator on the stabilised face crop (the whole frame of a
    face dataset), its head branch a full-resolution detail window on the eyes and mouth."""
    return ModelConfig(name="face-lite", kind="face", arch="lite", size=256, history_frames=2, ngf=32, n_blocks=4,
                       head_crop=-1, head_channels=16)


@register_preset
def _lite() -> ModelConfig:
    """CPU real-time dance model (models/lite.py): same temporal design, drawn in a person crop on a plate."""
    return ModelConfig(name="lite", kind="dance", arch="lite", size=256, history_frames=2, ngf=32, n_blocks=4,
                       person_crop=True, head_crop=-1)
