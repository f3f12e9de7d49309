"""Row-wise and elementwise pieces of every layer, defined in plain PyTorch: RMSNorm, Mamba-2's gated RMSNorm,
SwiGLU and the RoPE rotation. The Triton kernels (`rows.py`) compute the same functions."""

import torch
import torch.nn.functional as F


def rms_norm_reference(x, weight, eps):
    """RMSNorm (Zhang & Sennrich, 2019) over the last dim, in float32: x [..., N], weight [N] -> x's dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * xf.to(weight.dtype)).to(x.dtype)


def gated_rms_norm_reference(y, z, weight, eps):
    """RMSNorm(y * SiLU(z)): Mamba-2's gated output norm."""
    return rms_norm_reference(y * F.silu(z), weight, eps)


def swiglu_reference(gate, up):
    return F.silu(gate) * up


def rotate_reference(x, cos, sin):
    """Applies RoPE angles (cos, sin [B, T, 1, D/2] float32, from `rope_angles`) to x [B, T, H, D]
    (rotate-half layout)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
