"""Pieces every mixer uses: RMSNorm, rotary embeddings, and gathering the last tokens of each row."""

import torch
from torch import nn

# RMSNorm's function is kernels/pointwise/naive.py's, dispatched per call (as are the gated norm, SwiGLU and
# the RoPE rotation, which the mixers import from the dispatcher)
from ..kernels.dispatch import rms_norm


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019), computed in float32."""

    def __init__(self, size, eps=1e-5, use_kernels=False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.use_kernels = use_kernels

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps, use_kernels=self.use_kernels)


def _inverse_frequencies(dim, theta, device):
    return theta ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)


# Eagerly, each layer call would recompute the same D/2 frequencies (4 launches per layer and token of an
# eager decode step); they are kept per (dim, theta, device) instead. Traced code computes them inline,
# where the compiler folds them.
_INVERSE_FREQUENCIES = {}


def _cos_sin(positions, dim, theta):
    """cos and sin of the RoPE angles at integer positions [...]: each [..., D/2] float32."""
    if torch.compiler.is_compiling():
        inv_freq = _inverse_frequencies(dim, theta, positions.device)
    else:
        key = (dim, float(theta), positions.device)
        inv_freq = _INVERSE_FREQUENCIES.get(key)
        if inv_freq is None:
            inv_freq = _INVERSE_FREQUENCIES[key] = _inverse_frequencies(dim, theta, positions.device)
    angles = positions.float()[..., None] * inv_freq
    return angles.cos(), angles.sin()


def _cos_sin_op():
    """`_cos_sin` as the opaque custom op bmojo::rope_cos_sin, for whole sequences.

    Why an op: under torch.compile, Inductor inlines a chain of pointwise ops into every consumer, so the
    angles' pow, cos and sin were recomputed for each element of every rotated [B, T, H, D] tensor, in
    the forward and again in the backward: on an H200 those fused RoPE kernels took 15.5 of a compiled
    training step's 80.7 ms (bmojo-matched, 8 x 2048, profiled 2026-12-02; DESIGN.md §7 has the figures).
    An op's outputs are materialised once, [B, T, D/2] per layer, and the rotations only read them. The
    function is the same as `_cos_sin`'s. A second copy of this code in one process (the Hub's flat
    modeling file beside an installed bmojo) reuses the op the first one registered."""
    existing = getattr(getattr(torch.ops, "bmojo", None), "rope_cos_sin", None)
    if existing is not None:
        return existing

    @torch.library.custom_op("bmojo::rope_cos_sin", mutates_args=())
    def op(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
        return _cos_sin(positions, dim, theta)

    @op.register_fake
    def _(positions, dim, theta):
        shape = (*positions.shape, dim // 2)
        return (positions.new_empty(shape, dtype=torch.float32),
                positions.new_empty(shape, dtype=torch.float32))

    return op


_ROPE_COS_SIN = _cos_sin_op()


def rope_angles(positions, dim, theta):
    """RoPE (Su et al., 2021) angles at positions [B, T] int: (cos, sin), each [B, T, 1, D/2] float32.

    Computed once per layer call and shared by every tensor it rotates (queries, keys, fading keys).
    The op only under torch.compile, for whole sequences; eagerly, the angles are materialised anyway and
    the op's dispatch would only add host time; a decode step (one position per row) stays inline, where
    the compiled step fuses it for free."""
    if positions.shape[-1] > 1 and torch.compiler.is_compiling():
        cos, sin = _ROPE_COS_SIN(positions, dim, float(theta))
    else:
        cos, sin = _cos_sin(positions, dim, theta)
    return cos[:, :, None], sin[:, :, None]


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
