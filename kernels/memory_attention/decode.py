"""Single-token (decode) B'MOJO attention in Triton: one query per row against up to three key segments
(sliding window ring, fading band ring, eidetic store) in ONE softmax. Same function as
`naive.decode_attention_reference`:

    o_h = sum_j softmax_j(l) v_j,   l_j = <q_seg(j), k_j> / sqrt(D)   over the valid keys of all segments

Decoding reads every cached key and value once and does ~2 FLOPs per byte, so the step is bound by
memory bandwidth. The design is flash-decoding (Dao, Haziza, Massa, Sizov, "Flash-Decoding for
long-context inference", 2023): each program owns the G query heads of one kv head (so each key is
read once for its whole GQA group) and a share of the keys of every segment, which it streams in
BLOCK_N tiles with an online softmax (base-2 exponent, running max started at a finite -1e30 so a row
that met only masked keys stays NaN-free). Masked keys are not loaded (the mask predicates the loads).
With 16-bit keys the two products are tensor-core dots on the operands as stored (query rows padded to
16), with fp32 accumulation and the softmax weights rounded to the keys' dtype for the second one, as
flash attention does; in float32 they are exact fp32 products (MODE below).

  - one split (enough rows to fill the GPU: B * Hkv at least twice the SMs): each program writes its
    normalised output; the whole step is ONE kernel launch.
  - several splits (small batches): the programs of a row write their partial (max, sum, unnormalised
    output) to a float32 workspace and a second, tiny kernel merges them by log-sum-exp.

A row with no valid key in any segment gets zeros (the reference does the same).

Registered as the custom op `bmojo::decode_attention` (kernels/custom_ops.py) so that the compiled,
CUDA-graphed decode step traces through it with no graph break. No autograd: decoding runs without
grad (kernels/dispatch.py falls back to the reference when a gradient is needed).
"""

import functools
from typing import List, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..custom_ops import kernel_op, launch

_LOG2E = 1.4426950408889634
MAX_SEGMENTS = 3


# ----------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------

# How a program scores its keys and sums their values (the MODE constexpr; the kernel compares the
# numbers, since a jit function reads no Python globals):
BROADCAST = 0  # fp32 broadcast products and reductions (one or two query rows per kv head)
DOT_FP32 = 1  # tl.dot on fp32 operands, exact ("ieee"; no tensor-core speed-up)
DOT_NATIVE = 2  # tl.dot on the 16-bit keys and values as stored (tensor cores, fp32 accumulation), with the
#                 softmax weights rounded to that dtype for the second product, as flash attention does


@triton.jit
def _segment_tiles(acc, m_i, l_i, Q, K, V, MASK, b, kvh, G,
                   s_qb, s_qh, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, s_mb, s_ms,
                   S, tile_lo, tile_hi, qk_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, MODE: tl.constexpr, SKIP_MASKED: tl.constexpr):
    """Online softmax over key tiles [tile_lo, tile_hi) of one segment, for the G query heads of kv head
    `kvh` of row `b`. acc [BG, BD], m_i / l_i [BG] (base-2 units). SKIP_MASKED: masked keys are not read
    from memory (their loads are predicated on the mask, which makes them wait for it); else every key in
    range is read and masked in the scores."""
    offs_g = tl.arange(0, BLOCK_G)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    q_ptrs = Q + b * s_qb + (kvh * G + offs_g)[:, None] * s_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_g < G)[:, None] & dmask[None, :], other=0.0)
    if MODE != 2:  # not DOT_NATIVE
        q = q.to(tl.float32)
    k_base = K + b * s_kb + kvh * s_kh
    v_base = V + b * s_vb + kvh * s_vh
    for t in range(tile_lo, tile_hi):
        idx = t * BLOCK_N + offs_n
        ok = tl.load(MASK + b * s_mb + idx * s_ms, mask=idx < S, other=0) != 0  # (BN,)
        if SKIP_MASKED:
            kv_mask = ok[:, None] & dmask[None, :]
        else:
            kv_mask = (idx < S)[:, None] & dmask[None, :]
        k = tl.load(k_base + idx[:, None] * s_ks + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + idx[:, None] * s_vs + offs_d[None, :], mask=kv_mask, other=0.0)
        if MODE != 2:  # the fp32 paths
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        if MODE == 2:  # DOT_NATIVE
            s = tl.dot(q, tl.trans(k))
        elif MODE == 1:  # DOT_FP32; G padded to >= 16 rows
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:  # one or two query rows: a broadcast product and a reduction over D
            s = tl.sum(q[:, None, :] * k[None, :, :], 2)  # (BG, BN)
        s = tl.where(ok[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])  # 0 at masked keys: m_new is finite
        l_i = l_i * alpha + tl.sum(p, 1)
        if MODE == 2:
            pv = tl.dot(p.to(v.dtype), v)
        elif MODE == 1:
            pv = tl.dot(p, v, input_precision="ieee")
        else:
            pv = tl.sum(p[:, :, None] * v[None, :, :], 1)  # (BG, BD)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _tile_range(first, last, offset, tiles):
    """The split's tiles [first, last) of the concatenated segments, in segment-local tile indices."""
    lo = tl.minimum(tl.maximum(first - offset, 0), tiles)
    hi = tl.minimum(tl.maximum(last - offset, 0), tiles)
    return lo, hi


@triton.jit
def _decode_kernel(Q0, K0, V0, M0, Q1, K1, V1, M1, Q2, K2, V2, M2, Out, PM, PL, PACC,
                   s0_qb, s0_qh, s0_kb, s0_ks, s0_kh, s0_vb, s0_vs, s0_vh, s0_mb, s0_ms,
                   s1_qb, s1_qh, s1_kb, s1_ks, s1_kh, s1_vb, s1_vs, s1_vh, s1_mb, s1_ms,
                   s2_qb, s2_qh, s2_kb, s2_ks, s2_kh, s2_vb, s2_vs, s2_vh, s2_mb, s2_ms,
                   S0, S1, S2, s_ob, s_oh, H, HKV, G, splits, tiles_per_split, scale,
                   HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, NUM_SEGMENTS: tl.constexpr, MODE: tl.constexpr,
                   SKIP_MASKED: tl.constexpr, PARTIAL: tl.constexpr):
    # Inductor passes Python floats to user kernels as fp64 scalars; fp64 * fp32 would turn the fp32
    # accumulators into fp64 (a Triton compile error in a loop), so fix the type here
    scale = tl.cast(scale, tl.float32)
    qk_scale = scale * 1.4426950408889634  # log2(e): the softmax runs on exp2
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = (pid // HKV).to(tl.int64)  # int64 offsets: b * stride passes 2^31 for long full-attention caches
    kvh = pid % HKV
    first = split * tiles_per_split
    last = first + tiles_per_split

    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    # running max starts finite (not -inf): a row that has met only masked keys stays NaN-free
    m_i = tl.full([BLOCK_G], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)

    tiles0 = tl.cdiv(S0, BLOCK_N)
    lo, hi = _tile_range(first, last, 0, tiles0)
    acc, m_i, l_i = _segment_tiles(acc, m_i, l_i, Q0, K0, V0, M0, b, kvh, G,
                                   s0_qb, s0_qh, s0_kb, s0_ks, s0_kh, s0_vb, s0_vs, s0_vh, s0_mb, s0_ms,
                                   S0, lo, hi, qk_scale, HEAD_DIM, BLOCK_G, BLOCK_N, BLOCK_D,
                                   MODE, SKIP_MASKED)
    if NUM_SEGMENTS >= 2:
        tiles1 = tl.cdiv(S1, BLOCK_N)
        lo, hi = _tile_range(first, last, tiles0, tiles1)
        acc, m_i, l_i = _segment_tiles(acc, m_i, l_i, Q1, K1, V1, M1, b, kvh, G,
                                       s1_qb, s1_qh, s1_kb, s1_ks, s1_kh, s1_vb, s1_vs, s1_vh, s1_mb, s1_ms,
                                       S1, lo, hi, qk_scale, HEAD_DIM, BLOCK_G, BLOCK_N, BLOCK_D,
                                       MODE, SKIP_MASKED)
        if NUM_SEGMENTS >= 3:
            lo, hi = _tile_range(first, last, tiles0 + tiles1, tl.cdiv(S2, BLOCK_N))
            acc, m_i, l_i = _segment_tiles(acc, m_i, l_i, Q2, K2, V2, M2, b, kvh, G,
                                           s2_qb, s2_qh, s2_kb, s2_ks, s2_kh, s2_vb, s2_vs, s2_vh, s2_mb,
                                           s2_ms, S2, lo, hi, qk_scale, HEAD_DIM, BLOCK_G, BLOCK_N, BLOCK_D,
                                           MODE, SKIP_MASKED)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    heads = kvh * G + offs_g
    out_mask = (offs_g < G)[:, None] & (offs_d < HEAD_DIM)[None, :]
    if PARTIAL:  # this split's share; _combine_kernel merges the splits of each row
        row = (b * H + heads) * splits + split  # workspace [B, H, splits(, D)]
        tl.store(PM + row, m_i, mask=offs_g < G)
        tl.store(PL + row, l_i, mask=offs_g < G)
        tl.store(PACC + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=out_mask)
    else:
        o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # no valid key: acc = 0, so o = 0
        o_ptrs = Out + b * s_ob + heads[:, None] * s_oh + offs_d[None, :]
        tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=out_mask)


@triton.jit
def _combine_kernel(PM, PL, PACC, Out, s_ob, s_oh, H, splits,
                    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merges the splits of one (row, head): o = sum_s 2^(m_s - m) acc_s / sum_s 2^(m_s - m) l_s."""
    row = tl.program_id(0)  # b * H + h
    b = row // H
    h = row % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    smask = offs_s < splits
    dmask = offs_d < HEAD_DIM
    m = tl.load(PM + row * splits + offs_s, mask=smask, other=-1.0e30)
    lsum = tl.load(PL + row * splits + offs_s, mask=smask, other=0.0)
    acc = tl.load(PACC + (row * splits + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
                  mask=smask[:, None] & dmask[None, :], other=0.0)
    weight = tl.math.exp2(m - tl.max(m, 0))  # (BS,): 1 for the split holding the max
    total = tl.sum(lsum * weight, 0)
    o = tl.sum(acc * weight[:, None], 0) / tl.where(total > 0.0, total, 1.0)
    tl.store(Out + b * s_ob + h * s_oh + offs_d, o.to(Out.dtype.element_ty), mask=dmask)


# ----------------------------------------------------------------------------------------------------
# launch settings
# ----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _sm_count(device):
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_config(batch, kv_heads, group, lengths, device, dtype=torch.bfloat16):
    """[BLOCK_N, splits, num_warps, num_stages, MODE, SKIP_MASKED] for a launch.

    On CUDA with 16-bit operands: tensor-core dots (DOT_NATIVE), 128-key tiles once B * Hkv fills the SMs
    (64 below), and splits for about two programs per SM (a power of two, no split shorter than two tiles;
    one split, a single launch, once B * Hkv alone gives that). Measured on an H200 (132 SMs, 12 KV heads,
    D = 64, keys 512 + 512 of a 1,024-slot band + 512, bf16; benchmarks/results/
    bench_memory_attention_decode_h200_2026-12-04.json): batch 16 takes 29.1 us at [128, 2] against 74.2 us
    for the fp32 broadcasts this replaced, batch 1 7.7 us at [64, 16] against 9.0. float32 keeps the exact
    fp32 paths at their earlier settings (about four programs per SM). On CPU (the interpreter, whose
    bfloat16 dot is broken in Triton 3.9) the fp32 paths and the smallest tile, which keeps tests fast."""
    if device.type != "cuda":
        return [16, 1, 1, 1, _fp32_mode(group), 1]
    mode = default_mode(group, dtype)
    rows, sms = batch * kv_heads, _sm_count(device)
    if mode == DOT_NATIVE:
        block_n, per_sm = (128 if rows >= sms else 64), 2
    else:
        block_n, per_sm = (64 if group <= 2 else 32), 4
    tiles = sum(triton.cdiv(n, block_n) for n in lengths)
    wanted = triton.next_power_of_2(triton.cdiv(per_sm * sms, rows))
    splits = 1 if rows >= per_sm * sms else max(1, min(wanted, tiles // 2, 64))
    return [block_n, splits, 4, 3, mode, 1]


def _fp32_mode(group):
    return BROADCAST if group <= 2 else DOT_FP32


def default_mode(group, dtype):
    """Tensor-core dots for 16-bit keys and values; for float32, broadcast products for one or two query
    rows per kv head and exact fp32 dots past that."""
    return DOT_NATIVE if dtype in (torch.bfloat16, torch.float16) else _fp32_mode(group)


def _block_g(group, mode):
    """Query rows a program holds: G as a power of 2; padded to 16 (tl.dot's minimum) for the dot modes."""
    g = triton.next_power_of_2(group)
    return g if mode == BROADCAST else max(16, g)


def _full_config(config, batch, kv_heads, group, lengths, device, dtypes):
    """A caller's config (4 or 6 entries; [] for all defaults) completed with the defaults. DOT_NATIVE needs
    q, k and v of every segment in one 16-bit dtype (tl.dot takes equal operand types, and would round fp32
    ones to tf32): other inputs take the exact fp32 path instead."""
    native = len(dtypes) == 1 and next(iter(dtypes)) in (torch.bfloat16, torch.float16)
    default = default_config(batch, kv_heads, group, lengths, device,
                             next(iter(dtypes)) if native else torch.float32)
    config = list(config) + default[len(config):]
    if config[4] == DOT_NATIVE and not native:
        config[4] = _fp32_mode(group)
    return config


def _strides(q, k, v, mask):
    return (q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), mask.stride(0), mask.stride(1))


def _segment_list(q0, k0, v0, m0, q1, k1, v1, m1, q2, k2, v2, m2):
    segments = [(q0, k0, v0, m0)]
    if q1 is not None:
        segments.append((q1, k1, v1, m1))
        if q2 is not None:
            segments.append((q2, k2, v2, m2))
    return segments


# ----------------------------------------------------------------------------------------------------
# the custom op bmojo::decode_attention (see kernels/custom_ops.py)
# ----------------------------------------------------------------------------------------------------

def _decode_fake(q0, k0, v0, m0, q1, k1, v1, m1, q2, k2, v2, m2, scale, config):
    return torch.empty_like(q0)


@kernel_op("decode_attention", fake=_decode_fake)
def _decode_attention_op(q0: Tensor, k0: Tensor, v0: Tensor, m0: Tensor,
                         q1: Optional[Tensor], k1: Optional[Tensor], v1: Optional[Tensor],
                         m1: Optional[Tensor], q2: Optional[Tensor], k2: Optional[Tensor],
                         v2: Optional[Tensor], m2: Optional[Tensor], scale: float, config: List[int]
                         ) -> Tensor:
    """o [B, H, D] (q0's dtype). Segment i is (qi [B, H, D], ki, vi [B, S_i, Hkv, D], mi [B, S_i] bool),
    with non-empty S_i; segment 1 is read iff q1 is given, segment 2 iff q1 and q2 are. Last dims must
    have stride 1. config = [BLOCK_N, splits, num_warps, num_stages(, MODE, SKIP_MASKED)], or [] for
    `default_config`'s (chosen here, not by the caller: under torch.compile this body is not traced by
    dynamo)."""
    segments = _segment_list(q0, k0, v0, m0, q1, k1, v1, m1, q2, k2, v2, m2)
    # Python ints: constexprs and launch settings must not be symbolic under dynamic shapes
    batch, heads, dim = (int(n) for n in q0.shape)
    kv_heads = int(k0.shape[2])
    group = heads // kv_heads
    lengths = [int(k.shape[1]) for _, k, _, _ in segments]
    dtypes = {t.dtype for segment in segments for t in segment[:3]}
    block_n, splits, warps, stages, mode, skip_masked = _full_config(
        config, batch, kv_heads, group, lengths, q0.device, dtypes)
    tiles = sum(triton.cdiv(n, block_n) for n in lengths)
    tiles_per_split = triton.cdiv(tiles, splits)
    splits = triton.cdiv(tiles, tiles_per_split)  # none empty
    o = torch.empty_like(q0)
    args, strides = [], []
    for i in range(MAX_SEGMENTS):
        q, k, v, m = segments[min(i, len(segments) - 1)]  # an absent segment repeats one never read
        # the bool mask as it is (Triton loads it as int1): a `.view(torch.uint8)` of a graph input
        # does not lower in Inductor (torch 2.11: "torch.bool is not supported by torch.iinfo")
        args += [q, k, v, m]
        strides += _strides(q, k, v, m)
    lengths += [0] * (MAX_SEGMENTS - len(lengths))
    partial = splits > 1
    if partial:
        pm = torch.empty(batch, heads, splits, device=q0.device, dtype=torch.float32)
        pl = torch.empty_like(pm)
        pacc = torch.empty(batch, heads, splits, dim, device=q0.device, dtype=torch.float32)
    else:
        pm = pl = pacc = o  # never touched
    block_d = max(16, triton.next_power_of_2(dim))
    block_g = _block_g(group, mode)
    launch(_decode_kernel)[(batch * kv_heads, splits)](
        *args, o, pm, pl, pacc, *strides, *lengths, o.stride(0), o.stride(1),
        heads, kv_heads, group, splits, tiles_per_split, scale,
        HEAD_DIM=dim, BLOCK_G=block_g, BLOCK_N=block_n, BLOCK_D=block_d, NUM_SEGMENTS=len(segments),
        MODE=mode, SKIP_MASKED=bool(skip_masked), PARTIAL=partial, num_warps=warps, num_stages=stages)
    if partial:
        launch(_combine_kernel)[(batch * heads,)](
            pm, pl, pacc, o, o.stride(0), o.stride(1), heads, splits,
            HEAD_DIM=dim, BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d, num_warps=1)
    return o


# ----------------------------------------------------------------------------------------------------
# public
# ----------------------------------------------------------------------------------------------------

def _check(segments):
    if not 1 <= len(segments) <= MAX_SEGMENTS:
        raise ValueError(f"segments must hold 1 to {MAX_SEGMENTS} (q, k, v, mask) tuples; "
                         f"got {len(segments)}")
    q0 = segments[0][0]
    if q0.dim() != 3:
        raise ValueError(f"segment 0's q must be [B, H, D]; got {tuple(q0.shape)}")
    batch, heads, dim = q0.shape
    kv_heads = segments[0][1].shape[2] if segments[0][1].dim() == 4 else -1
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"num heads H={heads} must be a multiple of kv heads Hkv={kv_heads}")
    if not 16 <= dim <= 256:
        raise ValueError(f"head dim D={dim} not supported by the Triton kernel: 16 <= D <= 256 allowed")
    if q0.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"q dtype {q0.dtype} not supported: float32, float16 or bfloat16")
    for i, (q, k, v, mask) in enumerate(segments):
        if tuple(q.shape) != (batch, heads, dim):
            raise ValueError(f"segment {i}'s q must be [B, H, D] = {(batch, heads, dim)}; "
                             f"got {tuple(q.shape)}")
        if k.dim() != 4 or tuple(k.shape) != tuple(v.shape) or k.shape[0] != batch \
                or tuple(k.shape[2:]) != (kv_heads, dim):
            raise ValueError(f"segment {i}'s k and v must both be [B, S, Hkv, D] = [{batch}, S, {kv_heads}, "
                             f"{dim}]; got {tuple(k.shape)} and {tuple(v.shape)}")
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(k.shape[:2]):
            raise ValueError(f"segment {i}'s mask must be bool [B, S] = {tuple(k.shape[:2])}; "
                             f"got {mask.dtype} {tuple(mask.shape)}")


def _last_dim_unit(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def decode_attention_triton(segments, scale, _config=None):
    """Fused single-token attention over 1 to 3 key segments in one softmax (one launch at large batch).

    Same function and signature as `decode_attention_reference`.

    Args:
        segments: list of (q [B, H, D], k [B, S_i, Hkv, D], v [B, S_i, Hkv, D], mask [B, S_i] bool); each
            segment is scored with its own query; H a multiple of Hkv (query head h reads kv head h // G).
            Any strides, except that the last dim is made contiguous if it is not.
        scale: the logit scale, 1/sqrt(D) for B'MOJO.
        _config: private launch override [BLOCK_N, splits, num_warps, num_stages(, MODE, SKIP_MASKED)], for
            benchmarks and tests.

    Returns:
        o: [B, H, D] in segment 0's q dtype, float32 accumulation; zeros for a row without a valid key.
    """
    _check(segments)
    q0 = segments[0][0]
    segments = [(_last_dim_unit(q), _last_dim_unit(k), _last_dim_unit(v), mask)
                for q, k, v, mask in segments if k.shape[1] > 0]  # an empty segment contributes nothing
    if not segments:
        return torch.zeros_like(q0)
    flat = []
    for i in range(MAX_SEGMENTS):
        flat += list(segments[i]) if i < len(segments) else [None] * 4
    return _decode_attention_op(*flat, float(scale), [int(n) for n in (_config or [])])
