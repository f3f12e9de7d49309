"""RMSNorm, gated RMSNorm, SwiGLU and the RoPE rotation as Triton kernels launched directly, forward and
backward, for eager calls on CUDA (BMOJO_POINTWISE_KERNELS=1, kernels/dispatch.py).

Why: eagerly these chains ran through a `torch.compile`d copy of each function (`fused_on_cuda`), which fuses
them into one kernel but costs a compiled call's host time, dynamo's guards and the runtime wrappers, each
time: ~0.2 ms on the H200's host, 85 times in a 12-layer prefill and ~61 times in an eager decode step
(benchmarks/results/bench_prefill_h200_2026-12-04b.md). A launch from Python costs a fraction of that. Under
torch.compile the references are traced inline instead, where the compiler fuses them with their neighbours.

Each kernel reads its input through a row stride (a slice of a wider projection needs no copy), computes in
float32 and writes a contiguous output in the input's dtype. The norms' backward kernels walk a range of rows
per program and leave the weight's gradient as per-program partial sums, added afterwards (no atomics, so
the result does not depend on scheduling), as causal.py does for the convolution. The autograd wrappers are
`torch.autograd.Function`s, not custom ops: these run eagerly only, and an op's dispatch would cost part of
what the kernel saves. The functions are `naive.py`'s; tests compare forward and backward.
"""

import functools

import torch
import triton
import triton.language as tl

from ..dispatch import needs_grad

MAX_WIDTH = 65536  # widest row a norm keeps in registers; wider rows take the reference (dispatch)
BLOCK = 1024  # elements per program of the elementwise kernels


@triton.jit
def _gate(x_row, z_row, cols, ok, GATED: tl.constexpr):
    """The norm's input in float32: x, or x * silu(z) when GATED; also z and sigmoid(z) (unused otherwise)."""
    x = tl.load(x_row + cols, mask=ok, other=0.0).to(tl.float32)
    z = x
    sig = x
    if GATED:
        z = tl.load(z_row + cols, mask=ok, other=0.0).to(tl.float32)
        sig = tl.sigmoid(z)
        x = x * z * sig
    return x, z, sig


@triton.jit
def _norm_fwd_kernel(X, Z, W, Y, RSTD, N, sx, sz, eps,
                     GATED: tl.constexpr, KEEP_RSTD: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    ok = cols < N
    g, _, _ = _gate(X + row * sx, Z + row * sz, cols, ok, GATED)
    rstd = tl.rsqrt(tl.sum(g * g, axis=0) / N + eps)
    w = tl.load(W + cols, mask=ok, other=0.0)
    # as the reference rounds: the normalised row to the weight's dtype, times the weight in that dtype
    normed = (g * rstd).to(W.dtype.element_ty).to(tl.float32)
    y = (normed * w.to(tl.float32)).to(W.dtype.element_ty)
    tl.store(Y + row * N + cols, y.to(Y.dtype.element_ty), mask=ok)
    if KEEP_RSTD:
        tl.store(RSTD + row, rstd)


@triton.jit
def _norm_bwd_kernel(DY, X, Z, W, RSTD, DX, DZ, DW_PART, R, N, sx, sz, rows_per_program,
                     GATED: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    ok = cols < N
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    start = pid.to(tl.int64) * rows_per_program
    for i in range(0, rows_per_program):
        row = start + i
        # the last program's range may run past the rows: masked (row broadcast to the block), adds 0 to dw
        live = ok & ((row + tl.zeros((BLOCK_N,), dtype=tl.int64)) < R)
        g, z, sig = _gate(X + row * sx, Z + row * sz, cols, live, GATED)
        rstd = tl.load(RSTD + row, mask=row < R, other=0.0)
        normed = g * rstd
        dy = tl.load(DY + row * N + cols, mask=live, other=0.0).to(tl.float32)
        dn = dy * w
        # d/dg of g * rstd(g): rstd * (dn - normed * mean(dn * normed))
        dg = rstd * (dn - normed * (tl.sum(dn * normed, axis=0) / N))
        dw += dy * normed
        if GATED:
            x = tl.load(X + row * sx + cols, mask=live, other=0.0).to(tl.float32)
            tl.store(DX + row * N + cols, (dg * z * sig).to(DX.dtype.element_ty), mask=live)
            dz = dg * x * sig * (1.0 + z * (1.0 - sig))
            tl.store(DZ + row * N + cols, dz.to(DZ.dtype.element_ty), mask=live)
        else:
            tl.store(DX + row * N + cols, dg.to(DX.dtype.element_ty), mask=live)
    tl.store(DW_PART + pid * N + cols, dw, mask=ok)


@triton.jit
def _swiglu_fwd_kernel(G, U, O, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    g = tl.load(G + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(O + offs, (g * tl.sigmoid(g) * u).to(O.dtype.element_ty), mask=ok)


@triton.jit
def _swiglu_bwd_kernel(DO, G, U, DG, DU, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    do = tl.load(DO + offs, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=ok, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    tl.store(DU + offs, (do * g * sig).to(DU.dtype.element_ty), mask=ok)
    tl.store(DG + offs, (do * u * sig * (1.0 + g * (1.0 - sig))).to(DG.dtype.element_ty), mask=ok)


@triton.jit
def _rotate_kernel(X, COS, SIN, Y, T, H, sxb, sxt, sxh, scb, sct, ssb, sst, SIGN: tl.constexpr,
                   HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """One (row, time) and a block of heads: y = (x1 c - x2 s, x2 c + x1 s); SIGN = -1 rotates back
    (the backward: the rotation's transpose)."""
    bt = tl.program_id(0)
    b = (bt // T).to(tl.int64)
    t = (bt % T).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HALF
    ok = (h < H)[:, None] & d_ok[None, :]
    c = tl.load(COS + b * scb + t * sct + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    s = SIGN * tl.load(SIN + b * ssb + t * sst + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    src = X + b * sxb + t * sxt + h[:, None] * sxh + d[None, :]
    x1 = tl.load(src, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=ok, other=0.0).to(tl.float32)
    dst = Y + ((b * T + t) * H + h[:, None]) * (2 * HALF) + d[None, :]
    tl.store(dst, (x1 * c - x2 * s).to(Y.dtype.element_ty), mask=ok)
    tl.store(dst + HALF, (x2 * c + x1 * s).to(Y.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------- launchers

def _cdiv(a, b):  # triton.cdiv and next_power_of_2 are jit functions: ~15 us per call from Python (CPU)
    return -(-a // b)


def _pow2(n):
    return 1 << max(n - 1, 0).bit_length()


def _warps(block):
    return 4 if block < 2048 else 8 if block < 8192 else 16


def _as_rows(t):
    """t [..., N] as [R, N] with unit column stride, a view where t's strides allow it."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, t.shape[-1])


@functools.lru_cache(maxsize=None)
def _programs(device):
    """Programs of a norm's backward: a few per SM, each walking a range of rows."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _norm_forward(x, z, weight, eps, keep_rstd):
    rows_x = _as_rows(x)
    rows_z = _as_rows(z) if z is not None else rows_x
    count, width = rows_x.shape
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    rstd = torch.empty(count, device=x.device, dtype=torch.float32) if keep_rstd else y
    block = _pow2(width)
    _norm_fwd_kernel[(count,)](rows_x, rows_z, weight, y, rstd, width, rows_x.stride(0), rows_z.stride(0),
                               eps, GATED=z is not None, KEEP_RSTD=keep_rstd, BLOCK_N=block,
                               num_warps=_warps(block))
    return y, (rstd if keep_rstd else None)


def _norm_backward(dy, x, z, weight, rstd):
    rows_x = _as_rows(x)
    rows_z = _as_rows(z) if z is not None else rows_x
    count, width = rows_x.shape
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    dz = torch.empty(z.shape, device=z.device, dtype=z.dtype) if z is not None else dx
    per = _cdiv(count, min(count, _programs(x.device)))
    programs = _cdiv(count, per)
    dw_part = torch.empty(programs, width, device=x.device, dtype=torch.float32)
    block = _pow2(width)
    _norm_bwd_kernel[(programs,)](dy.contiguous(), rows_x, rows_z, weight, rstd, dx, dz, dw_part, count,
                                  width,
                                  rows_x.stride(0), rows_z.stride(0), per, GATED=z is not None, BLOCK_N=block,
                                  num_warps=_warps(block))
    return dx, (dz if z is not None else None), dw_part.sum(0).to(weight.dtype)


class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, z, weight, eps):
        y, rstd = _norm_forward(x, z, weight, eps, keep_rstd=True)
        ctx.save_for_backward(x, z, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, z, weight, rstd = ctx.saved_tensors
        dx, dz, dw = _norm_backward(dy, x, z, weight, rstd)
        return dx, dz, dw, None


def _norm(x, z, weight, eps):
    if needs_grad(x, z, weight):
        return _Norm.apply(x, z, weight, eps)
    return _norm_forward(x, z, weight, eps, keep_rstd=False)[0]


def rms_norm_unchecked(x, weight, eps):
    return _norm(x, None, weight.contiguous(), float(eps))


def rms_norm_triton(x, weight, eps):
    """`naive.rms_norm_reference`'s function: x [..., N] (last dim contiguous or copied), weight [N]."""
    _require("norm", x, weight)
    return rms_norm_unchecked(x, weight, eps)


def gated_rms_norm_unchecked(y, z, weight, eps):
    return _norm(y, z, weight.contiguous(), float(eps))


def gated_rms_norm_triton(y, z, weight, eps):
    """`naive.gated_rms_norm_reference`'s function: RMSNorm(y * silu(z)), y and z [..., N]."""
    _require("norm", y, z, weight)
    return gated_rms_norm_unchecked(y, z, weight, eps)


def _swiglu_forward(gate, up):
    out = torch.empty_like(gate, memory_format=torch.contiguous_format)
    _swiglu_fwd_kernel[(_cdiv(gate.numel(), BLOCK),)](gate, up, out, gate.numel(), BLOCK=BLOCK)
    return out


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return _swiglu_forward(gate, up)

    @staticmethod
    def backward(ctx, dout):
        gate, up = ctx.saved_tensors
        dgate, dup = torch.empty_like(gate), torch.empty_like(up)
        _swiglu_bwd_kernel[(_cdiv(gate.numel(), BLOCK),)](dout.contiguous(), gate, up, dgate, dup,
                                                                 gate.numel(), BLOCK=BLOCK)
        return dgate, dup


def swiglu_triton(gate, up):
    """`naive.swiglu_reference`'s function: silu(gate) * up, both of one shape (copied if not contiguous)."""
    _require("swiglu", gate, up)
    return swiglu_unchecked(gate, up)


def swiglu_unchecked(gate, up):
    gate, up = gate.contiguous(), up.contiguous()
    if needs_grad(gate, up):
        return _SwiGLU.apply(gate, up)
    return _swiglu_forward(gate, up)


def _rotate(x, cos, sin, sign):
    if x.stride(-1) != 1:
        x = x.contiguous()
    batch, seqlen, heads, dim = x.shape
    y = torch.empty((batch, seqlen, heads, dim), device=x.device, dtype=x.dtype)
    block_h = min(_pow2(heads), 16)
    grid = (batch * seqlen, _cdiv(heads, block_h))
    _rotate_kernel[grid](x, cos, sin, y, seqlen, heads, x.stride(0), x.stride(1), x.stride(2),
                         cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1), SIGN=sign, HALF=dim // 2,
                         BLOCK_H=block_h, BLOCK_D=_pow2(dim // 2))
    return y


class _Rotate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, 1)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _rotate(dy, cos, sin, -1), None, None


def rotate_triton(x, cos, sin):
    """`naive.rotate_reference`'s function: x [B, T, H, D] (D even), cos and sin [B, T, 1, D/2] (or
    broadcastable to it) without gradients."""
    _require("rotate", x, cos, sin)
    return rotate_unchecked(x, cos, sin)


def rotate_unchecked(x, cos, sin):
    batch, seqlen = x.shape[:2]
    cos, sin = (a.expand(batch, seqlen, 1, x.shape[-1] // 2) for a in (cos, sin))
    if cos.stride(-1) != 1 or sin.stride(-1) != 1:
        cos, sin = cos.contiguous(), sin.contiguous()
    if needs_grad(x):
        return _Rotate.apply(x, cos, sin)
    return _rotate(x, cos, sin, 1)


def unsupported(kind, *tensors):
    """Why the kernel `kind` ("norm", "swiglu", "rotate") cannot take these tensors, or None. The dispatcher
    runs the reference for them, and the `*_unchecked` functions for the others; the `*_triton` functions
    raise a ValueError with this text."""
    names = {"norm": ("x", "z", "weight") if len(tensors) == 3 else ("x", "weight"),
             "swiglu": ("gate", "up"), "rotate": ("x", "cos", "sin")}[kind]
    for name, t in zip(names, tensors):
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"{name} has dtype {t.dtype}; the Triton {kind} kernel takes float32, float16 or bfloat16"
    main = tensors[0]
    if main.numel() == 0:
        return f"{names[0]} is empty (shape {tuple(main.shape)}); the Triton {kind} kernel needs elements"
    if kind == "norm":
        width = main.shape[-1]
        if width > MAX_WIDTH:
            return f"x's last dim is {width}; the Triton norm kernel takes 1 to {MAX_WIDTH}"
        if len(tensors) == 3 and tensors[1].shape != main.shape:
            return f"z has shape {tuple(tensors[1].shape)}; it must equal x's {tuple(main.shape)}"
        if tuple(tensors[-1].shape) != (width,):
            return f"weight has shape {tuple(tensors[-1].shape)}; it must be ({width},)"
    elif kind == "swiglu":
        if tensors[1].shape != main.shape:
            return f"up has shape {tuple(tensors[1].shape)}; it must equal gate's {tuple(main.shape)}"
    else:
        x, cos, sin = tensors
        if x.dim() != 4 or x.shape[-1] % 2:
            return f"x has shape {tuple(x.shape)}; the rotation takes [B, T, H, D] with D even"
        half = (x.shape[0], x.shape[1], 1, x.shape[-1] // 2)
        for name, a in (("cos", cos), ("sin", sin)):
            fits = a.dim() == 4 and a.shape[-1] == half[-1]
            if not fits or any(n not in (1, want) for n, want in zip(a.shape, half)):
                return f"{name} has shape {tuple(a.shape)}; it must broadcast to {half}"
            if needs_grad(a):
                return f"{name} requires grad; the Triton rotation differentiates x only"
    return None


def _require(kind, *tensors):
    reason = unsupported(kind, *tensors)
    if reason is not None:
        raise ValueError(reason)
