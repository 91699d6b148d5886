"""The vid2vid sequential generator.

One step makes frame t from the label maps of frames t-L..t and the L previously *generated* frames:

    features = E_label(labels) + E_image(previous)          # two encoders, summed
    h        = tanh(Dec_image(Res_image(features)))          # hallucinated frame
    flow, m  = Dec_flow(Res_flow(features))                  # backward flow (pixels) + soft occlusion mask
    frame    = m * warp(previous[-1], flow) + (1 - m) * h

With ``n_local > 0`` a coarse-to-fine local enhancer wraps the global generator: the global trunk runs on the
inputs downsampled by 2^n_local, and each local level adds its coarser features to a shallow full(er)-res
encoder (pix2pixHD / vid2vid). ``history_frames = 0`` gives the per-frame (pix2pixHD-style) baseline.

Tensor conventions (B = batch, L = history_frames, C = label channels, S = size):
    labels   (B, (L+1)*C, S, S)  label maps in [0, 1], oldest first, the current frame's last
    previous (B, L*3, S, S)      generated RGB frames in [-1, 1], oldest first
    frame    (B, 3, S, S)        in [-1, 1]
    flow     (B, 2, S, S)        pixels (x, y): frame(p) ~ previous[-1](p + flow(p))
    mask     (B, 1, S, S)        in [0, 1]: weight of the warped previous frame
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ResBlock, assert_shape, conv_block, decoder, encoder
from .presets import ModelConfig
from .warp import warp
from .window import Placement, Placer, place_clips


class _Trunk(nn.Module):
    """Global generator body: encoders -> residual blocks -> decoders, for the image and the flow branch."""

    def __init__(self, cfg: ModelConfig, ngf: int):
        super().__init__()
        L = cfg.history_frames
        self.enc_label, ch = encoder((L + 1) * cfg.label_nc, ngf, cfg.n_downsample, cfg.max_ngf, cfg.norm)
        self.enc_image = encoder(L * 3, ngf, cfg.n_downsample, cfg.max_ngf, cfg.norm)[0] if L else None
        self.res_image = nn.Sequential(*[ResBlock(ch, cfg.norm) for _ in range(cfg.n_blocks)])
        self.dec_image, self.out_ch = decoder(ch, cfg.n_downsample, ngf, cfg.norm)
        if L:
            self.res_flow = nn.Sequential(*[ResBlock(ch, cfg.norm) for _ in range(cfg.n_blocks_flow)])
            self.dec_flow = decoder(ch, cfg.n_downsample, ngf, cfg.norm)[0]

    def forward(self, labels: torch.Tensor, previous: torch.Tensor | None):
        feat = self.enc_label(labels)
        if self.enc_image is not None:
            feat = feat + self.enc_image(previous)
        img_feat = self.dec_image(self.res_image(feat))
        flow_feat = self.dec_flow(self.res_flow(feat)) if self.enc_image is not None else None
        return img_feat, flow_feat


class _LocalLevel(nn.Module):
    """One local-enhancer level: shallow encoder at 2x the coarser resolution + the coarser features."""

    def __init__(self, cfg: ModelConfig, ngf: int, n_blocks: int = 3):
        super().__init__()
        L = cfg.history_frames
        inner = ngf * 2  # == the coarser level's output channels

        def down(in_ch):
            return nn.Sequential(conv_block(in_ch, ngf, 7, norm=cfg.norm),
                                 conv_block(ngf, inner, 3, stride=2, norm=cfg.norm))

        def body():
            return nn.Sequential(*[ResBlock(inner, cfg.norm) for _ in range(n_blocks)],
                                 decoder(inner, 1, ngf, cfg.norm)[0])

        self.enc_label = down((L + 1) * cfg.label_nc)
        self.enc_image = down(L * 3) if L else None
        self.body_image = body()
        self.body_flow = body() if L else None
        self.out_ch = ngf

    def forward(self, labels, previous, coarse_img_feat, coarse_flow_feat):
        feat = self.enc_label(labels)
        if self.enc_image is not None:
            feat = feat + self.enc_image(previous)
        img_feat = self.body_image(feat + coarse_img_feat)
        flow_feat = self.body_flow(feat + coarse_flow_feat) if self.body_flow is not None else None
        return img_feat, flow_feat


class SequentialGenerator(nn.Module):
    """What every architecture shares: the one-step contract plus the zero-history rollout."""

    cfg: ModelConfig
    # True when the architecture composites onto a static background plate: the trainer then calls
    # set_background((3, S, S) tensor in [-1, 1]) with an estimate from the training data before training.
    uses_background_plate = False

    @property
    def history_frames(self) -> int:
        return self.cfg.history_frames

    def zero_history(self, batch: int = 1, device=None):
        """(label history, frame history) for the first frame: all zeros (the model is trained from zeros)."""
        cfg = self.cfg
        L, S = cfg.history_frames, cfg.size
        return (torch.zeros(batch, L * cfg.label_nc, S, S, device=device),
                torch.zeros(batch, L * 3, S, S, device=device))

    def placements(self, landmarks: torch.Tensor | None, batch: int, frames: int,
                   head_side: int | None = None) -> list[list[Placement]]:
        """Where each of (B, T) frames is drawn (models/window.py): the window (the whole frame, or a person crop
        placed from the landmarks (B, T, K, 3) exactly as a live session places it, from the clip's first frame on)
        and the head window in it. ``head_side`` overrides the model's own head window (0: none)."""
        return place_clips(Placer.of(self.cfg, head_side), landmarks, batch, frames)

    def track_boxes(self, landmarks: torch.Tensor | None, batch: int, frames: int) -> list[list]:
        """The (B, T) windows (models/window.py CropBox) the generator draws in."""
        return [[p.box for p in row] for row in self.placements(landmarks, batch, frames, head_side=0)]

    def rollout(self, labels: torch.Tensor, landmarks: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Generate a clip step by step from zero history, as inference does.

        labels (B, T, C, S, S) -> frames (B, T, 3, S, S), flows (B, T, 2, S, S), masks (B, T, 1, S, S).
        ``landmarks`` (B, T, K, 3) place the window of crop-aware generators; unused here.
        Frames enter the history detached: no gradient flows into earlier steps.
        """
        B, T = labels.shape[:2]
        L = self.cfg.history_frames
        label_hist, frame_hist = self.zero_history(B, labels.device)
        frames, flows, masks = [], [], []
        for t in range(T):
            lab = labels[:, t]
            frame, flow, mask = self(torch.cat((label_hist, lab), 1), frame_hist if L else None)
            frames.append(frame)
            flows.append(flow)
            masks.append(mask)
            if L:
                label_hist = torch.cat((label_hist[:, lab.shape[1]:], lab), 1)
                frame_hist = torch.cat((frame_hist[:, 3:], frame.detach()), 1)
        return torch.stack(frames, 1), torch.stack(flows, 1), torch.stack(masks, 1)


class Generator(SequentialGenerator):
    """vid2vid's generator (see the module docstring)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        L = cfg.history_frames
        # The global trunk gets ngf; each finer local level halves it (vid2vid: ngf / 2 per finer scale).
        self.trunk = _Trunk(cfg, cfg.ngf)
        self.locals = nn.ModuleList(_LocalLevel(cfg, cfg.ngf // 2 ** (i + 1)) for i in range(cfg.n_local))
        out_ch = self.locals[-1].out_ch if cfg.n_local else self.trunk.out_ch
        self.head_image = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(out_ch, 3, 7), nn.Tanh())
        if L:
            self.head_flow = nn.Conv2d(out_ch, 2, 3, padding=1)
            self.head_mask = nn.Conv2d(out_ch, 1, 3, padding=1)
            nn.init.normal_(self.head_flow.weight, std=1e-3)
            nn.init.zeros_(self.head_flow.bias)
        # Flow head outputs are scaled to pixels: +-1 -> +-size/64 px (4 px at 256).
        self.flow_scale = cfg.size / 64.0

    def forward(self, labels: torch.Tensor, previous: torch.Tensor | None = None):
        """One step: ``(labels, previous) -> (frame, flow, mask)``; see the module docstring for shapes."""
        cfg = self.cfg
        L, S = cfg.history_frames, cfg.size
        assert_shape(labels, [None, (L + 1) * cfg.label_nc, S, S])
        if L:
            if previous is None:
                raise ValueError(f"this generator needs previous frames (history_frames={L})")
            assert_shape(previous, [labels.shape[0], L * 3, S, S])

        # Pyramid of inputs, coarsest first: the global trunk sees the inputs downsampled 2^n_local times.
        pyramid = [(labels, previous)]
        for _ in range(cfg.n_local):
            lab, prev = pyramid[-1]
            pyramid.append((F.avg_pool2d(lab, 2), F.avg_pool2d(prev, 2) if L else None))
        img_feat, flow_feat = self.trunk(*pyramid[-1])
        for level, (lab, prev) in zip(self.locals, reversed(pyramid[:-1])):
            img_feat, flow_feat = level(lab, prev, img_feat, flow_feat)

        hallucinated = self.head_image(img_feat)
        if not L:
            zeros = torch.zeros_like(hallucinated[:, :1])
            return hallucinated, torch.cat((zeros, zeros), 1), zeros
        flow = self.head_flow(flow_feat)
        if cfg.flow_max_px > 0:
            flow = torch.tanh(flow) * cfg.flow_max_px
        else:
            flow = flow * self.flow_scale
        mask = torch.sigmoid(self.head_mask(flow_feat))
        warped = warp(previous[:, -3:], flow)
        frame = mask * warped + (1 - mask) * hallucinated
        return frame, flow, mask


def grown_config(coarse: ModelConfig) -> ModelConfig:
    """vid2vid's coarse-to-fine step: the config of a model at twice ``coarse``'s resolution whose global trunk
    (and local levels) are ``coarse``'s, with one new local enhancer on top (``Generator.grow_from``)."""
    if coarse.arch != "vid2vid":
        raise ValueError(f"only vid2vid generators grow coarse-to-fine; this one is {coarse.arch!r}")
    return coarse.replace(size=coarse.size * 2, n_local=coarse.n_local + 1)


def grow_from(G: "Generator", coarse_cfg: ModelConfig, coarse_state: dict) -> list[str]:
    """Load a trained lower-resolution generator into ``G`` (built from ``grown_config(coarse_cfg)``) as its
    coarse stages: the global trunk and the local levels it had. Its output heads are not carried over (the new
    finest level makes the output). Returns the names of the tensors loaded."""
    want = grown_config(coarse_cfg)
    if G.cfg != want:
        diff = [f"{f}: {getattr(G.cfg, f)!r} here, {getattr(want, f)!r} grown from that run"
                for f in ("kind", "size", "history_frames", "ngf", "n_downsample", "n_blocks", "n_blocks_flow",
                          "max_ngf", "norm", "n_local", "flow_max_px") if getattr(G.cfg, f) != getattr(want, f)]
        raise ValueError("--grow-from: the model is not that run grown by one level (" + "; ".join(diff) + ")")
    own = G.state_dict()
    taken = {k: v for k, v in coarse_state.items() if k.startswith(("trunk.", "locals."))}
    missing = [k for k, v in taken.items() if k not in own or own[k].shape != v.shape]
    if missing or not taken:
        raise ValueError(f"--grow-from: the coarse generator's tensors do not fit ({missing[:3] or 'none found'})")
    G.load_state_dict(taken, strict=False)
    return sorted(taken)
