"""Pieces every mixer uses: RMSNorm, rotary embeddings, and gathering the last tokens of each row."""

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.dispatch import fused_on_cuda


@fused_on_cuda
def rms_norm(x, weight, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * xf.to(weight.dtype)).to(x.dtype)


@fused_on_cuda
def gated_rms_norm(y, z, weight, eps):
    """RMSNorm(y * SiLU(z)): Mamba-2's gated output norm."""
    return rms_norm(y * F.silu(z), weight, eps, use_kernels=False)


@fused_on_cuda
def swiglu(gate, up):
    return F.silu(gate) * up


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019), computed in float32."""

    def __init__(self, size, eps=1e-5, use_kernels=False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.use_kernels = use_kernels

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps, use_kernels=self.use_kernels)


def rope_angles(positions, dim, theta):
    """RoPE (Su et al., 2021) angles at positions [B, T] int: (cos, sin), each [B, T, 1, D/2] float32.

    Computed once per layer call and shared by every tensor it rotates (queries, keys, fading keys)."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.float()[..., None] * inv_freq  # (B, T, D/2)
    return angles.cos()[:, :, None], angles.sin()[:, :, None]


@fused_on_cuda
def rotate(x, cos, sin):
    """Applies RoPE angles from `rope_angles` to x [B, T, H, D] (rotate-half layout)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def gather_last(x, lengths, count):
    """The `count` entries ending at each row's length: x [B, T, ...], lengths [B] -> ([B, count, ...], valid [B, count]).

    Row b gets positions lengths[b]-count .. lengths[b]-1; positions before 0 read zeros and are invalid."""
    idx = lengths[:, None] - count + torch.arange(count, device=x.device)[None, :]  # (B, count)
    valid = idx >= 0
    flat = idx.clamp(min=0).reshape(x.shape[0], count, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    out = torch.gather(x, 1, flat)
    return out * valid.reshape(*valid.shape, *([1] * (x.dim() - 2))).to(out.dtype), valid


def where_rows(valid_row, new, old):
    """Per-row select between two batch-first tensors."""
    return torch.where(valid_row.reshape(-1, *([1] * (new.dim() - 1))), new, old)
