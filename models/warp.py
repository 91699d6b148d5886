"""The one warp op: resample an image with a dense backward flow (``grid_sample``; exports to ONNX opset >= 16)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def base_grid(height: int, width: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(1, H, W, 2) sampling grid of the identity, in grid_sample's [-1, 1] coordinates (align_corners=False)."""
    ys = (torch.arange(height, dtype=dtype, device=device) + 0.5) * (2.0 / height) - 1.0
    xs = (torch.arange(width, dtype=dtype, device=device) + 0.5) * (2.0 / width) - 1.0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).unsqueeze(0)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp ``image`` (B, C, H, W) by ``flow`` (B, 2, H, W) in pixels (x, y).

    out(p) = image(p + flow(p)), bilinear, border padding. Zero flow is the identity.
    """
    b, _, h, w = image.shape
    if flow.shape != (b, 2, h, w):
        raise ValueError(f"flow must be {(b, 2, h, w)}, got {tuple(flow.shape)}")
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=flow.dtype, device=flow.device)
    grid = base_grid(h, w, dtype=flow.dtype, device=flow.device) + flow.permute(0, 2, 3, 1) * scale
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def compose_flows(flows: list[torch.Tensor]) -> torch.Tensor:
    """Chain backward flows f_t (t -> t-1), f_{t-1}, ... into one flow from t to t-len(flows).

    ``flows[0]`` is the flow of the latest frame. f_{t->t-2}(p) = f_t(p) + f_{t-1}(p + f_t(p)).
    """
    total = flows[0]
    for f in flows[1:]:
        total = total + warp(f, total)
    return total
