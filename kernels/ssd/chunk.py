"""Mamba-2 SSD chunked scan in Triton: forward and backward, state in and out.

Per head h (Dao & Gu, "Transformers are SSMs", ICML 2024, section 6: the SSD algorithm), with the
scalar log-decay a_t = dt_t * A_h <= 0 and the state S_t [P, N]:

    S_t = exp(a_t) S_{t-1} + dt_t x_t B_t^T            y_t = S_t C_t + D_h x_t

The sequence is cut into chunks of Q steps. Inside chunk c, with cum_i = a_1 + ... + a_i (local):

    y_i   = sum_{j <= i} (C_i . B_j) exp(cum_i - cum_j) dt_j x_j    (intra-chunk: masked-decay matmuls)
          + exp(cum_i) S_in C_i                                     (the state entering the chunk)
    S_out = exp(cum_Q) S_in + sum_j exp(cum_Q - cum_j) dt_j x_j B_j^T   (state passing, sequential in c)

Forward launches: `_state_fwd_kernel` walks the chunks of one (batch, head, state tile) in order and
stores every S_in (and the final state); `_chunk_fwd_kernel` computes y for every chunk in parallel.
Backward launches: `_state_bwd_kernel` walks the chunks backwards carrying dS (the gradient of the
state leaving each chunk: dS_in(c) = exp(cum_Q) dS_out(c) + sum_i exp(cum_i) dy_i C_i^T), and
`_chunk_bwd_kernel` gives dx, dB, dC, d(dt), and per-chunk partial sums of dA and dD, in parallel over
chunks. The backward recomputes S_in (one more `_state_fwd_kernel` launch) instead of saving it.
The log-decay gradient is collected per position (d cum_i) and turned into d a_l = sum_{k >= l} d cum_k
(a reverse cumsum), then d dt_l += A d a_l and dA += sum_l dt_l d a_l. dB, dC are computed per head
in float32 and summed over the heads of a group afterwards.

Shapes: x [B, T, H, P], dt [B, T, H] (softplus'd, >= 0), A [H] (< 0), B, C [B, T, G, N] with H a
multiple of G, D [H] or None, initial / final state [B, H, P, N] float32. Any T: positions past T
are masked (dt = 0 there: no decay, no input). The kernel's chunk length Q (64 by default) is its
own choice: the function does not depend on the caller's chunk_size. Accumulation is float32; the
matmul operands are in the input dtype (3xTF32 dots for float32 inputs).
"""

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..custom_ops import absent, kernel_op, launch


# ----------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------

@triton.jit
def _chunk_decay(DT, A, b, h, c, T, H, Q: tl.constexpr):
    """dt and the local cumulative log-decay of chunk c: (offs_t, tmask, dt, cum, cum_Q), all (Q,)."""
    offs_t = c * Q + tl.arange(0, Q)
    tmask = offs_t < T
    dt = tl.load(DT + (b * T + offs_t) * H + h, mask=tmask, other=0.0).to(tl.float32)
    la = dt * tl.load(A + h).to(tl.float32)
    return offs_t, tmask, dt, tl.cumsum(la, axis=0), tl.sum(la, axis=0)


@triton.jit
def _state_fwd_kernel(X, DT, A, Bm, S0, States, Final, T, H, GS, NC, P, N,
                      HAS_S0: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                      PRECISION: tl.constexpr):
    """Grid (B*H, P tiles, N tiles). States[b, c, h] = state entering chunk c; Final = state after T."""
    pid_bh, pid_p, pid_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    G = H // GS
    g = h // GS
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_n = pid_n * BN + tl.arange(0, BN)
    pmask, nmask = offs_p < P, offs_n < N
    s_off = offs_p[:, None] * N + offs_n[None, :]
    smask = pmask[:, None] & nmask[None, :]
    if HAS_S0:
        s = tl.load(S0 + (b * H + h) * P * N + s_off, mask=smask, other=0.0).to(tl.float32)
    else:
        s = tl.zeros([BP, BN], dtype=tl.float32)
    for c in range(NC):
        tl.store(States + ((b * NC + c) * H + h) * P * N + s_off, s, mask=smask)
        offs_t, tmask, dt, cum, last = _chunk_decay(DT, A, b, h, c, T, H, Q)
        x = tl.load(X + ((b * T + offs_t[:, None]) * H + h) * P + offs_p[None, :],
                    mask=tmask[:, None] & pmask[None, :], other=0.0)  # (Q, BP)
        bm = tl.load(Bm + ((b * T + offs_t[:, None]) * G + g) * N + offs_n[None, :],
                     mask=tmask[:, None] & nmask[None, :], other=0.0)  # (Q, BN)
        xw = (x.to(tl.float32) * (dt * tl.exp(last - cum))[:, None]).to(x.dtype)
        s = s * tl.exp(last) + tl.dot(tl.trans(xw), bm, input_precision=PRECISION)
    tl.store(Final + (b * H + h) * P * N + s_off, s, mask=smask)


@triton.jit
def _chunk_fwd_kernel(X, DT, A, Bm, Cm, Dv, States, Y, T, H, GS, NC, P, N,
                      HAS_D: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                      PRECISION: tl.constexpr):
    """Grid (NC, B*H, P tiles). y of one chunk: intra-chunk masked-decay matmul + C . S_in."""
    c, pid_bh, pid_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    G = H // GS
    g = h // GS
    offs_t, tmask, dt, cum, last = _chunk_decay(DT, A, b, h, c, T, H, Q)
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pmask, nmask = offs_p < P, offs_n < N
    bc_off = ((b * T + offs_t[:, None]) * G + g) * N + offs_n[None, :]
    bc_mask = tmask[:, None] & nmask[None, :]
    cm = tl.load(Cm + bc_off, mask=bc_mask, other=0.0)  # (Q, BN)
    bm = tl.load(Bm + bc_off, mask=bc_mask, other=0.0)
    x_off = ((b * T + offs_t[:, None]) * H + h) * P + offs_p[None, :]
    x_mask = tmask[:, None] & pmask[None, :]
    x = tl.load(X + x_off, mask=x_mask, other=0.0)  # (Q, BP)

    idx = tl.arange(0, Q)
    causal = idx[:, None] >= idx[None, :]
    # exp of a masked -inf, never of cum_i - cum_j > 0 above the diagonal (it could overflow)
    decay = tl.exp(tl.where(causal, cum[:, None] - cum[None, :], float("-inf")))  # (Q, Q)
    scores = tl.dot(cm, tl.trans(bm), input_precision=PRECISION) * decay * dt[None, :]
    y = tl.dot(scores.to(x.dtype), x, input_precision=PRECISION)  # (Q, BP)

    s_in = tl.load(States + ((b * NC + c) * H + h) * P * N + offs_p[None, :] * N + offs_n[:, None],
                   mask=nmask[:, None] & pmask[None, :], other=0.0)  # (BN, BP): S_in^T
    y += tl.exp(cum)[:, None] * tl.dot(cm, s_in.to(cm.dtype), input_precision=PRECISION)
    if HAS_D:
        y += tl.load(Dv + h).to(tl.float32) * x.to(tl.float32)
    tl.store(Y + x_off, y.to(Y.dtype.element_ty), mask=x_mask)


@triton.jit
def _state_bwd_kernel(DY, DT, A, Cm, DFinal, DStates, DS0, T, H, GS, NC, P, N,
                      HAS_DFINAL: tl.constexpr, HAS_DS0: tl.constexpr, Q: tl.constexpr,
                      BP: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr):
    """Grid (B*H, P tiles, N tiles). DStates[b, c, h] = gradient of the state leaving chunk c."""
    pid_bh, pid_p, pid_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    G = H // GS
    g = h // GS
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_n = pid_n * BN + tl.arange(0, BN)
    pmask, nmask = offs_p < P, offs_n < N
    s_off = offs_p[:, None] * N + offs_n[None, :]
    smask = pmask[:, None] & nmask[None, :]
    if HAS_DFINAL:
        ds = tl.load(DFinal + (b * H + h) * P * N + s_off, mask=smask, other=0.0).to(tl.float32)
    else:
        ds = tl.zeros([BP, BN], dtype=tl.float32)
    for i in range(NC):
        c = NC - 1 - i
        tl.store(DStates + ((b * NC + c) * H + h) * P * N + s_off, ds, mask=smask)
        offs_t, tmask, dt, cum, last = _chunk_decay(DT, A, b, h, c, T, H, Q)
        dy = tl.load(DY + ((b * T + offs_t[:, None]) * H + h) * P + offs_p[None, :],
                     mask=tmask[:, None] & pmask[None, :], other=0.0)  # (Q, BP)
        cm = tl.load(Cm + ((b * T + offs_t[:, None]) * G + g) * N + offs_n[None, :],
                     mask=tmask[:, None] & nmask[None, :], other=0.0)  # (Q, BN)
        dyw = (dy.to(tl.float32) * tl.exp(cum)[:, None]).to(dy.dtype)
        ds = ds * tl.exp(last) + tl.dot(tl.trans(dyw), cm, input_precision=PRECISION)
    if HAS_DS0:
        tl.store(DS0 + (b * H + h) * P * N + s_off, ds, mask=smask)


@triton.jit
def _chunk_bwd_kernel(X, DT, A, Bm, Cm, Dv, States, DStates, DY, DX, DBh, DCh, DDT, DAp, DDp,
                      T, H, GS, NC, P, N,
                      HAS_D: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                      PRECISION: tl.constexpr):
    """Grid (NC, B*H). All gradients of one chunk of one head; loops over tiles of P."""
    c, pid_bh = tl.program_id(0), tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    G = H // GS
    g = h // GS
    offs_t, tmask, dt, cum, last = _chunk_decay(DT, A, b, h, c, T, H, Q)
    a = tl.load(A + h).to(tl.float32)
    offs_n = tl.arange(0, BN)
    nmask = offs_n < N
    bc_off = ((b * T + offs_t[:, None]) * G + g) * N + offs_n[None, :]
    bc_mask = tmask[:, None] & nmask[None, :]
    cm = tl.load(Cm + bc_off, mask=bc_mask, other=0.0)  # (Q, BN)
    bm = tl.load(Bm + bc_off, mask=bc_mask, other=0.0)
    if HAS_D:
        d_h = tl.load(Dv + h).to(tl.float32)
    else:
        d_h = 0.0

    idx = tl.arange(0, Q)
    causal = idx[:, None] >= idx[None, :]
    decay = tl.exp(tl.where(causal, cum[:, None] - cum[None, :], float("-inf")))  # L_ij, (Q, Q)
    cb = tl.dot(cm, tl.trans(bm), input_precision=PRECISION)  # C_i . B_j
    cbl_t = tl.trans(cb * decay).to(cm.dtype)  # (j, i)
    to_end = tl.exp(last - cum)  # exp(cum_Q - cum_j)
    from_start = tl.exp(cum)  # exp(cum_i)
    state_base = ((b * NC + c) * H + h) * P * N

    dyx = tl.zeros([Q, Q], dtype=tl.float32)  # dy_i . x_j
    xds = tl.zeros([Q, BN], dtype=tl.float32)  # x_j dS_out, (dB from the state leaving the chunk)
    dys = tl.zeros([Q, BN], dtype=tl.float32)  # dy_i S_in, (dC from the state entering the chunk)
    ddt = tl.zeros([Q], dtype=tl.float32)  # d dt_j through dt_j x_j (not through the decays)
    dss = tl.zeros([BN], dtype=tl.float32)  # <dS_out, S_in>
    dd = tl.zeros([Q], dtype=tl.float32)  # dy . x, for dD
    for p0 in range(0, P, BP):
        offs_p = p0 + tl.arange(0, BP)
        pmask = offs_p < P
        x_off = ((b * T + offs_t[:, None]) * H + h) * P + offs_p[None, :]
        x_mask = tmask[:, None] & pmask[None, :]
        x = tl.load(X + x_off, mask=x_mask, other=0.0)  # (Q, BP)
        dy = tl.load(DY + x_off, mask=x_mask, other=0.0)
        s_off = state_base + offs_p[:, None] * N + offs_n[None, :]
        s_mask = pmask[:, None] & nmask[None, :]
        s_in = tl.load(States + s_off, mask=s_mask, other=0.0)  # (BP, BN)
        ds = tl.load(DStates + s_off, mask=s_mask, other=0.0)

        dyx += tl.dot(dy, tl.trans(x), input_precision=PRECISION)
        xds += tl.dot(x, ds.to(x.dtype), input_precision=PRECISION)
        dys += tl.dot(dy, s_in.to(dy.dtype), input_precision=PRECISION)
        # gradient w.r.t. dt_j x_j: intra-chunk outputs + the state leaving the chunk
        dxt = tl.dot(cbl_t, dy, input_precision=PRECISION)
        dxt += to_end[:, None] * tl.dot(bm, tl.trans(ds).to(bm.dtype), input_precision=PRECISION)
        xf, dyf = x.to(tl.float32), dy.to(tl.float32)
        ddt += tl.sum(dxt * xf, axis=1)
        dss += tl.sum(ds * s_in, axis=0)
        dd += tl.sum(dyf * xf, axis=1)
        tl.store(DX + x_off, (dt[:, None] * dxt + d_h * dyf).to(DX.dtype.element_ty), mask=x_mask)

    m = dyx * decay * dt[None, :]  # M_ij = (dy_i . x_j) L_ij dt_j
    # d cum from the intra-chunk terms T_ij = (C_i . B_j) M_ij: +T_ij for cum_i, -T_ij for cum_j
    t_ij = cb * m
    dcum = tl.sum(t_ij, axis=1) - tl.sum(t_ij, axis=0)
    dcum += from_start * tl.sum(cm.to(tl.float32) * dys, axis=1)  # dy_i . exp(cum_i) S_in C_i
    u = dt * to_end * tl.sum(bm.to(tl.float32) * xds, axis=1)  # dt_j exp(cum_Q - cum_j) x_j^T dS B_j
    dcum -= u
    dcum += tl.where(idx == Q - 1, tl.exp(last) * tl.sum(dss, axis=0) + tl.sum(u, axis=0), 0.0)
    da = tl.sum(dcum, axis=0) - tl.cumsum(dcum, axis=0) + dcum  # d a_l = sum_{k >= l} d cum_k

    db = tl.dot(tl.trans(m).to(cm.dtype), cm, input_precision=PRECISION) + (dt * to_end)[:, None] * xds
    dc = tl.dot(m.to(bm.dtype), bm, input_precision=PRECISION) + from_start[:, None] * dys
    bch_off = ((b * T + offs_t[:, None]) * H + h) * N + offs_n[None, :]
    tl.store(DBh + bch_off, db, mask=bc_mask)
    tl.store(DCh + bch_off, dc, mask=bc_mask)
    tl.store(DDT + (b * T + offs_t) * H + h, ddt + a * da, mask=tmask)
    tl.store(DAp + (b * NC + c) * H + h, tl.sum(dt * da, axis=0))
    tl.store(DDp + (b * NC + c) * H + h, tl.sum(dd, axis=0))


# ----------------------------------------------------------------------------------------------------
# launchers, registered as the custom ops bmojo::ssd_chunk_fwd / _bwd (see kernels/custom_ops.py)
# ----------------------------------------------------------------------------------------------------

def _pow2(n, lo=16):
    return max(lo, triton.next_power_of_2(n))


def _precision(dtype):
    # fp32 inputs: 3xTF32 keeps float32 accuracy on the tensor cores; bf16/fp16 ignore this.
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _default_config(headdim, dstate):
    """Q: the kernel's chunk length; (BP, BN, warps) per launch kind."""
    bn_state = min(64, _pow2(dstate))
    bp_bwd = 32 if _pow2(dstate) > 64 else min(64, _pow2(headdim))
    return dict(Q=64, state=(min(64, _pow2(headdim)), bn_state, 4), fwd=(min(64, _pow2(headdim)), 4),
                bwd=(bp_bwd, 8))


def _flat_config(cfg):
    """{"Q", "state": (BP, BN, warps), "fwd": (BP, warps), "bwd": (BP, warps)} -> the 8 ints an op takes."""
    return [int(n) for n in (cfg["Q"], *cfg["state"], *cfg["fwd"], *cfg["bwd"])]


def _unflat_config(flat):
    q, sbp, sbn, swarps, fbp, fwarps, bbp, bwarps = flat
    return dict(Q=q, state=(sbp, sbn, swarps), fwd=(fbp, fwarps), bwd=(bbp, bwarps))


def _shape(x, B):
    """(batch, seqlen, heads, headdim, groups, dstate) as Python ints: tile sizes and constexprs must not be
    symbolic under torch.compile's dynamic shapes (int() specialises on the value seen)."""
    batch, seqlen, heads, headdim = (int(n) for n in x.shape)
    return batch, seqlen, heads, headdim, int(B.shape[2]), int(B.shape[3])


def _states_fwd(x, dt, A, B, initial_state, cfg):
    batch, seqlen, heads, headdim, groups, dstate = _shape(x, B)
    q = cfg["Q"]
    nc = triton.cdiv(seqlen, q)
    bp, bn, warps = cfg["state"]
    states = torch.empty(batch, nc, heads, headdim, dstate, device=x.device, dtype=torch.float32)
    final = torch.empty(batch, heads, headdim, dstate, device=x.device, dtype=torch.float32)
    grid = (batch * heads, triton.cdiv(headdim, bp), triton.cdiv(dstate, bn))
    s0 = initial_state if initial_state is not None else final  # any pointer when HAS_S0 is False
    launch(_state_fwd_kernel)[grid](
        x, dt, A, B, s0, states, final, seqlen, heads, heads // groups, nc, headdim, dstate,
        HAS_S0=initial_state is not None, Q=q, BP=bp, BN=bn, PRECISION=_precision(x.dtype), num_warps=warps)
    return states, final


def _fwd_fake(x, dt, A, B, C, D, initial_state, config):
    batch, seqlen, heads, headdim = x.shape
    return torch.empty_like(x), x.new_empty(batch, heads, headdim, B.shape[3], dtype=torch.float32)


@kernel_op("ssd_chunk_fwd", fake=_fwd_fake)
def _ssd_fwd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             initial_state: Optional[Tensor], config: List[int]) -> Tuple[Tensor, Tensor]:
    """y [B, T, H, P] in x's dtype and the final state [B, H, P, N] float32; inputs as `ssd_chunk_triton`
    hands them over (contiguous, B and C in x's dtype)."""
    batch, seqlen, heads, headdim, groups, dstate = _shape(x, B)
    cfg = _unflat_config(config)
    q = cfg["Q"]
    nc = triton.cdiv(seqlen, q)
    states, final = _states_fwd(x, dt, A, B, initial_state, cfg)
    y = torch.empty_like(x)
    bp, warps = cfg["fwd"]
    launch(_chunk_fwd_kernel)[(nc, batch * heads, triton.cdiv(headdim, bp))](
        x, dt, A, B, C, D if D is not None else A, states, y, seqlen, heads, heads // groups, nc, headdim,
        dstate, HAS_D=D is not None, Q=q, BP=bp, BN=_pow2(dstate), PRECISION=_precision(x.dtype),
        num_warps=warps)
    return y, final


def _bwd_fake(dy, dfinal, x, dt, A, B, C, D, initial_state, config):
    def f32(t):
        return absent(x) if t is None else torch.empty_like(t, dtype=torch.float32)

    return torch.empty_like(x), f32(dt), f32(A), f32(B), f32(C), f32(D), f32(initial_state)


@kernel_op("ssd_chunk_bwd", fake=_bwd_fake)
def _ssd_bwd(dy: Tensor, dfinal: Optional[Tensor], x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
             D: Optional[Tensor], initial_state: Optional[Tensor], config: List[int]
             ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx in x's dtype; d dt, dA, dB, dC, dD, d initial_state in float32), an empty tensor for D or the
    initial state when it is None. dy [B, T, H, P] in x's dtype; dfinal [B, H, P, N] float32 or None."""
    batch, seqlen, heads, headdim, groups, dstate = _shape(x, B)
    group_size = heads // groups
    cfg = _unflat_config(config)
    q = cfg["Q"]
    nc = triton.cdiv(seqlen, q)
    prec = _precision(x.dtype)
    states, _ = _states_fwd(x, dt, A, B, initial_state, cfg)  # recomputed, not saved
    bp, bn, warps = cfg["state"]
    dstates = torch.empty_like(states)
    ds0 = torch.empty_like(initial_state, dtype=torch.float32) if initial_state is not None else absent(x)
    grid = (batch * heads, triton.cdiv(headdim, bp), triton.cdiv(dstate, bn))
    # dstates stands in for the pointers a False HAS_DFINAL / HAS_DS0 never touches
    launch(_state_bwd_kernel)[grid](
        dy, dt, A, C, dfinal if dfinal is not None else dstates, dstates,
        ds0 if initial_state is not None else dstates, seqlen, heads, group_size, nc, headdim, dstate,
        HAS_DFINAL=dfinal is not None, HAS_DS0=initial_state is not None, Q=q, BP=bp, BN=bn,
        PRECISION=prec, num_warps=warps)

    dx = torch.empty_like(x)
    dbh = torch.empty(batch, seqlen, heads, dstate, device=x.device, dtype=torch.float32)
    dch = torch.empty_like(dbh)
    ddt = torch.empty(batch, seqlen, heads, device=x.device, dtype=torch.float32)
    da_part = torch.empty(batch, nc, heads, device=x.device, dtype=torch.float32)
    dd_part = torch.empty_like(da_part)
    bp, warps = cfg["bwd"]
    launch(_chunk_bwd_kernel)[(nc, batch * heads)](
        x, dt, A, B, C, D if D is not None else A, states, dstates, dy, dx, dbh, dch, ddt, da_part, dd_part,
        seqlen, heads, group_size, nc, headdim, dstate,
        HAS_D=D is not None, Q=q, BP=bp, BN=_pow2(dstate), PRECISION=prec, num_warps=warps)
    # dB, dC per head -> per group: (B, T, H, N) -> (B, T, G, H // G, N) summed over the heads of a group
    db = dbh.view(batch, seqlen, groups, group_size, dstate).sum(3)
    dc = dch.view(batch, seqlen, groups, group_size, dstate).sum(3)
    da = da_part.sum((0, 1))
    dd = dd_part.sum((0, 1)) if D is not None else absent(x)
    return dx, ddt, da, db, dc, dd, ds0


# ----------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------

def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, initial_state, config = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, initial_state)
    ctx.config = config
    ctx.set_materialize_grads(False)  # no final-state gradient unless the caller used the final state


def _backward(ctx, dy, dfinal):
    x, dt, A, B, C, D, initial_state = ctx.saved_tensors
    dy = torch.zeros_like(x) if dy is None else dy.to(x.dtype).contiguous()
    dfinal = None if dfinal is None else dfinal.float().contiguous()
    dx, ddt, da, db, dc, dd, ds0 = _ssd_bwd(dy, dfinal, x, dt, A, B, C, D, initial_state, ctx.config)
    return (dx, ddt.to(dt.dtype), da.to(A.dtype), db.to(B.dtype), dc.to(C.dtype),
            None if D is None else dd.to(D.dtype),
            None if initial_state is None else ds0.to(initial_state.dtype), None)


_ssd_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------
# public
# ----------------------------------------------------------------------------------------------------

def ssd_chunk_triton(x, dt, A, B, C, chunk_size=None, D=None, initial_state=None, output_final_state=False,
                     _config=None):
    """Mamba-2 SSD scan (Triton, chunked). Same function and signature as `naive.ssd_chunked`.

    Args:
        x: [B, T, H, P] inputs (float32, float16 or bfloat16), 1 <= P <= 256.
        dt: [B, T, H] step sizes after softplus (>= 0; 0 on padding), any float dtype.
        A: [H] decay rates (< 0).
        B, C: [B, T, G, N] input / output projections, H a multiple of G, 1 <= N <= 256; cast to x's dtype.
        chunk_size: accepted for signature compatibility and ignored: the result does not depend on it,
            and the kernel uses its own chunk length (64; `_config["Q"]` overrides it for tests).
        D: [H] skip connection, or None.
        initial_state: [B, H, P, N] state before the first step, or None (zeros).
        output_final_state: also return the state after step T.
        _config: private override of the kernel's chunk length and tiles (see `_default_config`).

    Returns:
        y: [B, T, H, P] in x's dtype (float32 accumulation).
        final_state: [B, H, P, N] float32, or None unless output_final_state.
        Differentiable in x, dt, A, B, C, D and initial_state.
    """
    if x.dim() != 4 or dt.dim() != 3 or A.dim() != 1 or B.dim() != 4 or C.dim() != 4:
        raise ValueError(f"expected x [B, T, H, P], dt [B, T, H], A [H], B/C [B, T, G, N]; got x "
                         f"{tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, "
                         f"C {tuple(C.shape)}")
    batch, seqlen, heads, headdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    if tuple(dt.shape) != (batch, seqlen, heads) or tuple(A.shape) != (heads,):
        raise ValueError(f"dt must be [B, T, H] = {(batch, seqlen, heads)} and A [H] = ({heads},); got dt "
                         f"{tuple(dt.shape)}, A {tuple(A.shape)}")
    if B.shape != C.shape or B.shape[:2] != x.shape[:2] or heads % groups:
        raise ValueError(f"B and C must both be [B, T, G, N] with G dividing H={heads}; got "
                         f"{tuple(B.shape)} and {tuple(C.shape)}")
    if D is not None and tuple(D.shape) != (heads,):
        raise ValueError(f"D must be [H] = ({heads},) or None; got {tuple(D.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, heads, headdim, dstate):
        raise ValueError(f"initial_state must be [B, H, P, N] = {(batch, heads, headdim, dstate)}; got "
                         f"{tuple(initial_state.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"x dtype {x.dtype} not supported by the Triton SSD kernel: float32, float16 or "
                         "bfloat16")
    if not (1 <= headdim <= 256 and 1 <= dstate <= 256) or seqlen < 1:
        raise ValueError(f"the Triton SSD kernel needs 1 <= P, N <= 256 and T >= 1; got P={headdim}, "
                         f"N={dstate}, T={seqlen}")
    cfg = _flat_config({**_default_config(headdim, dstate), **(_config or {})})
    y, final = _ssd_fwd(x.contiguous(), dt.contiguous(), A.contiguous(), B.to(x.dtype).contiguous(),
                        C.to(x.dtype).contiguous(), None if D is None else D.contiguous(),
                        None if initial_state is None else initial_state.contiguous(), cfg)
    return y, (final if output_final_state else None)
