"""Fused B'MOJO memory attention in Triton: forward and backward, one online softmax.

Query t (0-based) attends, in ONE softmax with scale 1/sqrt(D) (see `naive.py`, the definition):

    window   k_s,  v_s    t - w < s <= t              scored with q_rot[t]
    fading   kf_s, vf_s   t - w - n_f < s <= t - w    scored with q_rot[t]   (s >= 0)
    eidetic  ek_m, ev_m   m < M, valid[c, m]          scored with q_raw[t]   (c = t // w)

    o_t = sum_j softmax_j(l) v_j,   l_j = <q, k_j> / sqrt(D) over the union of the three sets.

The algorithm is FlashAttention-2 (Dao, "FlashAttention-2: Faster Attention with Better
Parallelism and Work Partitioning", 2023): each program owns a block of queries of one head and
walks, in turn, the key blocks of the window band, the key blocks of the fading band and the
eidetic set of every chunk its queries fall in, keeping a running max and sum (base-2 exponent).
The forward saves lse_t = log2 sum_j 2^(l_j log2 e); the backward recomputes P from it:

    dV_j += P_tj dO_t          dP_tj = <dO_t, V_j>        dS_tj = P_tj (dP_tj - <dO_t, O_t>)
    dQ_t += dS_tj K_j / sqrt(D)   (dQraw_t for eidetic keys)     dK_j += dS_tj Q_t / sqrt(D)

Backward launches: dq / dq_raw over query blocks (like the forward); dk, dv over blocks of key
positions, once for the window and once for the fading band (each program sums the G query heads of
its KV head, so no atomics); d(eidetic k, v) over (chunk, block of the store).

Shapes: q_rot, q_raw [B, T, H, D]; k, v, fading k/v [B, T, Hkv, D] (H a multiple of Hkv);
eidetic keys/values [B, NC, M, Hkv, D] with NC >= ceil(T / w); eidetic_valid [B, NC, M] bool.
Work per query is O(w + n_f + M) (plus one block of each band), not O(T).
"""

import math
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..custom_ops import absent, kernel_op, launch, present

_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------

@triton.jit
def _fwd_tile(acc, m_i, l_i, q, k, v, valid, qk_scale, PRECISION: tl.constexpr):
    """One key tile of the online softmax. q [BM, BD], k/v [BN, BD], valid [BM, BN]."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BM, BN), log2 units
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _fwd_kernel(Q, QR, K, V, FK, FV, EK, EV, EVALID, Out, LSE,
                s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_eb, s_ec, s_em, s_eh, s_vb, s_vc,
                T, M, W, NF, G, H, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
                HAS_FADING: tl.constexpr, HAS_EIDETIC: tl.constexpr, PRECISION: tl.constexpr):
    # Inductor passes Python floats to user kernels as fp64 scalars; fp64 * fp32 would turn the
    # fp32 accumulators into fp64 (a Triton compile error in a loop), so fix the type here
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    kvh = h // G
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    qmask = (offs_m < T)[:, None] & dmask[None, :]
    q_off = b * s_qb + offs_m[:, None] * s_qt + h * s_qh + offs_d[None, :]
    q = tl.load(Q + q_off, mask=qmask, other=0.0)  # (BM, BD)
    kv_base = b * s_kb + kvh * s_kh

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # running max starts finite (not -inf): a row that has met only masked keys stays NaN-free
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # window band: t - W < s <= t
    lo = tl.maximum(m0 - W + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum(m0 + BLOCK_M, T)
    for n0 in range(lo, hi, BLOCK_N):
        s_idx = n0 + offs_n
        kmask = (s_idx < T)[:, None] & dmask[None, :]
        kv_off = kv_base + s_idx[:, None] * s_kt + offs_d[None, :]
        k = tl.load(K + kv_off, mask=kmask, other=0.0)
        v = tl.load(V + kv_off, mask=kmask, other=0.0)
        valid = (s_idx[None, :] <= offs_m[:, None]) & (s_idx[None, :] > offs_m[:, None] - W) \
            & (s_idx[None, :] < T)
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, k, v, valid, qk_scale, PRECISION)

    # fading band: t - W - NF < s <= t - W
    if HAS_FADING:
        lo = tl.maximum(m0 - W - NF + 1, 0) // BLOCK_N * BLOCK_N
        hi = tl.minimum(m0 + BLOCK_M - W, T)
        for n0 in range(lo, hi, BLOCK_N):
            s_idx = n0 + offs_n
            kmask = (s_idx < T)[:, None] & dmask[None, :]
            kv_off = kv_base + s_idx[:, None] * s_kt + offs_d[None, :]
            k = tl.load(FK + kv_off, mask=kmask, other=0.0)
            v = tl.load(FV + kv_off, mask=kmask, other=0.0)
            valid = (s_idx[None, :] <= offs_m[:, None] - W) & (s_idx[None, :] > offs_m[:, None] - W - NF) \
                & (s_idx[None, :] < T)
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, k, v, valid, qk_scale, PRECISION)

    # eidetic set of each chunk c = t // W met by this block, scored with the un-rotated query
    if HAS_EIDETIC:
        qr = tl.load(QR + q_off, mask=qmask, other=0.0)
        offs_e = tl.arange(0, BLOCK_E)
        c_lo = m0 // W
        c_hi = (tl.minimum(m0 + BLOCK_M, T) - 1) // W
        for c in range(c_lo, c_hi + 1):
            row_in_c = (offs_m // W) == c
            for e0 in range(0, M, BLOCK_E):
                e_idx = e0 + offs_e
                emask = e_idx < M
                e_off = b * s_eb + c * s_ec + e_idx[:, None] * s_em + kvh * s_eh + offs_d[None, :]
                k = tl.load(EK + e_off, mask=emask[:, None] & dmask[None, :], other=0.0)
                v = tl.load(EV + e_off, mask=emask[:, None] & dmask[None, :], other=0.0)
                ok = tl.load(EVALID + b * s_vb + c * s_vc + e_idx, mask=emask, other=0) != 0
                valid = row_in_c[:, None] & ok[None, :]
                acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, qr, k, v, valid, qk_scale, PRECISION)

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]
    tl.store(Out + q_off, o.to(Out.dtype.element_ty), mask=qmask)
    tl.store(LSE + pid_bh * T + offs_m, m_i + tl.math.log2(l_safe), mask=offs_m < T)


@triton.jit
def _dq_tile(dq, q, do, lse, delta, k, v, valid, qk_scale, PRECISION: tl.constexpr):
    """dq += dS k for one key tile (unscaled: the caller multiplies by 1/sqrt(D) once)."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    p = tl.where(valid, tl.math.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)


@triton.jit
def _bwd_dq_kernel(Q, QR, K, V, FK, FV, EK, EV, EVALID, DO, LSE, DELTA, DQ, DQR,
                   s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_eb, s_ec, s_em, s_eh, s_vb, s_vc,
                   T, M, W, NF, G, H, qk_scale, sm_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
                   HAS_FADING: tl.constexpr, HAS_EIDETIC: tl.constexpr, PRECISION: tl.constexpr):
    # Inductor passes Python floats to user kernels as fp64 scalars; fp64 * fp32 would turn the
    # fp32 accumulators into fp64 (a Triton compile error in a loop), so fix the type here
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    kvh = h // G
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    rmask = offs_m < T
    qmask = rmask[:, None] & dmask[None, :]
    q_off = b * s_qb + offs_m[:, None] * s_qt + h * s_qh + offs_d[None, :]
    q = tl.load(Q + q_off, mask=qmask, other=0.0)
    do = tl.load(DO + q_off, mask=qmask, other=0.0)  # dO shares q's layout (made so by the wrapper)
    lse = tl.load(LSE + pid_bh * T + offs_m, mask=rmask, other=0.0)
    delta = tl.load(DELTA + pid_bh * T + offs_m, mask=rmask, other=0.0)
    kv_base = b * s_kb + kvh * s_kh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    lo = tl.maximum(m0 - W + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum(m0 + BLOCK_M, T)
    for n0 in range(lo, hi, BLOCK_N):
        s_idx = n0 + offs_n
        kmask = (s_idx < T)[:, None] & dmask[None, :]
        kv_off = kv_base + s_idx[:, None] * s_kt + offs_d[None, :]
        k = tl.load(K + kv_off, mask=kmask, other=0.0)
        v = tl.load(V + kv_off, mask=kmask, other=0.0)
        valid = (s_idx[None, :] <= offs_m[:, None]) & (s_idx[None, :] > offs_m[:, None] - W) \
            & (s_idx[None, :] < T) & rmask[:, None]
        dq = _dq_tile(dq, q, do, lse, delta, k, v, valid, qk_scale, PRECISION)

    if HAS_FADING:
        lo = tl.maximum(m0 - W - NF + 1, 0) // BLOCK_N * BLOCK_N
        hi = tl.minimum(m0 + BLOCK_M - W, T)
        for n0 in range(lo, hi, BLOCK_N):
            s_idx = n0 + offs_n
            kmask = (s_idx < T)[:, None] & dmask[None, :]
            kv_off = kv_base + s_idx[:, None] * s_kt + offs_d[None, :]
            k = tl.load(FK + kv_off, mask=kmask, other=0.0)
            v = tl.load(FV + kv_off, mask=kmask, other=0.0)
            valid = (s_idx[None, :] <= offs_m[:, None] - W) & (s_idx[None, :] > offs_m[:, None] - W - NF) \
                & (s_idx[None, :] < T) & rmask[:, None]
            dq = _dq_tile(dq, q, do, lse, delta, k, v, valid, qk_scale, PRECISION)
    tl.store(DQ + q_off, (dq * sm_scale).to(DQ.dtype.element_ty), mask=qmask)

    if HAS_EIDETIC:
        qr = tl.load(QR + q_off, mask=qmask, other=0.0)
        dqr = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        offs_e = tl.arange(0, BLOCK_E)
        c_lo = m0 // W
        c_hi = (tl.minimum(m0 + BLOCK_M, T) - 1) // W
        for c in range(c_lo, c_hi + 1):
            row_in_c = ((offs_m // W) == c) & rmask
            for e0 in range(0, M, BLOCK_E):
                e_idx = e0 + offs_e
                emask = e_idx < M
                e_off = b * s_eb + c * s_ec + e_idx[:, None] * s_em + kvh * s_eh + offs_d[None, :]
                k = tl.load(EK + e_off, mask=emask[:, None] & dmask[None, :], other=0.0)
                v = tl.load(EV + e_off, mask=emask[:, None] & dmask[None, :], other=0.0)
                ok = tl.load(EVALID + b * s_vb + c * s_vc + e_idx, mask=emask, other=0) != 0
                valid = row_in_c[:, None] & ok[None, :]
                dqr = _dq_tile(dqr, qr, do, lse, delta, k, v, valid, qk_scale, PRECISION)
        tl.store(DQR + q_off, (dqr * sm_scale).to(DQR.dtype.element_ty), mask=qmask)


@triton.jit
def _dkv_tile(dk, dv, k, v, q, do, lse, delta, valid, qk_scale, PRECISION: tl.constexpr):
    """Transposed tile: keys on rows. k/v [BN, BD], q/do [BM, BD], valid [BN, BM]."""
    st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BN, BM)
    pt = tl.where(valid, tl.math.exp2(st - lse[None, :]), 0.0)
    dv = dv + tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
    dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    dst = pt * (dpt - delta[None, :])
    dk = dk + tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _bwd_dkv_band_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                         s_qb, s_qt, s_qh, s_kb, s_kt, s_kh,
                         T, OFF, WIDTH, G, H, HKV, qk_scale, sm_scale,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """One program: key positions [n0, n0 + BN) of one KV head, for one band. Key s is seen by the
    queries s + OFF <= t < s + OFF + WIDTH: the window (OFF 0, WIDTH w) or the fading band (w, n_f)."""
    # Inductor passes Python floats to user kernels as fp64 scalars; fp64 * fp32 would turn the
    # fp32 accumulators into fp64 (a Triton compile error in a loop), so fix the type here
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    kvh = pid_bh % HKV
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    kmask = (offs_n < T)[:, None] & dmask[None, :]
    kv_off = b * s_kb + offs_n[:, None] * s_kt + kvh * s_kh + offs_d[None, :]
    k = tl.load(K + kv_off, mask=kmask, other=0.0)
    v = tl.load(V + kv_off, mask=kmask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo = (n0 + OFF) // BLOCK_M * BLOCK_M
    hi = tl.minimum(n0 + BLOCK_N - 1 + OFF + WIDTH, T)
    for g in range(0, G):  # the G query heads that share this KV head: summed here, no atomics
        h = kvh * G + g
        q_base = b * s_qb + h * s_qh
        r_base = (b * H + h) * T
        for m0 in range(lo, hi, BLOCK_M):
            t_idx = m0 + offs_m
            rmask = t_idx < T
            q_off = q_base + t_idx[:, None] * s_qt + offs_d[None, :]
            q = tl.load(Q + q_off, mask=rmask[:, None] & dmask[None, :], other=0.0)
            do = tl.load(DO + q_off, mask=rmask[:, None] & dmask[None, :], other=0.0)
            lse = tl.load(LSE + r_base + t_idx, mask=rmask, other=0.0)
            delta = tl.load(DELTA + r_base + t_idx, mask=rmask, other=0.0)
            lag = t_idx[None, :] - offs_n[:, None]  # (BN, BM): query position minus key position
            valid = (lag >= OFF) & (lag < OFF + WIDTH) & rmask[None, :] & (offs_n < T)[:, None]
            dk, dv = _dkv_tile(dk, dv, k, v, q, do, lse, delta, valid, qk_scale, PRECISION)
    tl.store(DK + kv_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=kmask)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kmask)


@triton.jit
def _bwd_dkv_eidetic_kernel(QR, EK, EV, EVALID, DO, LSE, DELTA, DEK, DEV,
                            s_qb, s_qt, s_qh, s_eb, s_ec, s_em, s_eh, s_vb, s_vc,
                            T, M, W, G, H, HKV, NC, qk_scale, sm_scale,
                            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, PRECISION: tl.constexpr):
    """One program: store entries [e0, e0 + BE) of chunk c, one KV head; queries of chunk c."""
    # Inductor passes Python floats to user kernels as fp64 scalars; fp64 * fp32 would turn the
    # fp32 accumulators into fp64 (a Triton compile error in a loop), so fix the type here
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid_e = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = pid_c // (NC * HKV)
    c = (pid_c // HKV) % NC
    kvh = pid_c % HKV
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    emask = offs_e < M
    e_off = b * s_eb + c * s_ec + offs_e[:, None] * s_em + kvh * s_eh + offs_d[None, :]
    k = tl.load(EK + e_off, mask=emask[:, None] & dmask[None, :], other=0.0)
    v = tl.load(EV + e_off, mask=emask[:, None] & dmask[None, :], other=0.0)
    ok = (tl.load(EVALID + b * s_vb + c * s_vc + offs_e, mask=emask, other=0) != 0) & emask
    dk = tl.zeros([BLOCK_E, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_E, BLOCK_D], dtype=tl.float32)
    lo = (c * W) // BLOCK_M * BLOCK_M
    hi = tl.minimum((c + 1) * W, T)
    for g in range(0, G):
        h = kvh * G + g
        q_base = b * s_qb + h * s_qh
        r_base = (b * H + h) * T
        for m0 in range(lo, hi, BLOCK_M):
            t_idx = m0 + offs_m
            rmask = (t_idx < T) & ((t_idx // W) == c)
            q_off = q_base + t_idx[:, None] * s_qt + offs_d[None, :]
            q = tl.load(QR + q_off, mask=rmask[:, None] & dmask[None, :], other=0.0)
            do = tl.load(DO + q_off, mask=rmask[:, None] & dmask[None, :], other=0.0)
            lse = tl.load(LSE + r_base + t_idx, mask=rmask, other=0.0)
            delta = tl.load(DELTA + r_base + t_idx, mask=rmask, other=0.0)
            valid = ok[:, None] & rmask[None, :]
            dk, dv = _dkv_tile(dk, dv, k, v, q, do, lse, delta, valid, qk_scale, PRECISION)
    smask = emask[:, None] & dmask[None, :]
    tl.store(DEK + e_off, (dk * sm_scale).to(DEK.dtype.element_ty), mask=smask)
    tl.store(DEV + e_off, dv.to(DEV.dtype.element_ty), mask=smask)


# ----------------------------------------------------------------------------------------------------
# launchers, registered as the custom ops bmojo::memory_attention_fwd / _bwd (see kernels/custom_ops.py)
# ----------------------------------------------------------------------------------------------------

def _precision(dtype):
    # fp32 inputs: 3xTF32 keeps float32 accuracy on the tensor cores; bf16/fp16 ignore this.
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _block_d(dim):
    return max(16, triton.next_power_of_2(dim))


def _block_e(num_eidetic):
    return max(16, min(64, triton.next_power_of_2(max(num_eidetic, 1))))


def _default_config(dim, dtype, interpret):
    """Tile sizes and launch settings. On CPU (interpreter) the smallest tiles keep tests fast."""
    if interpret:
        return dict(fwd=(16, 16, 1, 1), dq=(16, 16, 1, 1), dkv=(16, 16, 1, 1))
    big = dim > 64 or dtype == torch.float32
    # H100, bf16, D=64, w=n_f=512, M=64, T=8192: fwd (64, 64, 4, 3) 1.11 ms vs (128, 64, 8, 3) 1.64 ms;
    # fwd+bwd with dq/dkv (64, 64, 4, 3) 4.83 ms vs (128, 64, 8, 2) 7.91 ms (benchmarks/results/)
    if dim > 64 and dtype == torch.float32:  # (64, 32, 4, 2) asked 256 KB of shared memory in dq on H100
        return dict(fwd=(32, 32, 4, 1), dq=(32, 32, 4, 1), dkv=(32, 32, 4, 1))
    if big:  # float32 or D = 128 tiles: smaller, to stay within shared memory and registers
        return dict(fwd=(64, 32, 4, 2), dq=(64, 32, 4, 2), dkv=(32, 32, 4, 2))
    return dict(fwd=(64, 64, 4, 3), dq=(64, 64, 4, 3), dkv=(64, 64, 4, 3))


_LAUNCHES = ("fwd", "dq", "dkv")


def _flat_config(config):
    """{"fwd"|"dq"|"dkv": (BM, BN, warps, stages)} -> the 12 ints an op takes."""
    return [int(n) for key in _LAUNCHES for n in config[key]]


def _tiles(config, key):
    """(BM, BN, warps, stages) of one launch kind, from the flat list."""
    i = 4 * _LAUNCHES.index(key)
    return tuple(config[i:i + 4])


def _strides_q(q):
    return q.stride(0), q.stride(1), q.stride(2)


def _strides_e(ek, ev_valid):
    if ek is None:
        return (0, 0, 0, 0, 0, 0)
    return ek.stride(0), ek.stride(1), ek.stride(2), ek.stride(3), ev_valid.stride(0), ev_valid.stride(1)


def _shape(q, k, ek):
    """(batch, seqlen, heads, kv heads, dim, M) as Python ints: constexprs and tile choices must not be
    symbolic under torch.compile's dynamic shapes (int() specialises on the value seen)."""
    batch, seqlen, heads, dim = (int(n) for n in q.shape)
    return batch, seqlen, heads, int(k.shape[2]), dim, 0 if ek is None else int(ek.shape[2])


def _fwd_fake(q, qr, k, v, fk, fv, ek, ev, evalid, window, n_f, config):
    batch, seqlen, heads, _ = q.shape
    return torch.empty_like(q), q.new_empty(batch, heads, seqlen, dtype=torch.float32)


@kernel_op("memory_attention_fwd", fake=_fwd_fake)
def _memory_attention_fwd(q: Tensor, qr: Optional[Tensor], k: Tensor, v: Tensor, fk: Optional[Tensor],
                          fv: Optional[Tensor], ek: Optional[Tensor], ev: Optional[Tensor],
                          evalid: Optional[Tensor], window: int, n_f: int, config: List[int]
                          ) -> Tuple[Tensor, Tensor]:
    """o [B, T, H, D] and lse [B, H, T] (float32, base 2). The fading band is read iff fk is given,
    the eidetic set iff ek is (then qr and evalid are given too); inputs as `memory_attention_triton`
    hands them over (contiguous, one dtype)."""
    batch, seqlen, heads, kv_heads, dim, m = _shape(q, k, ek)
    has_fading, has_eidetic = fk is not None, ek is not None
    o = torch.empty_like(q)
    lse = torch.empty(batch, heads, seqlen, device=q.device, dtype=torch.float32)
    bm, bn, warps, stages = _tiles(config, "fwd")
    grid = (triton.cdiv(seqlen, bm), batch * heads)
    dummy = k  # stands in for the pointers a False HAS_FADING / HAS_EIDETIC never reads
    launch(_fwd_kernel)[grid](
        q, qr if has_eidetic else q, k, v, fk if has_fading else dummy, fv if has_fading else dummy,
        ek if has_eidetic else dummy, ev if has_eidetic else dummy, evalid if has_eidetic else dummy,
        o, lse, *_strides_q(q), *_strides_q(k), *_strides_e(ek, evalid),
        seqlen, m, window, n_f, heads // kv_heads, heads, _LOG2E / math.sqrt(dim),
        HEAD_DIM=dim, BLOCK_D=_block_d(dim), BLOCK_M=bm, BLOCK_N=bn, BLOCK_E=_block_e(m),
        HAS_FADING=has_fading, HAS_EIDETIC=has_eidetic, PRECISION=_precision(q.dtype),
        num_warps=warps, num_stages=stages)
    return o, lse


def _bwd_fake(do, q, qr, k, v, fk, fv, ek, ev, evalid, lse, delta, window, n_f, config):
    return tuple(absent(q) if t is None else torch.empty_like(t) for t in (q, qr, k, v, fk, fv, ek, ev))


@kernel_op("memory_attention_bwd", fake=_bwd_fake)
def _memory_attention_bwd(do: Tensor, q: Tensor, qr: Optional[Tensor], k: Tensor, v: Tensor,
                          fk: Optional[Tensor], fv: Optional[Tensor], ek: Optional[Tensor],
                          ev: Optional[Tensor], evalid: Optional[Tensor], lse: Tensor, delta: Tensor,
                          window: int, n_f: int, config: List[int]
                          ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of q, qr, k, v, fk, fv, ek, ev (an empty tensor for an input that is None).
    dO shares q's layout; delta [B, H, T] = <dO_t, O_t> in float32."""
    batch, seqlen, heads, kv_heads, dim, m = _shape(q, k, ek)
    has_fading, has_eidetic = fk is not None, ek is not None
    group = heads // kv_heads
    sm_scale = 1.0 / math.sqrt(dim)
    qk_scale = sm_scale * _LOG2E
    common = dict(HEAD_DIM=dim, BLOCK_D=_block_d(dim), PRECISION=_precision(q.dtype))
    dq = torch.empty_like(q)
    dqr = torch.empty_like(q) if has_eidetic else absent(q)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dfk = torch.empty_like(fk) if has_fading else absent(q)
    dfv = torch.empty_like(fv) if has_fading else absent(q)
    dummy = k
    e_strides = _strides_e(ek, evalid)

    bm, bn, warps, stages = _tiles(config, "dq")
    launch(_bwd_dq_kernel)[(triton.cdiv(seqlen, bm), batch * heads)](
        q, qr if has_eidetic else q, k, v, fk if has_fading else dummy, fv if has_fading else dummy,
        ek if has_eidetic else dummy, ev if has_eidetic else dummy, evalid if has_eidetic else dummy,
        do, lse, delta, dq, dqr if has_eidetic else dq,
        *_strides_q(q), *_strides_q(k), *e_strides,
        seqlen, m, window, n_f, group, heads, qk_scale, sm_scale,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_E=_block_e(m), HAS_FADING=has_fading, HAS_EIDETIC=has_eidetic,
        num_warps=warps, num_stages=stages, **common)

    bm, bn, warps, stages = _tiles(config, "dkv")
    bands = [(k, v, dk, dv, 0, window)] + ([(fk, fv, dfk, dfv, window, n_f)] if has_fading else [])
    for kk, vv, dkk, dvv, off, width in bands:  # one launch per band: two accumulators per program
        launch(_bwd_dkv_band_kernel)[(triton.cdiv(seqlen, bn), batch * kv_heads)](
            q, kk, vv, do, lse, delta, dkk, dvv, *_strides_q(q), *_strides_q(k),
            seqlen, off, width, group, heads, kv_heads, qk_scale, sm_scale,
            BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **common)

    dek, dev = absent(q), absent(q)
    if has_eidetic:
        nc = int(ek.shape[1])
        dek, dev = torch.empty_like(ek), torch.empty_like(ev)
        be = _block_e(m)
        launch(_bwd_dkv_eidetic_kernel)[(triton.cdiv(m, be), batch * nc * kv_heads)](
            qr, ek, ev, evalid, do, lse, delta, dek, dev,
            *_strides_q(q), *e_strides,
            seqlen, m, window, group, heads, kv_heads, nc, qk_scale, sm_scale,
            BLOCK_M=bm, BLOCK_E=be, num_warps=warps, num_stages=stages, **common)
    return dq, dqr, dk, dv, dfk, dfv, dek, dev


# ----------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------

def _setup_context(ctx, inputs, output):
    q, qr, k, v, fk, fv, ek, ev, evalid, window, n_f, config = inputs
    o, lse = output
    ctx.save_for_backward(q, qr, k, v, fk, fv, ek, ev, evalid, o, lse)
    ctx.window, ctx.n_f, ctx.config = window, n_f, config
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, _dlse):
    q, qr, k, v, fk, fv, ek, ev, evalid, o, lse = ctx.saved_tensors
    do = do.contiguous()  # the kernels index dO with q's (contiguous) strides
    # delta_t = <dO_t, O_t>: the softmax's row correction, (B, H, T) like lse; plain torch, so that
    # Inductor can fuse it with whatever produced dO
    delta = (do.float() * o.float()).sum(-1).transpose(1, 2).contiguous()
    grads = _memory_attention_bwd(do, q, qr, k, v, fk, fv, ek, ev, evalid, lse, delta,
                                  ctx.window, ctx.n_f, ctx.config)
    dq, dqr, dk, dv, dfk, dfv, dek, dev = grads
    return (dq, present(dqr, qr), dk, dv, present(dfk, fk), present(dfv, fv), present(dek, ek),
            present(dev, ev), None, None, None, None)


_memory_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------
# public
# ----------------------------------------------------------------------------------------------------

def memory_attention_triton(q_rot, k, v, window, q_raw=None, fading_keys=None, fading_values=None,
                            fading_tokens=0, eidetic_keys=None, eidetic_values=None, eidetic_valid=None,
                            _config=None):
    """Fused B'MOJO memory attention (window band + fading band + per-chunk eidetic set, one softmax).

    Same function and signature as `memory_attention_naive` / `memory_attention_chunked`.

    Args:
        q_rot: [B, T, H, D] queries with RoPE, scored against the window and fading keys.
        k, v: [B, T, Hkv, D] window keys (with RoPE) and values; H must be a multiple of Hkv.
        window: w >= 1, or None for plain causal attention (computed as a window of T).
        q_raw: [B, T, H, D] un-rotated queries, scored against the eidetic keys; needed when M > 0.
        fading_keys, fading_values: [B, T, Hkv, D] or None. Used when fading_tokens > 0.
        fading_tokens: n_f >= 0, width of the fading band (t - w - n_f, t - w].
        eidetic_keys, eidetic_values: [B, NC, M, Hkv, D] with NC >= ceil(T / w), or None (M = 0 allowed).
        eidetic_valid: [B, NC, M] bool, or None (all valid).
        _config: private tile-size override {"fwd"|"dq"|"dkv": (BM, BN, warps, stages)} for benchmarks.

    Returns:
        o: [B, T, H, D] in q_rot's dtype (float32 accumulation). Differentiable in every tensor input.
    """
    if q_rot.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q_rot, k, v must be [B, T, H, D]; got {tuple(q_rot.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    batch, seqlen, heads, dim = q_rot.shape
    kv_heads = k.shape[2]
    if k.shape != v.shape or k.shape[:2] != q_rot.shape[:2] or k.shape[3] != dim:
        raise ValueError(f"k and v must be [B, T, Hkv, D] = [{batch}, {seqlen}, Hkv, {dim}]; got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    if heads % kv_heads:
        raise ValueError(f"num heads H={heads} must be a multiple of kv heads Hkv={kv_heads}")
    if not 16 <= dim <= 128:
        raise ValueError(f"head dim D={dim} not supported by the Triton kernel: 16 <= D <= 128 allowed")
    if q_rot.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"q_rot dtype {q_rot.dtype} not supported: float32, float16 or bfloat16")
    if fading_tokens < 0:
        raise ValueError(f"fading_tokens must be >= 0; got {fading_tokens}")
    dtype = q_rot.dtype
    if window is None:  # plain causal: a window as long as the sequence, nothing else
        window, fading_tokens, fading_keys, eidetic_keys = max(seqlen, 1), 0, None, None
    if window < 1:
        raise ValueError(f"window must be >= 1 or None; got {window}")
    # contiguous [B, T, *, D] everywhere: q, q_raw and dO share strides, so do k, v and fading k/v
    q = q_rot.contiguous()
    k, v = k.to(dtype).contiguous(), v.to(dtype).contiguous()
    fk = fv = None
    if fading_tokens > 0 and fading_keys is not None:
        if fading_values is None or fading_keys.shape != k.shape or fading_values.shape != k.shape:
            raise ValueError(f"fading_keys/values must both be [B, T, Hkv, D] = {tuple(k.shape)}")
        fk, fv = fading_keys.to(dtype).contiguous(), fading_values.to(dtype).contiguous()
    else:
        fading_tokens = 0
    qr = ek = ev = evalid = None
    if eidetic_keys is not None and eidetic_keys.shape[2] > 0:
        nc = -(-seqlen // window)
        if eidetic_values is None or eidetic_values.shape != eidetic_keys.shape or eidetic_keys.dim() != 5 \
                or eidetic_keys.shape[0] != batch or eidetic_keys.shape[1] < nc \
                or eidetic_keys.shape[3:] != (kv_heads, dim):
            raise ValueError(f"eidetic_keys/values must both be [B, NC, M, Hkv, D] with NC >= ceil(T / w)"
                             f" = {nc}; got {tuple(eidetic_keys.shape)} and "
                             f"{None if eidetic_values is None else tuple(eidetic_values.shape)}")
        if q_raw is None or q_raw.shape != q_rot.shape:
            raise ValueError("q_raw [B, T, H, D] (un-rotated queries) is required with an eidetic set")
        ek = eidetic_keys.to(dtype).contiguous()
        ev = eidetic_values.to(dtype).contiguous()
        if eidetic_valid is None:
            evalid = torch.ones(ek.shape[:3], dtype=torch.uint8, device=ek.device)
        else:
            if tuple(eidetic_valid.shape) != tuple(ek.shape[:3]):
                raise ValueError(f"eidetic_valid must be [B, NC, M] = {tuple(ek.shape[:3])}; "
                                 f"got {tuple(eidetic_valid.shape)}")
            evalid = eidetic_valid.to(torch.uint8).contiguous()
        qr = q_raw.to(dtype).contiguous()
    config = _flat_config(_config or _default_config(dim, dtype, not q.is_cuda))
    o, _ = _memory_attention_fwd(q, qr, k, v, fk, fv, ek, ev, evalid, window, fading_tokens, config)
    return o
