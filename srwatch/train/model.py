"""EDSR network for training (PyTorch), laid out so it exports to dnn_superres' `edsr` graph.

Layout (matches the upstream EDSR_x*.pb that cv2.dnn_superres loads, see shared FACTS):
input (BGR minus the DIV2K mean, 0..255) -> head conv -> residual blocks -> body conv, plus the
head's output -> tail conv to 3*scale^2 channels -> depth_to_space(scale, TensorFlow order).

The network computes in a normalised domain (x / 255); the exporters fold the 1/255 into the
head conv and the 255 into the tail conv, so exported files take and give 0..255 values.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..engine.models import DIV2K_MEAN_BGR


@dataclass(frozen=True)
class EDSRSpec:
    """Shape of an EDSR network."""

    scale: int = 3
    blocks: int = 16
    filters: int = 32
    res_scale: float = 1.0

    def to_dict(self) -> dict:
        """Plain dict, for checkpoints and model cards."""
        return asdict(self)


def depth_to_space_tf(x: torch.Tensor, block: int) -> torch.Tensor:
    """TensorFlow's depth_to_space (DCR order) on an NCHW tensor.

    TF takes output channel c of sub-pixel (i, j) from input channel (i*block + j)*C + c;
    torch.pixel_shuffle uses c*block^2 + i*block + j. We train in TF order so the exported
    weights need no permutation.
    """
    n, c, h, w = x.shape
    out_c = c // (block * block)
    x = x.view(n, block, block, out_c, h, w)
    x = x.permute(0, 3, 4, 1, 5, 2)
    return x.reshape(n, out_c, h * block, w * block)


class ResBlock(nn.Module):
    """conv-relu-conv with a scaled identity skip, no batch norm (EDSR)."""

    def __init__(self, filters: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(filters, filters, 3, padding=1)
        self.conv2 = nn.Conv2d(filters, filters, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        if self.res_scale != 1.0:
            y = y * self.res_scale
        return x + y


class EDSR(nn.Module):
    """EDSR in the normalised domain: input and output are (BGR - mean) / 255."""

    def __init__(self, spec: EDSRSpec) -> None:
        super().__init__()
        self.spec = spec
        f = spec.filters
        self.head = nn.Conv2d(3, f, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(f, spec.res_scale) for _ in range(spec.blocks))
        self.body_end = nn.Conv2d(f, f, 3, padding=1)
        self.tail = nn.Conv2d(f, 3 * spec.scale * spec.scale, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        y = h
        for block in self.blocks:
            y = block(y)
        y = self.body_end(y) + h
        return depth_to_space_tf(self.tail(y), self.spec.scale)


def mean_tensor() -> torch.Tensor:
    """DIV2K BGR mean as a (1, 3, 1, 1) tensor in 0..255."""
    return torch.tensor(DIV2K_MEAN_BGR, dtype=torch.float32).view(1, 3, 1, 1)
