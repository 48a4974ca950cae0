"""DAM's projector: (B, T, C) vision features -> (B, V, H) LM embeddings, "mlp2x_gelu" (Linear, GELU, Linear)
or "mlp_downsample" (DAM-3B's: `Merge2x2` token merge, then LayerNorm + the same MLP on 4C)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from groundscope.describe.config import PROJECTORS, DamError


class Merge2x2(nn.Module):
    """(B, s*s, C) tokens of an s x s grid -> (B, ceil(s/2)^2, 4C), in the reference's order.

    An odd grid is padded with zero tokens at the bottom / right. Output token (j, i) for column pair j and row
    pair i, j-major (the grid comes out transposed), holds [x[2i,2j], x[2i,2j+1], x[2i+1,2j], x[2i+1,2j+1]]
    concatenated; the released projector's LayerNorm and Linear weights depend on exactly this order.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        s = math.isqrt(t)
        if s * s != t:
            raise DamError(f"mlp_downsample needs a square token grid, got {t} tokens")
        g = F.pad(x.reshape(b, s, s, c), (0, 0, 0, s % 2, 0, s % 2))
        h = (s + 1) // 2
        g = g.reshape(b, h, 2, h, 2, c).permute(0, 3, 1, 2, 4, 5)  # (b, j, i, di, dj, c)
        return g.reshape(b, h * h, 4 * c)


class Projector(nn.Module):
    """(B, T, C) vision features -> (B, V, H) LM embeddings; ``layers`` indexes as the reference's."""

    def __init__(self, kind: str, vision_dim: int, llm_dim: int):
        super().__init__()
        if kind == "mlp2x_gelu":
            mods = [nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim)]
        elif kind == "mlp_downsample":
            mods = [Merge2x2(), nn.LayerNorm(4 * vision_dim), nn.Linear(4 * vision_dim, llm_dim), nn.GELU(),
                    nn.Linear(llm_dim, llm_dim)]
        else:
            raise DamError(f"projector {kind!r} is not supported; use one of {list(PROJECTORS)}")
        self.kind = kind
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
