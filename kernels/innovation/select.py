"""`naive.take_best` for a prefill's selection in one Triton launch: per row, the k best entries by (score
desc, position asc), in the row's own order (position order, the precondition), then -inf / EMPTY.

An eager prefill ran the selection as ~50 small ops per call (order keys, a k-th value, a prefix sum, a
scatter, gathers), twice per B'MOJO layer (each chunk's candidates; every chunk's store). Here one program
per row keeps the row's order keys in registers, finds the k-th largest by a binary search over the int64
key range (64 halvings, each a count over the row; the decode kernel's method, `decode.py`), and writes the
entries at or above it in row order. Real keys are distinct (distinct positions), so exactly min(k, real)
entries are written, the same ones `take_best` picks.

Rows up to `MAX_ROW` entries (a 32k-token prefill's store rows hold ~2,500 at the 130m sizes); the
dispatcher keeps the reference for longer ones.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..custom_ops import kernel_op, launch
from .decode import _INT64_MAX, _NO_KEY, EMPTY, _order_key

MAX_ROW = 8192


@triton.jit
def _take_best_kernel(S, P, OUT_S, OUT_P, R, N, K, ssb, ssr, spb, spr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b, r = row // R, row % R
    offs = tl.arange(0, BLOCK)
    inside = offs < N
    s = tl.load(S + b * ssb + r * ssr + offs, mask=inside, other=float("-inf"))
    p = tl.load(P + b * spb + r * spr + offs, mask=inside, other=EMPTY)
    key = _order_key(s, p)
    real = inside & (key != _NO_KEY)
    count = tl.sum(real.to(tl.int32), 0)
    # The largest t with #(key >= t) >= K: lo keeps that property, hi bounds the answer (as in decode.py)
    lo = tl.min(tl.where(real, key, _INT64_MAX), 0)
    hi = tl.max(key, 0)
    for _ in range(64):
        mid = (lo >> 1) + (hi >> 1) + ((lo | hi) & 1)  # ceil((lo + hi) / 2) without overflow
        ok = tl.sum((key >= mid).to(tl.int32), 0) >= K
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid - 1)
    threshold = tl.where(count > K, lo, _NO_KEY + 1)  # at most K real entries: all of them
    keep = real & (key >= threshold)
    slot = tl.cumsum(keep.to(tl.int32), 0) - 1
    kept = tl.sum(keep.to(tl.int32), 0)
    out = row * K
    tl.store(OUT_S + out + slot, s, mask=keep)
    tl.store(OUT_P + out + slot, p, mask=keep)
    for k0 in range(0, K, BLOCK):  # the slots after the kept entries: empty
        j = k0 + offs
        rest = (j < K) & (j >= kept)
        tl.store(OUT_S + out + j, tl.full([BLOCK], float("-inf"), tl.float32), mask=rest)
        tl.store(OUT_P + out + j, tl.full([BLOCK], EMPTY, tl.int64), mask=rest)


def _fake(scores, pos, k):
    shape = (*scores.shape[:-1], k)
    return scores.new_empty(shape), pos.new_empty(shape)


@kernel_op("take_best", fake=_fake)
def _take_best_op(scores: Tensor, pos: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """scores [B, R, N] float32, pos [B, R, N] int64 (any strides with a unit last one) -> [B, R, k] each."""
    batch, rows, size = (int(n) for n in scores.shape)
    out_s = torch.empty((batch, rows, k), device=scores.device, dtype=torch.float32)
    out_p = torch.empty((batch, rows, k), device=scores.device, dtype=torch.int64)
    block = max(16, triton.next_power_of_2(size))
    launch(_take_best_kernel)[(batch * rows,)](
        scores, pos, out_s, out_p, rows, size, k, scores.stride(0), scores.stride(1), pos.stride(0),
        pos.stride(1), BLOCK=block, num_warps=4 if block <= 1024 else 8)
    return out_s, out_p


def take_best_supported(scores, pos, k):
    """Whether `take_best_triton` takes these inputs (else the caller keeps the reference)."""
    return (scores.dim() == 3 and pos.shape == scores.shape and scores.dtype == torch.float32
            and pos.dtype == torch.int64 and 1 <= scores.shape[-1] <= MAX_ROW and k >= 1
            and scores.shape[0] * scores.shape[1] >= 1)


def take_best_triton(scores, pos, k):
    """`naive.take_best`'s picked (scores, pos) [B, R, k] for scores [B, R, N] float32 and pos int64 (real
    entries in position order along N; rows of at most MAX_ROW entries)."""
    if not take_best_supported(scores, pos, k):
        raise ValueError(f"take_best_triton needs scores float32 and pos int64, both [B, R, N] with "
                         f"1 <= N <= {MAX_ROW}, and k >= 1; got scores {scores.dtype} {tuple(scores.shape)}, "
                         f"pos {pos.dtype} {tuple(pos.shape)}, k={k}")
    if scores.stride(-1) != 1:
        scores = scores.contiguous()
    if pos.stride(-1) != 1:
        pos = pos.contiguous()
    return _take_best_op(scores, pos, int(k))
