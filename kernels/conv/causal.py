"""The Mamba-2 short convolution in Triton: causal depthwise conv1d + bias + SiLU, forward and backward.

    y[b, t, c] = silu(p[b, t, c]),   p[b, t, c] = bias[c] + sum_j w[c, j] x[b, t - (K-1) + j, c]

in the [B, T, C] layout the mixer produces (channels contiguous, so a tile of channels is one coalesced
read per time step), read through its strides: the mixer's input is a slice of the in-projection's output,
and the PyTorch path copies it twice (into [B, C, T] for cuDNN and back) around a conv that computes K - 1
outputs too many. Here the forward reads x once and writes y once, accumulating in float32.

Backward, with g = dy * silu'(p):
    dx[t] = sum_s w[K-1-s] g[t+s]         dw[c, j] = sum_{b,t} g[t] x[t-(K-1)+j]         dbias[c] = sum g
One kernel per (batch, time tile, channel tile) recomputes p, and so g, at the K positions t..t+K-1 it needs
from x (K small: the re-reads hit the cache) rather than storing p or g in the forward. dw and dbias leave as
per-tile partial sums, added up afterwards (no atomics, so the result does not depend on scheduling).

The function is `naive.causal_conv1d_silu_reference`; tests compare the two forward and backward.
"""

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..custom_ops import absent, kernel_op, launch, present

BLOCK_T = 64
BLOCK_C = 128


@triton.jit
def _preactivation(x_ptr, w_ptr, bias, t, c, c_ok, T, stride_t, stride_c, K: tl.constexpr):
    """p at times t [BT] and channels c [BC] (float32), x read at t - (K-1) .. t; zero where t is past T."""
    acc = tl.zeros((t.shape[0], c.shape[0]), dtype=tl.float32) + bias[None, :]
    for j in tl.static_range(K):
        src = t - (K - 1) + j
        ok = ((src >= 0) & (src < T))[:, None] & c_ok[None, :]
        xv = tl.load(x_ptr + src[:, None] * stride_t + c[None, :] * stride_c, mask=ok, other=0.0)
        wj = tl.load(w_ptr + c * K + j, mask=c_ok, other=0.0).to(tl.float32)
        acc += xv.to(tl.float32) * wj[None, :]
    return acc


@triton.jit
def _tile(b_ptr, C, HAS_BIAS: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """This program's (batch, time tile, times [BT], channels [BC], channel mask, bias [BC] float32)."""
    pid_b, pid_t, pid_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_c * BC + tl.arange(0, BC)
    c_ok = c < C
    bias = tl.zeros((BC,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    # the batch index as int64: offsets past a row (b * T * C) can exceed 2^31 at long contexts and batches
    return pid_b.to(tl.int64), pid_t, pid_t * BT + tl.arange(0, BT), c, c_ok, bias


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, T, C, sxb, sxt, sxc,
                HAS_BIAS: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    pid_b, pid_t, t, c, c_ok, bias = _tile(b_ptr, C, HAS_BIAS, BT, BC)
    p = _preactivation(x_ptr + pid_b * sxb, w_ptr, bias, t, c, c_ok, T, sxt, sxc, K)
    y = p * tl.sigmoid(p)
    out = y_ptr + pid_b * T * C + t[:, None] * C + c[None, :]
    tl.store(out, y.to(y_ptr.dtype.element_ty), mask=(t < T)[:, None] & c_ok[None, :])


@triton.jit
def _bwd_kernel(x_ptr, w_ptr, b_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr, T, C, NT, sxb, sxt, sxc,
                HAS_BIAS: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    pid_b, pid_t, t, c, c_ok, bias = _tile(b_ptr, C, HAS_BIAS, BT, BC)
    x_row = x_ptr + pid_b * sxb
    dy_row = dy_ptr + pid_b * T * C
    part = (pid_b * NT + pid_t) * C  # this tile's row of the partial sums
    dx = tl.zeros((BT, BC), dtype=tl.float32)
    for s in tl.static_range(K):
        at = t + s  # g at t + s reaches dx[t] through w[K-1-s]
        ok = (at < T)[:, None] & c_ok[None, :]
        p = _preactivation(x_row, w_ptr, bias, at, c, c_ok, T, sxt, sxc, K)
        sig = tl.sigmoid(p)
        dy = tl.load(dy_row + at[:, None] * C + c[None, :], mask=ok, other=0.0).to(tl.float32)
        g = tl.where(ok, dy * sig * (1.0 + p * (1.0 - sig)), 0.0)
        w = tl.load(w_ptr + c * K + (K - 1 - s), mask=c_ok, other=0.0).to(tl.float32)
        dx += g * w[None, :]
        if s == 0:  # the tile's own positions: its share of dw and dbias
            if HAS_BIAS:
                tl.store(db_ptr + part + c, tl.sum(g, axis=0), mask=c_ok)
            for j in tl.static_range(K):
                src = t - (K - 1) + j
                src_ok = ((src >= 0) & (src < T))[:, None] & c_ok[None, :]
                xv = tl.load(x_row + src[:, None] * sxt + c[None, :] * sxc, mask=src_ok, other=0.0)
                tl.store(dw_ptr + (part + c) * K + j, tl.sum(g * xv.to(tl.float32), axis=0), mask=c_ok)
    out = dx_ptr + pid_b * T * C + t[:, None] * C + c[None, :]
    tl.store(out, dx.to(dx_ptr.dtype.element_ty), mask=(t < T)[:, None] & c_ok[None, :])


def _grid(x):
    batch, seqlen, channels = x.shape
    return batch, triton.cdiv(seqlen, BLOCK_T), triton.cdiv(channels, BLOCK_C)


def _fwd_fake(x, weight, bias):
    return torch.empty(x.shape, device=x.device, dtype=x.dtype)


@kernel_op("causal_conv1d_silu_fwd", fake=_fwd_fake)
def _conv_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """y [B, T, C] (contiguous, x's dtype) from x [B, T, C] (any strides), weight [C, K] contiguous,
    bias [C] or None."""
    batch, seqlen, channels = x.shape
    y = torch.empty((batch, seqlen, channels), device=x.device, dtype=x.dtype)
    launch(_fwd_kernel)[_grid(x)](
        x, weight, bias if bias is not None else weight, y, seqlen, channels, *x.stride(),
        HAS_BIAS=bias is not None, K=weight.shape[1], BT=BLOCK_T, BC=BLOCK_C)
    return y


def _bwd_fake(dy, x, weight, bias):
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    db = absent(x) if bias is None else torch.empty_like(bias, dtype=torch.float32)
    return dx, torch.empty_like(weight, dtype=torch.float32), db


@kernel_op("causal_conv1d_silu_bwd", fake=_bwd_fake)
def _conv_bwd(dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx [B, T, C] in x's dtype, dweight [C, K] float32, dbias [C] float32 or an empty tensor when bias is
    None); dy [B, T, C] contiguous."""
    batch, seqlen, channels = x.shape
    kernel = weight.shape[1]
    grid = _grid(x)
    tiles = batch * grid[1]
    dx = torch.empty((batch, seqlen, channels), device=x.device, dtype=x.dtype)
    dw_part = torch.empty((tiles, channels, kernel), device=x.device, dtype=torch.float32)
    db_part = torch.empty((tiles, channels), device=x.device, dtype=torch.float32)
    launch(_bwd_kernel)[grid](
        x, weight, bias if bias is not None else weight, dy, dx, dw_part, db_part, seqlen, channels, grid[1],
        *x.stride(), HAS_BIAS=bias is not None, K=kernel, BT=BLOCK_T, BC=BLOCK_C)
    return dx, dw_part.sum(0), db_part.sum(0) if bias is not None else absent(x)


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, bias)


def _backward(ctx, dy):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = _conv_bwd(dy.to(x.dtype).contiguous(), x, weight, bias)
    return dx, dw.to(weight.dtype), present(None if bias is None else db.to(bias.dtype), bias)


_conv_fwd.register_autograd(_backward, setup_context=_setup_context)


def causal_conv1d_silu_triton(x, weight, bias=None):
    """Same function and signature as `naive.causal_conv1d_silu_reference`: x [B, T, C] (float32, float16 or
    bfloat16; any strides), weight [C, K], bias [C] or None -> [B, T, C] in x's dtype (float32 accumulation).
    Differentiable in x, weight and bias; weight and bias gradients in their own dtypes."""
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(f"expected x [B, T, C] and weight [C, K]; got x {tuple(x.shape)}, weight "
                         f"{tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[2],):
        raise ValueError(f"bias must be [C] = ({x.shape[2]},) or None; got {tuple(bias.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"x dtype {x.dtype} not supported by the Triton conv kernel: float32, float16 or "
                         "bfloat16")
    if not 1 <= weight.shape[1] <= 8 or x.shape[1] < 1:
        raise ValueError(f"the Triton conv kernel needs a width K in [1, 8] and T >= 1; got K="
                         f"{weight.shape[1]}, T={x.shape[1]}")
    return _conv_fwd(x, weight.contiguous(), None if bias is None else bias.contiguous())
