"""Pieces every mixer uses: RMSNorm, rotary embeddings, and gathering the last tokens of each row; and the
values every layer of one parallel pass would recompute from the same inputs, computed once."""

import contextlib
import contextvars

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


# --- values shared across the layers of one parallel pass --------------------------------------------------
# Every layer of a prefill or training forward builds the same column positions, RoPE angles, real-token mask
# and last-token indices from the same lengths: ~20 small launches per B'MOJO layer, each paid for in host
# time by an eager prefill (~1,370 launches in a 12-layer 2k prefill, H100 2026-12-05). Inside
# `shared_across_layers()` (BMojoModel's eager parallel pass) the first layer computes them and the others
# reuse them. Compiled code computes them inline (the compiler dedupes them) and never enters the block.
_SHARED = contextvars.ContextVar("bmojo_shared_across_layers", default=None)


@contextlib.contextmanager
def shared_across_layers():
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def _shared(key, compute, owner=None):
    """compute(), or what it gave for `key` earlier in the same `shared_across_layers` block. `owner`: the
    tensor the value derives from, kept with it (its id is part of the key and is not reused while held)."""
    if torch.compiler.is_compiling():
        return compute()
    memo = _SHARED.get()
    if memo is None:
        return compute()
    hit = memo.get(key)
    if hit is None or hit[0] is not owner:
        hit = memo[key] = (owner, compute())
    return hit[1]


def sequence_positions(batch, seqlen, device):
    """[B, T] int64: each column's position in a parallel pass (real tokens first in every row)."""
    return _shared(("positions", batch, seqlen, device),
                   lambda: torch.arange(seqlen, device=device).expand(batch, -1))


def real_tokens(lengths, seqlen):
    """[B, T] bool: column t of row b is a real token (t < lengths[b])."""
    return _shared(("real", id(lengths), seqlen),
                   lambda: torch.arange(seqlen, device=lengths.device)[None, :] < lengths[:, None], lengths)


def real_token_count(lengths, seqlen):
    """The number of real tokens, at least 1 (a mean's denominator), as a float32 scalar tensor."""
    return _shared(("count", id(lengths), seqlen),
                   lambda: real_tokens(lengths, seqlen).sum().clamp(min=1).float(), lengths)


def sequence_angles(batch, seqlen, dim, theta, device):
    """`rope_angles` of `sequence_positions`."""
    return _shared(("angles", batch, seqlen, dim, float(theta), device),
                   lambda: rope_angles(sequence_positions(batch, seqlen, device), dim, theta))


def no_loss(device):
    """A float32 zero scalar: the auxiliary loss of a mixer that has none."""
    return _shared(("zero", device), lambda: torch.zeros((), dtype=torch.float32, device=device))


def _last_positions(lengths, count):
    """(index [B, count] clamped at 0, valid [B, count]) of the `count` positions ending at each length."""
    def compute():
        idx = lengths[:, None] - count + torch.arange(count, device=lengths.device)[None, :]
        return idx.clamp(min=0), idx >= 0

    return _shared(("last", id(lengths), count), compute, lengths)


def gather_last(x, lengths, count):
    """The `count` entries ending at each row's length: x [B, T, ...], lengths [B] -> ([B, count, ...], valid [B, count]).

    Row b gets positions lengths[b]-count .. lengths[b]-1; positions before 0 read zeros and are invalid."""
    idx, valid = _last_positions(lengths, count)
    trailing = [1] * (x.dim() - 2)
    out = torch.gather(x, 1, idx.reshape(x.shape[0], count, *trailing).expand(-1, -1, *x.shape[2:]))
    return torch.where(valid.reshape(*valid.shape, *trailing), out, 0), valid


def where_rows(valid_row, new, old):
    """Per-row select between two batch-first tensors."""
    return torch.where(valid_row.reshape(-1, *([1] * (new.dim() - 1))), new, old)
