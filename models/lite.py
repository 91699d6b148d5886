"""``lite``: a vid2vid generator for CPU real time that spends its compute on the person.

Same temporal contract as the vid2vid generator (label maps of frames t-L..t and the L previously generated
frames -> hallucinated frame + backward flow + occlusion mask, blended with the one warp op), with three changes
of where the pixels come from:

* **A person crop.** The network runs inside a fixed-size window that follows the person (models/window.py:
  ``Placer``; ``ModelConfig.crop_height`` x ``crop_width`` pixels of the model frame, sized from the
  training data). Its inputs are that window of the full-frame label maps and of the previous full frames; its
  output is composited into the window of a **background plate** (the static room, estimated from the training
  frames with the person masked out, then learned) with a predicted soft alpha that fades to zero at the window's
  border, so no seam can show. Outside the window the frame *is* the plate.
* **No 4x4 cells.** The decoder climbs from S/4 to full resolution with bilinear upsampling and 3x3
  convolutions, and sees the current label map again at S/2 and at full resolution (skip connections), so limb
  edges land where the skeleton is instead of on a 4-pixel grid. (The previous head, a 4x4 stride-4 transposed
  convolution, painted each 4x4 cell from one feature vector: visible blocks.)
* **Cheap where it can be.** A 4x4 stride-4 convolution as space-to-depth at the input, depthwise-separable
  blocks at S/16, no normalisation layers, the flow + mask predicted at S/4 on a branch of their own and
  upsampled bilinearly (flow is smooth).

    hallucinated = alpha * tanh(image) + (1 - alpha) * plate        (inside the window)
    frame        = mask * warp(previous[-1], flow) + (1 - mask) * hallucinated

Inputs of ``forward`` (window coordinates; h x w = ``cfg.crop_hw``):
    labels   (B, (L+1)*C, h, w)   previous (B, L*3, h, w)   plate (B, 3, h, w) in [-1, 1]
``plate=None`` uses the model's own plate (only when the window is the whole frame); ``head`` (B, 2) is the head
window's (x0, y0) in the window (``models.window.head_box``; None: its top centre). ``rollout`` places the
window frame by frame from the landmarks and returns full frames, exactly as a live session does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .generator import SequentialGenerator
from .presets import ModelConfig
from .warp import warp
from .window import CropBox, cut_batch, head_box, paste_batch

# The flow branch shares the decoder's features; at full strength its losses (flow L1 and warp, x10 each in
# vid2vid) swamp what those few channels learn about the image (held-out PSNR fell from 21.7 to 19.2 dB in a
# 300-iteration probe; 21.4 dB with 0.1), so their gradient into the shared features is scaled by
# ``cfg.flow_grad_scale``. The alpha fades to zero over ``cfg.window_border_px`` pixels at the window's border.
SHUFFLE = 4        # space-to-depth factor at the input (stride-4 conv)


def _act() -> nn.Module:
    return nn.ReLU(inplace=True)


class SepConv(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 (MobileNet)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.dw = nn.Conv2d(in_ch, in_ch, 3, stride=stride, padding=1, groups=in_ch)
        self.pw = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x):
        return self.pw(self.dw(x))


class SepResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(SepConv(ch, ch), _act(), SepConv(ch, ch))
        self.gain = nn.Parameter(torch.full((1, ch, 1, 1), 0.1))

    def forward(self, x):
        return x + self.gain * self.body(x)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def one_hot_rows(start: torch.Tensor, length: int, size: int) -> torch.Tensor:
    """(B, 1, size, length) selection matrices: entry [i, j] = 1 where i == start + j. ``start`` (B,) holds
    integer values (as floats). ``P^T @ x`` cuts rows start..start+length-1 out of x, ``P @ y`` puts them back:
    exact (a product with 1 and sums of zeros), batched, and exportable (Equal, Cast, MatMul)."""
    i = torch.arange(size, dtype=start.dtype, device=start.device)[None, :, None]
    j = torch.arange(length, dtype=start.dtype, device=start.device)[None, None, :]
    return (i == start[:, None, None] + j).to(start.dtype).unsqueeze(1)


class HeadBranch(nn.Module):
    """Detail where people look: a small full-resolution residual network on the head window (Everybody Dance
    Now's face refinement, without its GAN): it sees the frame's head window and that window of the label map,
    and adds a residual that fades to zero at the window's border."""

    def __init__(self, label_nc: int, side: int, ch: int = 24):
        super().__init__()
        self.side = side
        self.body = nn.Sequential(nn.Conv2d(3 + label_nc, ch, 3, padding=1), _act(),
                                  nn.Conv2d(ch, ch, 3, padding=1), _act(),
                                  nn.Conv2d(ch, ch, 3, padding=1), _act(),
                                  nn.Conv2d(ch, 3, 3, padding=1))
        self.register_buffer("fade", border_window(side, side, max(2, side // 8)), persistent=False)

    def forward(self, frame: torch.Tensor, current: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """frame (B, 3, h, w), current labels (B, C, h, w), head (B, 2) window (x0, y0) -> refined frame."""
        _, _, h, w = frame.shape
        rows = one_hot_rows(head[:, 1], self.side, h)            # (B, 1, h, side)
        cols = one_hot_rows(head[:, 0], self.side, w)            # (B, 1, w, side)
        cut = lambda x: rows.transpose(2, 3) @ x @ cols  # noqa: E731   (B, ., side, side)
        residual = self.body(torch.cat((cut(frame), cut(current)), 1)) * self.fade
        return (frame + rows @ residual @ cols.transpose(2, 3)).clamp(-1.0, 1.0)


def border_window(height: int, width: int, border_px: int) -> torch.Tensor:
    """(1, 1, h, w) weights: 0 on the outermost pixel ring, rising linearly to 1 at ``border_px`` inside."""
    def ramp(n):
        i = torch.arange(n, dtype=torch.float32)
        return (torch.minimum(i, n - 1 - i) / border_px).clamp(0.0, 1.0)
    return (ramp(height)[:, None] * ramp(width)[None, :])[None, None]


class LiteGenerator(SequentialGenerator):
    uses_background_plate = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        h, w = cfg.crop_hw
        if h % (SHUFFLE * 4) or w % (SHUFFLE * 4):
            raise ValueError(f"lite needs a crop (and size) divisible by {SHUFFLE * 4}, got {h}x{w}")
        self.cfg = cfg
        self.record_alpha: list | None = None   # training: a list that every forward appends its alpha (B, 1, h, w) to
        L, C = cfg.history_frames, cfg.label_nc
        c0, c1, c2, c3 = max(4, cfg.ngf // 4), cfg.ngf, cfg.ngf * 2, cfg.ngf * 4   # S, S/4, S/8, S/16 widths
        # Encoders: space-to-depth, 1x1 projection, summed (vid2vid's two encoders), then two stride-2 steps.
        self.in_label = nn.Conv2d((L + 1) * C, c1, SHUFFLE, stride=SHUFFLE)
        self.in_image = nn.Conv2d(L * 3, c1, SHUFFLE, stride=SHUFFLE) if L else None
        self.stem = nn.Sequential(_act(), SepConv(c1, c1), _act())           # S/4
        self.down1 = nn.Sequential(SepConv(c1, c2, stride=2), _act())         # S/8
        self.down2 = nn.Sequential(SepConv(c2, c3, stride=2), _act())         # S/16
        self.blocks = nn.Sequential(*[SepResBlock(c3) for _ in range(cfg.n_blocks)])
        self.up1 = SepConv(c3, c2)
        self.up2 = SepConv(c2 + c2, c1)      # + skip from S/8
        self.fuse = SepConv(c1 + c1, c1)     # + skip from S/4
        # Image decoder S/4 -> S/2 -> S: bilinear x2 + 3x3 convs, the current label map as a skip at each level.
        self.dec2 = nn.Conv2d(c1 + C, 2 * c0, 3, padding=1)                   # S/2
        self.dec1 = nn.Conv2d(2 * c0 + C, c0, 3, padding=1)                   # S
        self.head = nn.Conv2d(c0, 4, 3, padding=1)                            # image (3) + alpha logit (1)
        if L:
            self.flow_body = nn.Sequential(SepConv(c1, c1), _act())
            self.flow_head = nn.Conv2d(c1, 3, 3, padding=1)                   # flow (2) + mask logit (1), S/4
        self.head_branch = HeadBranch(C, cfg.head_side, cfg.head_channels) if cfg.head_side else None
        self._init_weights()
        # The static background of the whole frame, stored before a tanh (grey until set_background() gives it
        # the data's estimate).
        self.background = nn.Parameter(torch.zeros(1, 3, cfg.size, cfg.size))
        self.register_buffer("window", border_window(h, w, cfg.window_border_px), persistent=False)
        self.flow_scale = h / 64.0

    @torch.no_grad()
    def _init_weights(self) -> None:
        """He initialisation, so that the signal neither fades nor grows through a network without normalisation
        layers; zero biases; small output heads (flow ~0, mask 0.5, image ~0 with alpha 0.5)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                depthwise = m.groups > 1
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear" if depthwise else "relu")
                nn.init.zeros_(m.bias)
        last = self.head_branch.body[-1] if self.head_branch is not None else None
        for head in (self.head, getattr(self, "flow_head", None), last):
            if head is not None:
                nn.init.normal_(head.weight, std=0.1 / (head.in_channels * 9) ** 0.5)
                nn.init.zeros_(head.bias)

    @torch.no_grad()
    def set_background(self, plate: torch.Tensor) -> None:
        """Start the background from an estimate (3, S, S) in [-1, 1] (before training)."""
        want = tuple(self.background.shape[1:])
        if tuple(plate.shape) != want:
            raise ValueError(f"background plate of shape {tuple(plate.shape)}, expected {want}")
        self.background.copy_(torch.atanh(plate.clamp(-0.99, 0.99)).unsqueeze(0))

    def plate(self) -> torch.Tensor:
        """The background plate, (1, 3, S, S) in [-1, 1]."""
        return torch.tanh(self.background)

    def forward(self, labels: torch.Tensor, previous: torch.Tensor | None = None,
                plate: torch.Tensor | None = None, head: torch.Tensor | None = None):
        cfg = self.cfg
        L, C = cfg.history_frames, cfg.label_nc
        if plate is None:
            if cfg.crop_hw != (cfg.size, cfg.size):
                raise ValueError("a lite model with a person crop needs the plate's window as input")
            plate = self.plate()
        x = self.in_label(labels)
        if L:
            if previous is None:
                raise ValueError(f"this generator needs previous frames (history_frames={L})")
            x = x + self.in_image(previous)
        s4 = self.stem(x)                            # (B, c1, h/4, w/4)
        s8 = self.down1(s4)                          # (B, c2, h/8, w/8)
        s16 = self.blocks(self.down2(s8))            # (B, c3, h/16, w/16)
        y = F.relu(self.up1(F.interpolate(s16, scale_factor=2.0, mode="nearest")))
        y = F.relu(self.up2(torch.cat((y, s8), 1)))
        y = F.relu(self.fuse(torch.cat((F.interpolate(y, scale_factor=2.0, mode="nearest"), s4), 1)))
        current = labels[:, L * C:]                  # the current frame's label map, full resolution
        z = F.relu(self.dec2(torch.cat((_up2(y), F.avg_pool2d(current, 2)), 1)))
        z = F.relu(self.dec1(torch.cat((_up2(z), current), 1)))
        out = self.head(z)
        alpha = torch.sigmoid(out[:, 3:4]) * self.window
        if self.record_alpha is not None:
            self.record_alpha.append(alpha)
        # (a contiguous copy first: tanh on the strided channel slice of a channels_last map is ~8x slower on CPU)
        hallucinated = alpha * torch.tanh(out[:, :3].contiguous()) + (1 - alpha) * plate
        if not L:
            zeros = torch.zeros_like(hallucinated[:, :1])
            return self._refine(hallucinated, current, head), torch.cat((zeros, zeros), 1), zeros
        if self.training:  # the flow/warp losses reach the shared features 10x weaker (forward unchanged)
            y = y * cfg.flow_grad_scale + y.detach() * (1.0 - cfg.flow_grad_scale)
        fm = F.interpolate(self.flow_head(self.flow_body(y)), scale_factor=float(SHUFFLE), mode="bilinear",
                           align_corners=False)
        flow = fm[:, :2] * self.flow_scale
        mask = torch.sigmoid(fm[:, 2:3])
        frame = mask * warp(previous[:, -3:], flow) + (1 - mask) * hallucinated
        return self._refine(frame, current, head), flow, mask

    def _refine(self, frame, current, head):
        if self.head_branch is None:
            return frame
        if head is None:  # no head landmarks given: where models.window.head_box places it without them
            h, w = frame.shape[-2:]
            xy = head_box(None, CropBox(0, 0, h, w), self.cfg.size, self.head_branch.side, self.cfg.kind)
            head = frame.new_tensor([xy], dtype=torch.float32).expand(len(frame), 2)
        return self.head_branch(frame, current, head)

    # -- whole clips, as a live session runs them ---------------------------------------------------------
    def rollout(self, labels: torch.Tensor, landmarks: torch.Tensor | None = None):
        """Generate a clip from zero history, placing the window by the landmarks as a live session does.

        labels (B, T, C, S, S) full-frame label maps; landmarks (B, T, K, 3) (required with a person crop).
        -> frames (B, T, 3, S, S) full frames; flows (B, T, 2, h, w) and masks (B, T, 1, h, w) in the
        coordinates of each frame's window (``placements``).
        """
        cfg = self.cfg
        B, T = labels.shape[:2]
        S, L, C = cfg.size, cfg.history_frames, cfg.label_nc
        places = self.placements(landmarks, B, T)
        plate = self.plate().expand(B, -1, -1, -1)
        # The history as lists of full frames, each cut to the current window only: no full-frame concatenation
        # (measured: the rollout 13 % faster forward, 11 % backward at 256² in bf16).
        label_hist = [labels.new_zeros(B, C, S, S)] * L
        frame_hist = [labels.new_zeros(B, 3, S, S)] * L
        frames, flows, masks = [], [], []
        for t in range(T):
            lab = labels[:, t]
            step = [places[b][t].box for b in range(B)]
            head = (torch.tensor([places[b][t].head for b in range(B)], dtype=torch.float32, device=lab.device)
                    if self.head_branch is not None else None)
            out, flow, mask = self(cut_batch(label_hist + [lab], step), cut_batch(frame_hist, step) if L else None,
                                   cut_batch([plate], step), head)
            full = paste_batch(plate, out, step)
            frames.append(full)
            flows.append(flow)
            masks.append(mask)
            if L:
                label_hist = label_hist[1:] + [lab]
                frame_hist = frame_hist[1:] + [full.detach()]
        return torch.stack(frames, 1), torch.stack(flows, 1), torch.stack(masks, 1)
