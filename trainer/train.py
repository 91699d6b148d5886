"""The vid2vid training loop, written out top to bottom.

Per iteration: sample B clips of T frames, generate them sequentially from an all-zero history (so inference
needs no real frames), then update the discriminators and the generator. T grows during training
(progressive temporal training). The image discriminator judges every frame of a clip, or ``d_frames`` of them
drawn at random (vid2vid's objective samples one frame, its phi_I).

Generator loss  = w_gan * adv_image + w_fm * FM_image + w_l1 * L1(frame, real)
                + w_flow * |flow - flow_gt|_conf + w_warp * |warp(real_{t-1}, flow) - real_t|_conf
                + w_temporal * (adv_temporal + w_fm * FM_temporal)
                + w_distill * L1(frame, teacher's frame)        (only with a teacher)
With ``teacher`` set to a trained run, the generator also learns to reproduce that (larger) model's output
for the same labels: knowledge distillation, how the `lite` preset inherits what a full `dance` model learned.
vid2vid's VGG perceptual loss needs pretrained weights that cannot be downloaded here; the L1 term stands in.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoint import (CheckpointError, load_generator, load_state, read_checkpoint, save_checkpoint,
                               subdict)
from models.discriminators import FaceDiscriminator, ImageDiscriminator, TemporalDiscriminator
from models.presets import ModelConfig
from models.registry import build_generator
from models.visualize import label_preview, side_by_side, to_uint8
from models.warp import compose_flows, warp
from models.window import crop_size_for, cut_clips, default_head_side

from . import losses
from .clips import Augment, Clip, ClipSource
from .clock import NoClock
from .dataset import Dataset
from .distributed import Dist, Rollout, TemporalAll, synced
from .precision import autocast, grad_scaler, resolve_precision


class MixedIdentityWarning(UserWarning):
    """The training frames span more than one identity of the dataset's clip table."""


def _channels_last(net: torch.nn.Module) -> None:
    """``net`` in NHWC memory, except its per-channel (N, C, 1, 1) parameters outside convolutions (gains, biases):
    their gradients come back contiguous, and DDP warns and copies at every step when a gradient's strides differ
    from its parameter's."""
    net.to(memory_format=torch.channels_last)
    for m in net.modules():
        if not isinstance(m, torch.nn.modules.conv._ConvNd):
            for p in m.parameters(recurse=False):
                if p.dim() == 4 and p.shape[-2:] == (1, 1):
                    p.data = p.data.clone(memory_format=torch.contiguous_format)


@dataclasses.dataclass
class TrainConfig:
    iterations: int = 2000            # generator updates in total
    batch_size: int = 1               # clips per iteration
    lr: float = 2e-4                  # Adam learning rate (vid2vid)
    beta1: float = 0.5                # Adam betas (vid2vid)
    beta2: float = 0.999
    decay_start: float = 0.5          # fraction of iterations after which the lr decays linearly to 0
    clip_frames_start: int = 4        # T at the start (history L plus a couple of frames)
    clip_frames_max: int = 8          # T doubles up to this
    clip_double_every: int = 0        # iterations between doublings of T (0: spread evenly over the run)
    gan_mode: str = "lsgan"           # "lsgan" | "hinge"
    w_gan: float = 1.0                # image adversarial loss (vid2vid: 1)
    w_fm: float = 10.0                # feature matching (vid2vid: 10)
    w_l1: float = 10.0                # L1 to the real frame (stands in for VGG, vid2vid: 10)
    w_flow: float = 10.0              # flow L1 vs ground truth, masked by confidence (vid2vid: 10)
    w_warp: float = 10.0              # warp loss (vid2vid: 10)
    w_temporal: float = 1.0           # temporal GAN (vid2vid: 1)
    d_frames: int = 0                 # frames of each clip the image (and face) discriminator judge, drawn at random
                                      #   every iteration (0: all T; vid2vid's objective samples one, its phi_I)
    w_person: float = 0.0             # extra L1 weight inside the person's region (1 + w_person there)
    w_head: float = 0.0               # extra L1 weight inside the head region, on top (detail where people look)
    w_limbs: float = 0.0              # extra L1 weight on a band along arms, legs, hands and feet, on top (the thin
                                      #   parts a regression blurs first; what pose re-detection looks at)
    w_alpha: float = 0.0              # BCE of a plate-compositing generator's alpha against the person's silhouette
                                      #   (the subject's part of the data's person masks, else the pixels that
                                      #   differ from the data's background plate): the person opaque
    w_features: float = 0.0           # extra L1 weight on the face's features, on top: disks around a body's eyes,
                                      #   nose and mouth (which way the person faces); a face mesh's eyes and lips
    w_stable: float = 0.0             # temporal change: |(f_t - warp f_t-1) - (r_t - warp r_t-1)| along the data's
                                      #   flow (losses.temporal_change_loss): flicker, penalised directly
    w_face_gan: float = 0.0           # face GAN (Everybody Dance Now): adversarial loss of a PatchGAN of its own on
                                      #   the head window, plus w_fm x its feature matching (dance models)
    gan_start: float = 0.0            # fraction of the run after which the adversarial/FM losses switch on
                                      #   (0: from the start, vid2vid; a regression phase first otherwise)
    ema_halflife: float = 0.0         # half-life in iterations of the EMA of G's weights saved as the model
                                      #   (0: no EMA, the raw weights are saved); ramps up over the first 10%
    init: str = ""                    # trained run (folder or generator .json) whose generator weights this run
                                      #   starts from (fine-tuning; a fresh schedule, unlike --resume) ("": none)
    grow_from: str = ""               # trained run at half this resolution whose generator becomes this one's coarse
                                      #   stages (vid2vid's coarse-to-fine: models.generator.grow_from) ("": none)
    teacher: str = ""                 # trained run (folder or generator .json) to distil from ("": none)
    w_distill: float = 10.0           # L1 to the teacher's frames (used only with a teacher)
    augment: bool = True              # limb dropout / landmark jitter on label maps, clip tilt (False: none)
    # Label-map augmentation (defaults: trainer/clips.Augment's).
    limb_drop_prob: float = Augment.limb_drop_prob  # pose: probability of dropping each limb (vid2vid: 0.05)
    head_jitter_px: float = Augment.head_jitter_px  # pose: Gaussian noise (px at the model size) on the head
                                      #   landmarks; the frame is not moved, so features a few px wide blur with it
    face_jitter_px: float = Augment.face_jitter_px  # face: Gaussian noise (px) on every landmark
    tilt_prob: float = Augment.tilt_prob  # probability that a clip is turned/scaled/moved as a whole (trainer/clips.py)
    tilt_deg: float = Augment.tilt_deg    # its rotation range, +- degrees
    tilt_scale: float = Augment.tilt_scale  # its scale range, exp(+-)
    tilt_shift: float = Augment.tilt_shift  # its shift range, +- x the side
    seed: int = 0
    device: str = "auto"              # "auto" (CUDA when present) | "cpu" | "cuda" | "cuda:N"
    log_every: int = 10               # iterations between TensorBoard scalar writes
    sample_every: int = 200           # iterations between sample grids in TensorBoard
    checkpoint_every: int = 500       # iterations between checkpoints
    time_limit_s: float = 0.0         # stop (and checkpoint) after this many seconds (0: no limit); the
                                      #   schedules (lr decay, clip growth, GAN phase) then follow the time used
    threads: int = 0                  # torch CPU threads (0: torch's default)
    channels_last: bool = False       # the generator in NHWC memory (oneDNN's and tensor cores' own layout). Measured
                                      #   on this CPU: lite's loop 1.07x faster in fp32, 1.35x in bf16 (on in its
                                      #   recipe); vid2vid's dance generator 0.85x in fp32, 1.04x in bf16 (off)
    precision: str = "auto"           # the forward passes': "auto" (bf16 where the CPU/GPU does it natively, fp16 on
                                      #   older GPUs, else fp32) | "fp32" | "bf16" | "fp16" (CUDA); trainer/precision.py
    clips: tuple | None = None        # train on these clips only (the clip table's numbers; None: every clip)
    identity: str = ""                # train on the clips of this identity only (the clip table's letter; "": any)
    frame_ranges: tuple | None = None # and within these dataset frame ranges only, ((start, stop), ...) (None: all)
    clip_sampling: str = "frames"     # "frames": every window of T frames drawn alike (a shot as often as it is long)
                                      #   | "clips": every stretch of the chosen frames (a clip, or the part of one
                                      #   frame_ranges keeps) alike, then a window in it (vid2vid's)

    GAN_MODES = ("lsgan", "hinge")
    CLIP_SAMPLING = ("frames", "clips")

    def __post_init__(self):
        """Every value checked when the config is made, so a mistyped one fails before iteration 1, named."""
        from .precision import PRECISIONS

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"training config: {name} = {getattr(self, name)!r} {rule}")

        need(self.gan_mode in self.GAN_MODES, "gan_mode", f"is not one of {', '.join(self.GAN_MODES)}")
        need(self.precision in PRECISIONS, "precision", f"is not one of {', '.join(PRECISIONS)}")
        need(self.clip_sampling in self.CLIP_SAMPLING, "clip_sampling",
             f"is not one of {', '.join(self.CLIP_SAMPLING)}")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
             "is not auto, cpu, cuda or cuda:N")
        for name in ("iterations", "batch_size", "clip_frames_start", "clip_frames_max", "log_every", "sample_every",
                     "checkpoint_every"):
            need(type(getattr(self, name)) is int and getattr(self, name) >= 1, name, "must be an integer >= 1")
        for name in ("clip_double_every", "threads", "seed", "d_frames"):
            need(type(getattr(self, name)) is int and getattr(self, name) >= 0, name, "must be an integer >= 0")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "float" and not (type(v) in (int, float) and math.isfinite(v)):
                need(False, f.name, "must be a finite number")
            if f.name.startswith("w_") or f.name in ("ema_halflife", "time_limit_s", "head_jitter_px",
                                                     "face_jitter_px", "gan_start", "tilt_deg", "tilt_scale",
                                                     "tilt_shift"):
                need(v >= 0, f.name, "must be >= 0")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.tilt_deg <= 180, "tilt_deg", "must be <= 180 (degrees either way)")
        need(self.tilt_scale <= 1, "tilt_scale", "must be <= 1 (a scale range of exp(+-1), 0.37x to 2.7x)")
        need(self.tilt_shift <= 0.5, "tilt_shift", "must be <= 0.5 (of the side)")
        for name in ("beta1", "beta2", "decay_start", "limb_drop_prob", "tilt_prob"):
            need(0 <= getattr(self, name) <= 1, name, "must be in [0, 1]")
        if self.frame_ranges is not None:
            need(len(self.frame_ranges) > 0 and all(len(r) == 2 and 0 <= r[0] < r[1] for r in self.frame_ranges),
                 "frame_ranges", "must be ((start, stop), ...) with 0 <= start < stop")
        if self.clips is not None:
            need(len(self.clips) > 0 and all(type(c) is int and c >= 0 for c in self.clips), "clips",
                 "must be clip numbers >= 0")

    @classmethod
    def from_dict(cls, d: dict) -> tuple["TrainConfig", list[str]]:
        """A TrainConfig saved as JSON (a run's config.json / checkpoint meta ``train``), and the names of saved
        fields this version no longer has (left out; the caller says so). Lists come back as the tuples they were;
        fields added since take their defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in d.items() if k in known}
        if fields.get("clips") is not None:
            fields["clips"] = tuple(fields["clips"])
        if fields.get("frame_ranges") is not None:
            fields["frame_ranges"] = tuple(tuple(r) for r in fields["frame_ranges"])
        return cls(**fields), sorted(set(d) - known)

    def progress(self, it: int, elapsed_s: float = 0.0) -> float:
        """How far through the run, in [0, 1]: the iterations done, or the time used of ``time_limit_s`` when
        that is further along (a time-limited run then gets its whole schedule in the time it has)."""
        p = it / max(1, self.iterations)
        if self.time_limit_s > 0:
            p = max(p, elapsed_s / self.time_limit_s)
        return min(1.0, p)

    def clip_frames(self, progress: float, min_frames: int) -> int:
        """Clip length T at ``progress``: clip_frames_start doubled in equal steps of the run (or every
        clip_double_every iterations, counted as a fraction of ``iterations``) up to clip_frames_max."""
        start = max(self.clip_frames_start, min_frames)
        top = max(self.clip_frames_max, start)
        doublings = max(0, math.ceil(math.log2(top / start)))
        every = (self.clip_double_every / max(1, self.iterations)) if self.clip_double_every else 1.0 / (doublings + 1)
        return min(top, start * 2 ** int(progress / every + 1e-9))

    def lr_at(self, progress: float) -> float:
        """Constant, then linear decay to 0 from ``decay_start`` (a fraction of the run) to its end."""
        if progress < self.decay_start:
            return self.lr
        return self.lr * max(0.0, 1.0 - (progress - self.decay_start) / max(1e-9, 1.0 - self.decay_start))

    def gan_on(self, progress: float) -> bool:
        return progress >= self.gan_start


# Training recipes that differ from vid2vid's, per generator architecture (TrainConfig field -> value);
# `--train-set` overrides. The `lite` architecture trains as a regression (L1 + flow + warp, no discriminators):
# every adversarial or feature-matching weight tried cost its few channels PSNR (a 300-iteration probe: 17.3 dB
# held out with vid2vid's weights, 21.4 dB without; docs/performance.md).
ARCH_TRAINING: dict[str, dict] = {
    "lite": {"w_gan": 0.2, "w_fm": 2.0, "w_temporal": 0.0, "gan_start": 0.75, "w_person": 3.0, "w_head": 3.0,
             "w_limbs": 6.0, "w_features": 20.0, "w_alpha": 3.0, "w_stable": 10.0, "head_jitter_px": 0.0,
             "ema_halflife": 100.0, "channels_last": True, "d_frames": 2},
}


# ... and where a kind of landmarks trains differently on that architecture ((arch, kind) -> fields, on top). A face
# on lite (face-lite) has the face GAN judge its eyes and mouth (the head window) in the GAN phase: on Megamind's
# held-out shot, after 55 min each from the same seed, mouth-opening correlation 0.57 -> 0.76, eyes 0.36 -> 0.51,
# landmark error 4.7x -> 4.0x the real frames', at 0.4 dB of face PSNR and flicker 1.47x -> 1.61x. And half its
# clips tilted (trainer/clips.py Augment.tilt_*): the held-out shot tilts the head ~17 degrees from every training
# frame with its expression; 55 min more from the same seed: face PSNR 18.0 -> 18.7 dB, landmark error 4.0x -> 3.6x,
# mouth 0.76 -> 0.84, flicker 1.61x -> 1.36x. And Adam at 1e-3, not vid2vid's 2e-4: face-lite underfit its own
# training frames (21 dB face PSNR) for want of step size, not of channels (twice the head branch's changed nothing);
# 55 min more: trained frames 21.2 -> 22.3 dB, held out 18.7 -> 19.1 dB, landmark error 3.6x -> 2.7x, mouth 0.84 ->
# 0.94, flicker 1.36x -> 1.53x (docs/performance.md).
KIND_TRAINING: dict[tuple[str, str], dict] = {
    ("lite", "face"): {"w_face_gan": 1.0, "tilt_prob": 0.5, "lr": 1e-3},
}


def train_config_for(model: ModelConfig, **fields) -> TrainConfig:
    """TrainConfig with the recipe of ``model``'s architecture (ARCH_TRAINING) and of its kind on it
    (KIND_TRAINING) applied, then ``fields`` on top."""
    recipe = {**ARCH_TRAINING.get(model.arch, {}), **KIND_TRAINING.get((model.arch, model.kind), {})}
    return TrainConfig(**{**recipe, **fields})


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but PyTorch sees no CUDA GPU (this is the CPU build?)")
    return dev


# -- Optimizer state <-> flat tensors (safetensors holds tensors only; the rest goes to JSON) --------------
def _optim_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{prefix}.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optim(opt: torch.optim.Optimizer, tensors: dict, prefix: str, meta: dict) -> None:
    state: dict = {}
    for key, v in subdict(tensors, prefix).items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


SILHOUETTE_THRESHOLD = 0.15   # a pixel is the person's where it differs from the plate by this much ([-1, 1] units)


def silhouette(frames: torch.Tensor, plate: torch.Tensor, threshold: float = SILHOUETTE_THRESHOLD) -> torch.Tensor:
    """{0, 1} mask (..., 1, H, W) of the pixels of ``frames`` (..., 3, H, W) that differ from ``plate`` (same
    shape) by more than ``threshold`` in some channel: the person, against a known background."""
    return ((frames - plate).abs().amax(-3, keepdim=True) > threshold).float()


class Trainer:
    """Holds the networks and optimizers; ``run()`` is the loop."""

    def __init__(self, model: ModelConfig, train: TrainConfig, data: str | os.PathLike, out: str | os.PathLike,
                 *, resume: bool = False, progress: bool = True,
                 on_iteration: Callable[[int, dict], None] | None = None, dist: Dist | None = None):
        self.out = Path(out)
        self.dist = dist = dist or Dist()  # this process's rank of a multi-process run (trainer/distributed.py)
        self.progress = progress and dist.main
        self.on_iteration = on_iteration  # called as (iteration, scalar losses) after each update
        self.clock = NoClock()            # where an iteration's time goes (trainer/clock.py; the benchmark sets one)
        if train.w_face_gan > 0 and model.kind != "dance" and not model.head_side:
            raise ValueError(f"w_face_gan judges the head window (a body's head, a face model's eyes and mouth); "
                             f"this {model.kind!r} model has none (head_crop 0)")
        self.device = pick_device(train.device)
        if dist.on and self.device.type == "cuda":
            self.device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(self.device)     # NCCL's collectives run on the current device
        if train.batch_size % dist.world:
            raise ValueError(f"batch_size {train.batch_size} must divide among the {dist.world} processes (each "
                             f"trains on batch_size / {dist.world} clips an iteration)")
        self.precision, self.precision_why = resolve_precision(train.precision, self.device)
        if train.threads:
            torch.set_num_threads(train.threads)
        self.dataset = Dataset(data)
        if self.dataset.kind != model.kind:
            raise ValueError(f"dataset {data} is a {self.dataset.kind!r} dataset but preset {model.name!r} "
                             f"expects {model.kind!r}")
        init = read_checkpoint(train.init) if train.init and not resume else None
        if init and model.person_crop and not (model.crop_height or model.crop_width):
            model = model.replace(crop_height=init[0].crop_height, crop_width=init[0].crop_width)
        # The frames to train on (clips, identity, frame ranges), and a warning when they span several people.
        self.selection = self.dataset.select(None if train.clips is None else list(train.clips),
                                             train.identity or None, train.frame_ranges)
        if self.selection.mixed() and dist.main:
            warnings.warn(self.selection.mixed(), MixedIdentityWarning, stacklevel=2)
        if model.person_crop and not (model.crop_height or model.crop_width):
            # Size the person window from the training frames' landmarks; it is saved with the model config.
            rows = np.concatenate([np.arange(a, b) for a, b in self.selection.ranges])
            h, w = crop_size_for(np.asarray(self.dataset.landmarks[rows]), model.size)
            model = model.replace(crop_height=h, crop_width=w)
        self.cfg, self.tc = model, train
        self.source = ClipSource(self.dataset, model.size, self.selection.ranges)
        L = model.history_frames
        self.min_frames = max(L + 2, 2)
        if self.source.longest_clip() < self.min_frames:
            raise ValueError(f"{data}: the longest clip has {self.source.longest_clip()} frames; "
                             f"training needs at least {self.min_frames}")

        torch.manual_seed(train.seed)
        self.rng = np.random.default_rng(train.seed)
        dev = self.device
        self.G = build_generator(model).to(dev)
        # The data's background plate (the room with the person masked out): what the silhouette is measured against.
        self.data_plate = (self.source.background_plate(warn_unseen=dist.main and not resume).to(dev)   # (said once)
                           if self.G.uses_background_plate else None)
        if self.data_plate is not None and train.augment and train.tilt_prob > 0 and self.dataset.masks is None:
            raise ValueError(f"tilt_prob = {train.tilt_prob}: a tilted clip needs the dataset's person masks "
                             f"(masks.npy, which {data} lacks) to pull {model.name}'s alpha to: without them its "
                             "silhouette is where a frame differs from the untilted background plate, all of a "
                             "tilted frame. Re-run `posecast prepare` (it writes them), or train with --train-set tilt_prob=0")
        if train.grow_from and not resume:
            from models.generator import grow_from

            coarse_cfg, tensors, _ = read_checkpoint(train.grow_from)
            grow_from(self.G, coarse_cfg, subdict(tensors, "G"))
        if init:
            self._init_from(train.init, *init)
        elif self.G.uses_background_plate and not resume:
            self.G.set_background(self.data_plate)
        # The saved model: an exponential moving average of G's weights (stylegan's G_ema), when asked for.
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False) if train.ema_halflife > 0 else None
        # Discriminators exist only when a loss uses them (w_gan = w_fm = w_temporal = 0: plain regression).
        self.D = ImageDiscriminator(model).to(dev) if train.w_gan > 0 or train.w_fm > 0 else None
        self.DT = TemporalDiscriminator(model).to(dev) if model.is_temporal and train.w_temporal > 0 else None
        self.DF = FaceDiscriminator(model).to(dev) if train.w_face_gan > 0 else None
        self.face_side = model.head_side or default_head_side(model.size, model.kind)   # the face D's window
        if train.channels_last:   # (the generator only: the discriminators measured slower in NHWC on this CPU)
            for net in (self.G, self.G_ema):
                if net is not None:
                    _channels_last(net)
        # What the step calls: the networks themselves, or wrapped in DDP on a multi-process run.
        self.G_run = synced(Rollout(self.G), dist, dev)
        self.D_run = synced(self.D, dist, dev) if self.D is not None else None
        self.DF_run = synced(self.DF, dist, dev) if self.DF is not None else None
        self.DT_run = synced(TemporalAll(self.DT), dist, dev, unused=True) if self.DT is not None else None
        betas = (train.beta1, train.beta2)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=train.lr, betas=betas)
        d_params = [p for d in (self.D, self.DT, self.DF) if d is not None for p in d.parameters()]
        self.opt_D = torch.optim.Adam(d_params, lr=train.lr, betas=betas) if d_params else None
        self.scaler_G, self.scaler_D = grad_scaler(self.precision, dev), grad_scaler(self.precision, dev)
        self.teacher = self._load_teacher(train.teacher) if train.teacher else None
        self.iteration = 0
        self.trained_s = 0.0              # training seconds of the runs this one resumes (the time limit's clock)
        self._session_t0: float | None = None   # monotonic start of this process's run(), while it runs
        self.subject_stats = self.dataset.subject_stats_of(self.selection.ranges)   # of the training frames only
        if resume:
            self._resume()
            self._check_work_left()

    def _check_work_left(self) -> None:
        """A resumed run that has nothing left to do says so, naming the option that would give it more."""
        tc = self.tc
        if self.iteration >= tc.iterations:
            raise ValueError(f"--resume: {self.out} is already at iteration {self.iteration} of its {tc.iterations}: "
                             f"give a larger --iterations to train on")
        if tc.time_limit_s and self.trained_s >= tc.time_limit_s:
            raise ValueError(f"--resume: {self.out} has already trained for {self.trained_s:.0f} s of its "
                             f"--time-limit {tc.time_limit_s:.0f}: give a larger --time-limit to train on")

    def trained_seconds(self) -> float:
        """Training seconds so far, over every resume (what --time-limit counts and the schedules follow)."""
        running = time.monotonic() - self._session_t0 if self._session_t0 is not None else 0.0
        return self.trained_s + running

    def _init_from(self, path: str, cfg: ModelConfig, tensors: dict, meta: dict) -> None:
        """Start G from a trained generator's weights (its background plate included)."""
        if cfg != self.cfg:
            diff = [f for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(self.cfg, f.name)]
            raise CheckpointError(f"--init {path}: that model's config differs from this run's in "
                                  + ", ".join(f"{f.name} ({getattr(cfg, f.name)!r} there, "
                                              f"{getattr(self.cfg, f.name)!r} here)" for f in diff))
        state = subdict(tensors, "G")
        if not state:
            raise CheckpointError(f"--init {path}: no generator tensors (expected keys 'G.*')")
        load_state(self.G, state, "generator")

    def _load_teacher(self, path: str):
        """The frozen generator of a trained run, checked to speak the same labels at the same size."""
        teacher, _ = load_generator(path, self.device)
        t, m = teacher.cfg, self.cfg
        if (t.kind, t.label_nc, t.size) != (m.kind, m.label_nc, m.size):
            raise ValueError(f"teacher {path} is a {t.kind!r} model at {t.size}px; distilling into "
                             f"{m.name!r} at {m.size}px needs a {m.kind!r} teacher at {m.size}px")
        teacher.eval().requires_grad_(False)
        return teacher

    # -- Checkpoints -----------------------------------------------------------------------------------
    def _meta(self) -> dict:
        tc = dataclasses.asdict(self.tc)
        return {"iteration": self.iteration, "trained_seconds": self.trained_seconds(), "train": tc,
                "precision": self.precision, "dataset": str(Path(self.dataset.path).resolve()),
                "dataset_fps": self.dataset.manifest.fps, "subject_stats": self.subject_stats}

    def _generator_checkpoint(self) -> tuple[dict, ModelConfig, dict]:
        """(tensors, config, meta) of the model to serve: the EMA weights when kept, else G's."""
        saved = self.G_ema if self.G_ema is not None else self.G
        return {f"G.{k}": v for k, v in saved.state_dict().items()}, self.cfg, self._meta()

    def save(self) -> Path:
        """latest.* (everything, for --resume) and generator.* (G only, for eval/export/serve)."""
        meta = self._meta()
        save_checkpoint(self.out / "generator", *self._generator_checkpoint())
        tensors = {f"G.{k}": v for k, v in self.G.state_dict().items()}
        if self.G_ema is not None:
            tensors.update({f"E.{k}": v for k, v in self.G_ema.state_dict().items()})
        for name, d in (("D", self.D), ("DT", self.DT), ("DF", self.DF)):
            if d is not None:
                tensors.update({f"{name}.{k}": v for k, v in d.state_dict().items()})
        meta["optim"] = {}
        for name, opt in (("optG", self.opt_G), ("optD", self.opt_D)):
            if opt is not None:
                state, meta["optim"][name] = _optim_tensors(opt, name)
                tensors.update(state)
        meta["rng"] = self.rng.bit_generator.state
        return save_checkpoint(self.out / "latest", tensors, self.cfg, meta)

    def _resume(self) -> None:
        path = self.out / "latest.json"
        if not path.is_file():
            raise CheckpointError(f"--resume: {path} not found")
        cfg, tensors, meta = read_checkpoint(path)
        if cfg != self.cfg:
            raise CheckpointError(f"--resume: {path} was trained with a different model config "
                                  f"({cfg.name}, size {cfg.size}) than asked ({self.cfg.name}, size {self.cfg.size})")
        load_state(self.G, subdict(tensors, "G"), "generator")
        if self.G_ema is not None:
            ema = subdict(tensors, "E")
            load_state(self.G_ema, ema if ema else subdict(tensors, "G"), "generator EMA")
        if self.D:
            load_state(self.D, subdict(tensors, "D"), "image discriminator")
        if self.DT:
            load_state(self.DT, subdict(tensors, "DT"), "temporal discriminator")
        if self.DF:
            load_state(self.DF, subdict(tensors, "DF"), "face discriminator")
        _load_optim(self.opt_G, tensors, "optG", meta["optim"]["optG"])
        if self.opt_D:
            _load_optim(self.opt_D, tensors, "optD", meta["optim"]["optD"])
        self.iteration = int(meta["iteration"])
        self.trained_s = float(meta.get("trained_seconds", 0.0))   # (0 for checkpoints written before it was kept)
        self.rng.bit_generator.state = meta["rng"]

    def _forward(self, net, *args, **kwargs):
        """``net(*args, **kwargs)`` in the run's precision; what comes out is fp32 (the losses stay fp32)."""
        with autocast(self.precision, self.device):
            out = net(*args, **kwargs)
        return _to_float(out)

    def _temporal_inputs(self, frames: torch.Tensor, gt_flow: torch.Tensor, spacing: int):
        """K frames spaced ``spacing`` apart, ending at the clip's last frame, and the GT flows between them."""
        k = self.DT.k
        T = frames.shape[1]
        idx = [T - 1 - spacing * (k - 1 - j) for j in range(k)]
        stack = torch.cat([frames[:, i] for i in idx], 1)
        flows = [compose_flows([gt_flow[:, i - d] for d in range(spacing)]) for i in idx[1:]]
        return stack, torch.cat(flows, 1)

    # -- Losses of one iteration, each a small function returning (loss, logs) ----------------------------
    def _heads(self, x: torch.Tensor, places: list) -> torch.Tensor:
        """(B, T, C, S, S) -> (B, T, C, side, side): every frame's head window (``models.window.head_box``, placed in
        the generator's window exactly as the head branch's), cut from the full frames."""
        side = self.face_side
        return cut_clips(x, [[p.head_window(side) for p in row] for row in places])

    def _loss_l1(self, fake, real, *, person, head, limbs, features) -> tuple[torch.Tensor, dict]:
        """L1 to the real frames, weighted up on the person, head, limbs and face features (their {0, 1} maps)."""
        tc = self.tc
        weight = 1.0 + tc.w_person * person + tc.w_head * head + tc.w_limbs * limbs + tc.w_features * features
        l1 = ((fake - real).abs() * weight).mean() / weight.mean()
        return tc.w_l1 * l1, {"L1": l1.detach()}

    def _loss_alpha(self, alpha, sil) -> tuple[torch.Tensor, dict]:
        """BCE of the compositing alpha against the silhouette, inside the window (its faded border excluded)."""
        inner = (self.G.window >= 0.999).float().expand_as(alpha)
        bce = F.binary_cross_entropy(alpha.clamp(1e-4, 1 - 1e-4), sil, weight=inner)
        return self.tc.w_alpha * bce, {"alpha": bce.detach()}

    def _loss_flow_warp(self, real_w, flow, gt_flow_w, conf_w) -> tuple[torch.Tensor, dict]:
        """Flow L1 vs the ground truth and warp loss, in window coordinates, from the second frame on (frame 0
        of a clip is made from zero history: no flow target)."""
        tc = self.tc
        flat = losses.flat_frames
        w = conf_w[:, 1:]
        g_flow = losses.masked_l1(flow[:, 1:], gt_flow_w[:, 1:], w)
        warped_real = warp(flat(real_w[:, :-1]), flat(flow[:, 1:])).reshape(real_w[:, 1:].shape)
        g_warp = losses.masked_l1(warped_real, real_w[:, 1:], w)
        return tc.w_flow * g_flow + tc.w_warp * g_warp, {"flow": g_flow.detach(), "warp": g_warp.detach()}

    def _d_real_fake(self, d, labels: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, mode: str):
        """One conditional discriminator on real and (detached) fake at once -> (its features of the real
        inputs, its loss)."""
        n = labels.shape[0]
        out = self._forward(d, labels.repeat(2, 1, 1, 1), torch.cat((real, fake.detach())))
        real_feats = [[f[:n] for f in sc] for sc in out]
        return real_feats, losses.d_loss(real_feats, [[f[n:] for f in sc] for sc in out], mode)

    def _d_step(self, clip: Clip, temporal_on: bool) -> tuple[dict, list, dict]:
        """Update the discriminators (image D on the generator's windows, face D on the head windows, temporal D
        on full clips). Returns ({"image"/"face": features of the real inputs}, temporal inputs usable at this T,
        logs)."""
        tc = self.tc
        loss_d = torch.zeros((), device=self.device)
        d_real = {}
        judged = clip.judged_frames
        if self.D:
            d_real["image"], loss = self._d_real_fake(self.D_run, judged(clip.labels_w), judged(clip.real_w),
                                                      judged(clip.fake_w), tc.gan_mode)
            loss_d = loss_d + loss
        if self.DF:
            d_real["face"], loss = self._d_real_fake(self.DF_run, judged(clip.labels_f), judged(clip.real_f),
                                                     judged(clip.fake_f), tc.gan_mode)
            loss_d = loss_d + loss
        temporal = []  # (spacing index, real stack, flows) usable at this T
        real, fake, gt_flow = clip.real, clip.fake, clip.flow
        if self.DT and temporal_on:
            T, B = real.shape[1], real.shape[0]
            for si, sp in enumerate(self.DT.spacings):
                if self.DT.clip_span(si) <= T:
                    temporal.append((si, *self._temporal_inputs(real, gt_flow, sp)))
            items = [(si, torch.cat((real_stack, self._temporal_inputs(fake.detach(), gt_flow, self.DT.spacings[si])[0])),
                      tflow.repeat(2, 1, 1, 1)) for si, real_stack, tflow in temporal]
            for out in (self._forward(self.DT_run, items) if items else []):
                loss_d = loss_d + losses.d_loss([[f[:B] for f in sc] for sc in out],
                                                [[f[B:] for f in sc] for sc in out], tc.gan_mode) / len(temporal)
        logs = {}
        if loss_d.requires_grad:
            self.opt_D.zero_grad(set_to_none=True)
            self.scaler_D.scale(loss_d).backward()
            self.scaler_D.step(self.opt_D)
            self.scaler_D.update()
            logs["D"] = loss_d.detach()
        return d_real, temporal, logs

    def _loss_gan(self, d, labels, fake, d_real, weight: float, names: tuple[str, str]) -> tuple[torch.Tensor, dict]:
        """Adversarial loss x ``weight`` plus feature matching x w_fm of G's frames against one conditional D."""
        d_fake = self._forward(d, labels, fake)
        g_adv = losses.g_adv_loss(d_fake, self.tc.gan_mode)
        g_fm = losses.feature_matching_loss(d_fake, d_real)
        return weight * g_adv + self.tc.w_fm * g_fm, {names[0]: g_adv.detach(), names[1]: g_fm.detach()}

    def _loss_temporal(self, fake, gt_flow, temporal) -> tuple[torch.Tensor, dict]:
        tc = self.tc
        g_t = 0.0
        for si, real_stack, tflow in temporal:
            fake_stack = self._temporal_inputs(fake, gt_flow, self.DT.spacings[si])[0]
            out_fake = self._forward(self.DT, fake_stack, tflow, si)
            with torch.no_grad():
                out_real = self._forward(self.DT, real_stack, tflow, si)
            g_t = g_t + (losses.g_adv_loss(out_fake, tc.gan_mode)
                         + tc.w_fm * losses.feature_matching_loss(out_fake, out_real)) / len(temporal)
        return tc.w_temporal * g_t, {"G_temporal": g_t.detach()}

    def _loss_distill(self, fake, labels, landmarks) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            target = self._forward(self.teacher.rollout, labels, landmarks=landmarks)[0]
        g_distill = (fake - target).abs().mean()
        return self.tc.w_distill * g_distill, {"distill": g_distill.detach()}

    @torch.no_grad()
    def _update_ema(self, it: int) -> None:
        """G_ema <- beta * G_ema + (1 - beta) * G, with the half-life ramped up over the first 10% of the run."""
        halflife = min(self.tc.ema_halflife, max(1.0, 0.1 * it))
        beta = 0.5 ** (1.0 / halflife)
        for e, p in zip(self.G_ema.parameters(), self.G.parameters()):
            e.lerp_(p, 1.0 - beta)
        for e, b in zip(self.G_ema.buffers(), self.G.buffers()):
            e.copy_(b)

    # -- The loop ----------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train until ``iterations`` or the time limit; checkpoint on the way and at the end. Returns the
        iterations, seconds, it/s, per-iteration losses and the checkpoint path."""
        from tqdm import tqdm
        from torch.utils.tensorboard import SummaryWriter

        cfg, tc, main = self.cfg, self.tc, self.dist.main
        if main:   # rank 0 alone writes (a single process is rank 0)
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(
                {"model": cfg.to_dict(), "train": dataclasses.asdict(tc), "precision": self.precision,
                 "processes": self.dist.world}, indent=2))
        tb = SummaryWriter(str(self.out / "tensorboard")) if main else _NoWriter()
        # every Augment field has its TrainConfig twin; augment=False turns all of them off (tilting included)
        augment = Augment(**{f.name: getattr(tc, f.name) for f in dataclasses.fields(Augment)}) if tc.augment else None
        history: list[dict] = []
        t0 = self._session_t0 = time.monotonic()
        # The schedules follow rank 0's clock, so that every rank takes the same step; a resumed run's clock goes on
        # from the seconds its checkpoint had trained (a time-limited schedule continues, not restarts).
        elapsed = lambda: self.dist.from_main(self.trained_seconds())  # noqa: E731
        bar = tqdm(total=tc.iterations, initial=self.iteration, disable=not self.progress, unit="it",
                   desc=f"train {cfg.name} {cfg.size}px", dynamic_ncols=True)
        precision = f"precision {self.precision} ({self.precision_why}) on {self.device}" + \
            (f", {self.dist.world} processes" if self.dist.on else "")
        tb.add_text("train/precision", precision, self.iteration)
        if self.progress:
            bar.write(precision)
        first = self.iteration
        now = elapsed()
        try:
            while self.iteration < tc.iterations:
                progress = tc.progress(self.iteration, now)     # (one broadcast of the clock an iteration)
                logs, clip = self._iteration(progress, augment)
                self.iteration += 1
                history.append(logs)
                self._report(logs, clip, progress, tb, bar)
                now = elapsed()
                if tc.time_limit_s:
                    _time_limited_total(bar, self.iteration - first, time.monotonic() - t0, tc.time_limit_s - now,
                                        tc.iterations)
                if main:
                    self._checkpoints(tc.gan_on(progress), tc.progress(self.iteration, now))
                if tc.time_limit_s and now > tc.time_limit_s:
                    if self.progress:
                        bar.write(f"time limit of {tc.time_limit_s:.0f}s reached at iteration {self.iteration}")
                    break
        finally:
            self.trained_s, self._session_t0 = self.trained_seconds(), None   # (this session's time, kept first)
            bar.close()
            if self.iteration and main:
                self.save()
            tb.close()
        seconds = time.monotonic() - t0
        return {"iterations": self.iteration, "seconds": seconds,
                "it_per_s": len(history) / seconds if seconds else 0.0,
                "history": history, "checkpoint": str(self.out / "generator.json")}

    def _iteration(self, progress: float, augment: Augment | None) -> tuple[dict, Clip]:
        """One update of D (in the adversarial phase) and G at ``progress``. Returns (scalar logs, the clip)."""
        tc = self.tc
        for group in self.opt_G.param_groups + (self.opt_D.param_groups if self.opt_D else []):
            group["lr"] = tc.lr_at(progress)
        clip = self._generate(progress, augment)
        logs, d_real, temporal = {}, {}, []
        if tc.gan_on(progress) and self.opt_D:
            with self.clock("discriminators"):
                d_real, temporal, logs = self._d_step(clip, True)
        logs.update(self._g_step(clip, d_real, temporal))
        return _floats(logs), clip

    def _generate(self, progress: float, augment: Augment | None) -> Clip:
        """Sample a clip of the scheduled length, roll G over it from zero history, and cut every frame to the
        generator's windows."""
        T = min(self.tc.clip_frames(progress, self.min_frames), self.source.longest_clip())
        with self.clock("data"):
            part = self.dist.share(self.tc.batch_size)
            batch = self.source.sample_batch(T, self.tc.batch_size, self.rng, augment, part=part,
                                             by_clip=self.tc.clip_sampling == "clips")
            clip = Clip.from_batch(batch, T, self.device)
            if 0 < self.tc.d_frames < T and (self.D is not None or self.DF is not None) and self.tc.gan_on(progress):
                # (drawn for the whole batch on every rank, so that the ranks' random streams, and with them the
                # clips they sample next, stay the same; only in the adversarial phase, so that a regression phase
                # draws the same clips whatever d_frames is)
                judged = [np.sort(self.rng.choice(T, self.tc.d_frames, replace=False)) for _ in range(self.tc.batch_size)]
                clip.judged = torch.as_tensor(np.stack([judged[k] for k in part]))
        with self.clock("generator"):
            self._rollout(clip)
        return clip

    def _rollout(self, clip: Clip) -> None:
        """Roll G over the clip from zero history (in the run's precision) and cut every frame to its windows."""
        landmarks, T = clip.landmarks, clip.T
        record = self.tc.w_alpha > 0 and hasattr(self.G, "record_alpha") and self.data_plate is not None
        if record:
            self.G.record_alpha = []
        try:
            out = self._forward(self.G_run, clip.labels, landmarks=landmarks)
            # (back to NCHW: an NHWC input would drag the discriminators into NHWC, measured slower here)
            clip.fake, clip.flow_G, clip.mask = (x.contiguous() for x in out)
        finally:
            if record:
                alphas, self.G.record_alpha = self.G.record_alpha, None
        if record:
            clip.alpha = torch.stack(alphas, 1).float()                            # (B, T, 1, h, w)
        places = self.G.placements(landmarks, clip.labels.shape[0], T,
                                   head_side=self.face_side if self.DF is not None else 0)
        boxes = [[p.box for p in row] for row in places]
        for key in ("labels", "real", "fake", "flow", "conf"):
            setattr(clip, f"{key}_w", cut_clips(getattr(clip, key), boxes))
        if clip.alpha is not None:
            clip.silhouette = self.silhouette_of(clip, boxes)
        if self.DF is not None:
            for key in ("labels", "real", "fake"):
                setattr(clip, f"{key}_f", self._heads(getattr(clip, key), places))

    def silhouette_of(self, clip: Clip, boxes) -> torch.Tensor:
        """(B, T, 1, h, w) {0, 1}, cut to the windows ``boxes``: what the compositing alpha is pulled to. With the
        dataset's person masks, the subject's mask (its connected parts reaching into the subject's region: hair and
        shoulders in, other people out; :func:`trainer.clips.subject_mask`); without, where the real frame differs
        from the data's plate."""
        if clip.person_mask is not None:
            return cut_clips(clip.person_mask, boxes)
        plate = self.data_plate.expand(*clip.real.shape[:2], -1, -1, -1)
        return silhouette(clip.real_w, cut_clips(plate, boxes))

    def _g_step(self, clip: Clip, d_real: dict, temporal: list) -> dict:
        """Update G on the sum of its loss terms (each a small function returning (loss, logs)); EMA after."""
        self.opt_G.zero_grad(set_to_none=True)
        discriminators = [d for d in (self.D, self.DT, self.DF) if d is not None]
        for d in discriminators:   # G's losses need gradients through D, not D's own (D has its own step)
            d.requires_grad_(False)
        try:
            with self.clock("losses"):
                terms, logs = self._g_terms(clip, d_real, temporal)
                loss_g = sum(t[0] for t in terms)
            with self.clock("backward"):
                self.scaler_G.scale(loss_g).backward()
        finally:
            for d in discriminators:
                d.requires_grad_(True)
        with self.clock("optimizer"):
            self.scaler_G.step(self.opt_G)
            self.scaler_G.update()
            if self.G_ema is not None:
                self._update_ema(self.iteration + 1)
        for _, part in terms:
            logs.update(part)
        logs["G"] = loss_g.detach()
        return logs

    def _g_terms(self, clip: Clip, d_real: dict, temporal: list) -> tuple[list, dict]:
        """G's loss terms, each (loss, scalar logs), and logs of their own."""
        logs = {}
        terms = [self._loss_l1(clip.fake, clip.real, person=clip.person, head=clip.head, limbs=clip.limbs,
                               features=clip.features)]
        if clip.alpha is not None:
            terms.append(self._loss_alpha(clip.alpha, clip.silhouette))
        if self.cfg.is_temporal and clip.T > 1:
            terms.append(self._loss_flow_warp(clip.real_w, clip.flow_G, clip.flow_w, clip.conf_w))
            logs["mask"] = clip.mask[:, 1:].mean().detach()
        if self.tc.w_stable > 0 and clip.T > 1:
            stable = losses.temporal_change_loss(clip.fake, clip.real, clip.flow, clip.conf)
            terms.append((self.tc.w_stable * stable, {"stable": stable.detach()}))
        judged = clip.judged_frames
        if "image" in d_real:
            terms.append(self._loss_gan(self.D, judged(clip.labels_w), judged(clip.fake_w), d_real["image"],
                                        self.tc.w_gan, ("G_adv", "G_fm")))
        if "face" in d_real:
            terms.append(self._loss_gan(self.DF, judged(clip.labels_f), judged(clip.fake_f), d_real["face"],
                                        self.tc.w_face_gan, ("G_face", "G_face_fm")))
        if temporal:
            terms.append(self._loss_temporal(clip.fake, clip.flow, temporal))
        if self.teacher is not None:
            terms.append(self._loss_distill(clip.fake, clip.labels, clip.landmarks))
        return terms, logs

    def _report(self, logs: dict, clip: Clip, progress: float, tb, bar) -> None:
        """Progress bar, the on_iteration hook, TensorBoard scalars and sample grids."""
        tc, it = self.tc, self.iteration
        if self.on_iteration:
            self.on_iteration(it, logs)
        bar.update(1)
        bar.set_postfix(T=clip.T, G=f"{logs['G']:.3f}", D=f"{logs.get('D', 0.0):.3f}", L1=f"{logs['L1']:.3f}")
        if it % tc.log_every == 0:
            for k, v in logs.items():
                tb.add_scalar(f"loss/{k}", v, it)
            tb.add_scalar("train/clip_frames", clip.T, it)
            tb.add_scalar("train/lr", tc.lr_at(progress), it)
            tb.add_scalar("train/progress", progress, it)
        if it % tc.sample_every == 0:
            tb.add_image("samples", self._sample_grid(clip.labels[0], clip.fake[0], clip.real[0]), it,
                         dataformats="HWC")

    def _checkpoints(self, was_adversarial: bool, progress_now: float) -> None:
        """Every ``checkpoint_every`` iterations; and at the end of the regression phase, whose model is kept
        beside the final one (``generator-regression.*``)."""
        if self.iteration % self.tc.checkpoint_every == 0:
            self.save()
        if not was_adversarial and self.tc.gan_on(progress_now) and self.opt_D:
            self.save()
            save_checkpoint(self.out / "generator-regression", *self._generator_checkpoint())

    def _sample_grid(self, labels, fake, real) -> np.ndarray:
        """Rows of label | generated | real for up to 4 frames of one clip."""
        idx = np.linspace(0, labels.shape[0] - 1, min(4, labels.shape[0])).round().astype(int)
        rows = [side_by_side(label_preview(labels[i].detach().cpu().numpy()),
                             to_uint8(fake[i].detach().cpu().numpy()),
                             to_uint8(real[i].detach().cpu().numpy())) for i in idx]
        return np.concatenate(rows, 0)


def _to_float(x):
    """Every floating tensor in ``x`` (a tensor, or nested tuples/lists of them) as fp32."""
    if torch.is_tensor(x):
        return x.float() if x.is_floating_point() and x.dtype != torch.float32 else x
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float(v) for v in x)
    return x


def _floats(logs: dict) -> dict:
    """An iteration's logs as floats: the loss terms stay tensors on the device until the iteration is queued,
    then come back in one transfer (a ``.item()`` per term would wait for the GPU ten times an iteration, leaving
    it idle while the next kernels are launched)."""
    keys = [k for k, v in logs.items() if torch.is_tensor(v)]
    if keys:
        logs.update(zip(keys, torch.stack([logs[k].float().reshape(()) for k in keys]).tolist()))
    return logs


def _time_limited_total(bar, done: int, session_s: float, left_s: float, iterations: int) -> None:
    """With a time limit, the progress bar's total (and so its ETA) is what the ``left_s`` seconds left allow at
    this session's pace (``done`` iterations in ``session_s``), not ``iterations``."""
    reachable = bar.n + max(0.0, left_s) * done / max(session_s, 1e-9)
    total = min(iterations, max(bar.n + 1, int(reachable)))
    if total != bar.total:
        bar.total = total
        bar.refresh()


class _NoWriter:
    """What ranks other than 0 log to: nothing."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    add_image = add_text = add_scalar

    def close(self) -> None:
        pass
