"""Multi-scale deformable attention as one sparse-dense matrix product (CPU fast path).

transformers' `MultiScaleDeformableAttention` samples every level with ``grid_sample`` (bilinear,
``align_corners=False``, zero padding) in channels-first layout, stacks the (B*heads, D, Q, L*P) samples and
sums them under the attention weights: four strided reads per sample and a large intermediate. Here the same
sum is written as

    output[(b, q, h)] = sum_{l, p, corner} weight * table[row(b, level l, y, x, h)]        (B*Q*heads, D)

i.e. a sparse (B*Q*heads, rows) matrix with L*P*4 non-zeros per row times a dense table of the value vectors,
done by one ``torch.sparse.mm`` on a CSR matrix whose row pointers are a plain arange. Each level of the table
is padded by two zero pixels on every side, so a corner outside the image reads a zero (grid_sample's zero
padding) without any per-corner test: the top-left corner is clamped into [-2, W] x [-2, H], where a whole
2x2 block outside the image lies in the padding.

The index arithmetic (`sampling_rows`) is the part left in Python ops; `compile_index_math` fuses it with
torch.compile when a compiler is available. Same semantics as grid_sample; tests/test_fast_path.py holds it
to transformers' function at 1e-5 in fp32. The table and the weights are fp32 whatever the input dtype (MKL's
sparse kernels have no bf16, and coordinates need fp32), the output has the value's dtype.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

PAD = 2  # zero pixels around each level: a 2x2 block whose top-left is clamped to -2 or W lies fully inside them


def sampling_rows(
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    widths: torch.Tensor,
    heights: torch.Tensor,
    level_base: torch.Tensor,
    corner_step: torch.Tensor,
    num_heads: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Table rows and weights of the four bilinear corners of every sample.

    Args:
        sampling_locations: (B, Q, heads, L, P, 2) in [0, 1] (x, y), the reference's convention.
        attention_weights: (B, Q, heads, L, P).
        widths, heights: (L, 1) float32 level sizes.
        level_base: (L, 1) float32: the padded row of level pixel (0, 0) for batch element 0, divided by heads.
        corner_step: (L, 1, 4) int32 row offsets of the corners (0, 0), (0, 1), (1, 0), (1, 1), times heads.
        num_heads: heads.
    Returns:
        rows (B, Q, heads, L, P, 4) int32 and weights (B, Q, heads, L, P, 4) float32.
    """
    loc = sampling_locations.float()
    # grid_sample's unnormalisation for align_corners=False, with the reference's own rounding steps:
    # grid = 2 * loc - 1, then x = ((grid + 1) * W - 1) / 2.
    grid = 2 * loc - 1
    x = ((grid[..., 0] + 1) * widths - 1) / 2
    y = ((grid[..., 1] + 1) * heights - 1) / 2
    x0 = x.floor()
    y0 = y.floor()
    fx = x - x0
    fy = y - y0
    x0 = torch.minimum(x0.clamp(min=-PAD), widths)
    y0 = torch.minimum(y0.clamp(min=-PAD), heights)
    pixel = (x0 + level_base + y0 * (widths + 2 * PAD)).to(torch.int32)
    head = torch.arange(num_heads, dtype=torch.int32, device=loc.device).view(num_heads, 1, 1)
    rows = (pixel * num_heads + head).unsqueeze(-1) + corner_step
    a = attention_weights.float()
    ax = a * fx
    a_x = a - ax
    gy = 1 - fy
    weights = torch.stack([a_x * gy, ax * gy, a_x * fy, ax * fy], -1)
    return rows, weights


_index_math = sampling_rows


def compile_index_math(enabled: bool = True) -> bool:
    """Use a torch.compile'd `sampling_rows` (one fused loop instead of ~25 passes; needs a C++ compiler).

    Returns whether the compiled version is in use. Compilation happens on the first call; a failure there
    falls back to the Python ops (see `_rows`)."""
    global _index_math
    if not enabled:
        _index_math = sampling_rows
        return False
    try:
        _index_math = torch.compile(sampling_rows, dynamic=True)
    except Exception:  # no inductor backend on this build
        _index_math = sampling_rows
        return False
    return True


def _rows(*args):
    global _index_math
    if _index_math is sampling_rows:
        return sampling_rows(*args)
    try:
        return _index_math(*args)
    except Exception:  # compiler missing or failing at run time: the eager ops compute the same thing
        _index_math = sampling_rows
        return sampling_rows(*args)


def value_table(value: torch.Tensor, spatial_shapes_list: list[tuple[int, int]]) -> tuple[torch.Tensor, list[int]]:
    """(B, S, heads, D) values -> (B * S_pad * heads, D) fp32 table, each level zero-padded by PAD pixels.

    Rows are in (batch, padded pixel, head) order, the value's own memory order, so no transpose is needed.
    Returns the table and, per level, the padded row (in pixels) of its first pixel.
    """
    b, _, heads, d = value.shape
    parts, starts, start, pos = [], [], 0, 0
    for h, w in spatial_shapes_list:
        level = value[:, start : start + h * w].reshape(b, h, w, heads * d)
        padded = nn.functional.pad(level, (0, 0, PAD, PAD, PAD, PAD))
        parts.append(padded.reshape(b, (h + 2 * PAD) * (w + 2 * PAD), heads * d))
        starts.append(pos)
        start += h * w
        pos += (h + 2 * PAD) * (w + 2 * PAD)
    table = torch.cat(parts, 1).float() if len(parts) > 1 else parts[0].float()
    return table.reshape(b * pos * heads, d), starts


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes_list: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """transformers' `MultiScaleDeformableAttention.forward`, computed as a sparse-dense product.

    Args:
        value: (B, S, heads, D), S = sum of H_l * W_l, levels in order.
        spatial_shapes_list: [(H_l, W_l)] per level.
        sampling_locations: (B, Q, heads, L, P, 2), normalised (x, y); outside [0, 1] samples read zeros.
        attention_weights: (B, Q, heads, L, P).
    Returns:
        (B, Q, heads * D) in value's dtype.
    """
    b, s, heads, d = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    if sum(h * w for h, w in spatial_shapes_list) != s:
        raise ValueError(f"value has {s} positions but spatial_shapes_list {spatial_shapes_list} covers "
                         f"{sum(h * w for h, w in spatial_shapes_list)}; pass the shapes the value was flattened from")
    device = value.device
    table, starts = value_table(value, spatial_shapes_list)
    padded_pixels = table.shape[0] // (b * heads)
    widths = torch.tensor([float(w) for _, w in spatial_shapes_list], device=device).view(levels, 1)
    heights = torch.tensor([float(h) for h, _ in spatial_shapes_list], device=device).view(levels, 1)
    # Row of pixel (0, 0) of each level: its start plus the PAD rows and columns before it.
    base = torch.tensor([st + PAD * (w + 2 * PAD) + PAD for st, (_, w) in zip(starts, spatial_shapes_list)],
                        dtype=torch.float32, device=device).view(levels, 1)
    steps = torch.tensor([[0, 1, w + 2 * PAD, w + 2 * PAD + 1] for _, w in spatial_shapes_list],
                         dtype=torch.int32, device=device).mul_(heads).view(levels, 1, 4)
    rows, weights = _rows(sampling_locations, attention_weights, widths, heights, base, steps, heads)
    if b > 1:  # batch element i's table starts padded_pixels * heads rows further
        rows = rows + (torch.arange(b, dtype=torch.int32, device=device) * (padded_pixels * heads)).view(b, 1, 1, 1, 1, 1)
    per_row = levels * points * 4
    crow = torch.arange(0, b * q * heads * per_row + 1, per_row, dtype=torch.int32, device=device)
    with warnings.catch_warnings():  # torch calls CSR support "beta" on every construction
        warnings.simplefilter("ignore", UserWarning)
        # Rows are in range by construction (clamped corners, padded table), so the O(nnz) check is skipped.
        matrix = torch.sparse_csr_tensor(crow, rows.reshape(-1), weights.reshape(-1),
                                         size=(b * q * heads, table.shape[0]), check_invariants=False)
    with torch.autocast(device_type=device.type, enabled=False):  # autocast would ask MKL for a bf16 kernel
        out = torch.sparse.mm(matrix, table)
    return out.view(b, q, heads * d).to(value.dtype)


KERNELS = ("sparse", "cpp")


class FastMultiScaleDeformableAttention(nn.Module):
    """Drop-in for transformers' `MultiScaleDeformableAttention` (same forward arguments, no parameters).

    Inference runs `multi_scale_deformable_attention` (``kernel="sparse"``) or the compiled C++ sampler of
    `msda_cpp` (``kernel="cpp"``, falling back to sparse where it cannot be built). Training (autograd through
    the sparse weights is not supported) and tracing for export (sparse tensors have no ONNX form) run the
    reference module it wraps.
    """

    def __init__(self, reference: nn.Module, kernel: str = "sparse"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel '{kernel}' is not one of {', '.join(KERNELS)}")
        self.reference = reference
        self.kernel = kernel
        self.train(reference.training)  # a new module starts in training mode; follow the model's mode

    def forward(
        self,
        value: torch.Tensor,
        value_spatial_shapes: torch.Tensor,
        value_spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        im2col_step: int,
    ) -> torch.Tensor:
        if self.training or torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.is_grad_enabled():
            return self.reference(value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
                                  sampling_locations, attention_weights, im2col_step)
        shapes = [(int(h), int(w)) for h, w in value_spatial_shapes_list]
        if self.kernel == "cpp" and value.device.type == "cpu":
            from groundscope.models.fast import msda_cpp

            if msda_cpp.kernel() is not None:
                return msda_cpp.multi_scale_deformable_attention(value, shapes, sampling_locations, attention_weights)
        return multi_scale_deformable_attention(value, shapes, sampling_locations, attention_weights)
