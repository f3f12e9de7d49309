"""One decoding token's update of the eidetic sets in ONE Triton launch (the reference is
`naive.decode_sets_step_`; same function, same slots written).

A compiled decode step of the reference is about a hundred small ops per layer (order keys, a k-th value,
prefix sums, scatters, gathers and masked copies of the store), a dozen kernels after fusion, and it runs
every one of them at every token although only one token in w opens a chunk: a CUDA graph cannot branch.
Here one program per row reads its flags and does only what the row needs:

  - a row whose token opens a chunk merges chunk c-2's candidates (prev) into the store: the M-th best
    order key of the union is found by a binary search over the int64 keys (64 halvings of the key range,
    each a count over the union), newcomers at or above it take the freed or empty slots in slot order,
    and only their rows of keys and values are written; then prev := cur and cur is emptied;
  - a valid row's token takes cur's first empty slot, or its worst entry's slot if it ranks above it.

Order keys are `naive.order_key`'s: (score desc, position asc) as one int64, larger is better.

Registered as the mutating custom op `bmojo::eidetic_decode_step` (kernels/custom_ops.py: an opaque
custom_op, since it writes its inputs), so a compiled, CUDA-graphed decode step calls it without a graph
break and it writes the state buffers in place.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..custom_ops import kernel_op, launch
from .naive import _LOW_BITS as NAIVE_LOW_BITS
from .naive import _NO_KEY as NAIVE_NO_KEY
from .naive import EMPTY as NAIVE_EMPTY

# Triton reads module globals only as constexprs. Names, not `from . import naive`: the Hub's flat
# file (hub/flatten.py) merges modules, so a module object cannot be imported there
EMPTY = tl.constexpr(NAIVE_EMPTY)
_NO_KEY = tl.constexpr(NAIVE_NO_KEY)
_LOW_BITS = tl.constexpr(NAIVE_LOW_BITS)
_INT64_MAX = tl.constexpr(NAIVE_EMPTY)  # EMPTY is the largest int64


@triton.jit
def _order_key(s, p):
    """naive.order_key for a block (or a scalar): s float32, p int64 -> int64, empty entries _NO_KEY."""
    s = tl.where(s == 0.0, 0.0, s)  # -0.0 -> +0.0: equal scores share a key
    bits = s.to(tl.int32, bitcast=True)
    monotone = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)
    low = _LOW_BITS - tl.minimum(tl.maximum(p, 0), _LOW_BITS)
    key = monotone * 4294967296 + low
    empty = (s == float("-inf")) | (p == EMPTY)
    return tl.where(empty, _NO_KEY, key)


@triton.jit
def _copy_row(SRC, DST, HD, BLOCK_HD: tl.constexpr):
    """DST[0:HD] = SRC[0:HD] (one slot's keys or values, flattened heads x dim)."""
    for d0 in range(0, HD, BLOCK_HD):
        offs = d0 + tl.arange(0, BLOCK_HD)
        dm = offs < HD
        x = tl.load(SRC + offs, mask=dm)
        tl.store(DST + offs, x.to(DST.dtype.element_ty), mask=dm)


@triton.jit
def _eidetic_step_kernel(ES, EP, EK, EV, PS, PP, PK, PV, CS, CP, CK, CV, TS, TP, TK, TV, BOUNDARY, VALID,
                         M, N, HD, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_HD: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    nm = offs_n < N
    cur_s = tl.load(CS + b * N + offs_n, mask=nm, other=float("-inf"))
    cur_p = tl.load(CP + b * N + offs_n, mask=nm, other=EMPTY)
    boundary = tl.load(BOUNDARY + b) != 0
    if boundary:
        if M > 0:
            # --- the store := the best M of store ∪ prev; entries that stay keep their slots
            offs_m = tl.arange(0, BLOCK_M)
            mm = offs_m < M
            key_old = _order_key(tl.load(ES + b * M + offs_m, mask=mm, other=float("-inf")),
                                 tl.load(EP + b * M + offs_m, mask=mm, other=EMPTY))
            new_s = tl.load(PS + b * N + offs_n, mask=nm, other=float("-inf"))
            new_p = tl.load(PP + b * N + offs_n, mask=nm, other=EMPTY)
            key_new = _order_key(new_s, new_p)
            real_old = key_old != _NO_KEY
            real_new = key_new != _NO_KEY
            count = tl.sum(real_old.to(tl.int32), 0) + tl.sum(real_new.to(tl.int32), 0)
            # Binary search for the M-th largest real key: the largest t with #(key >= t) >= M. lo keeps
            # that property, hi bounds the answer; the mean is taken without overflow (keys span int64).
            lo = tl.minimum(tl.min(tl.where(real_old, key_old, _INT64_MAX), 0),
                            tl.min(tl.where(real_new, key_new, _INT64_MAX), 0))
            hi = tl.maximum(tl.max(key_old, 0), tl.max(key_new, 0))
            for _ in range(64):
                mid = (lo >> 1) + (hi >> 1) + ((lo | hi) & 1)  # ceil((lo + hi) / 2): lo < mid <= hi
                above = tl.sum((key_old >= mid).to(tl.int32), 0) + tl.sum((key_new >= mid).to(tl.int32), 0)
                ok = above >= M
                lo = tl.where(ok, mid, lo)
                hi = tl.where(ok, hi, mid - 1)
            threshold = tl.where(count > M, lo, _NO_KEY + 1)  # at most M real entries: all of them stay
            free = mm & (key_old < threshold)  # empty or evicted
            free_rank = tl.cumsum(free.to(tl.int32), 0) - 1
            incoming = real_new & (key_new >= threshold)
            new_rank = tl.cumsum(incoming.to(tl.int32), 0) - 1
            for j in range(0, N):
                pick = offs_n == j
                if tl.sum((incoming & pick).to(tl.int32), 0) > 0:
                    rank = tl.sum(tl.where(pick, new_rank, 0), 0)
                    slot = tl.sum(tl.where(free & (free_rank == rank), offs_m, 0), 0).to(tl.int64)
                    tl.store(ES + b * M + slot, tl.sum(tl.where(pick, new_s, 0.0), 0))
                    tl.store(EP + b * M + slot, tl.sum(tl.where(pick, new_p, 0), 0))
                    _copy_row(PK + (b * N + j) * HD, EK + (b * M + slot) * HD, HD, BLOCK_HD)
                    _copy_row(PV + (b * N + j) * HD, EV + (b * M + slot) * HD, HD, BLOCK_HD)
            tl.debug_barrier()  # prev's rows are read above before they are overwritten below
        # --- prev := cur, cur := empty (its keys and values are left as they are: never read when empty)
        tl.store(PS + b * N + offs_n, cur_s, mask=nm)
        tl.store(PP + b * N + offs_n, cur_p, mask=nm)
        for j in range(0, N):
            _copy_row(CK + (b * N + j) * HD, PK + (b * N + j) * HD, HD, BLOCK_HD)
            _copy_row(CV + (b * N + j) * HD, PV + (b * N + j) * HD, HD, BLOCK_HD)
        cur_s = tl.full([BLOCK_N], float("-inf"), tl.float32)
        cur_p = tl.full([BLOCK_N], EMPTY, tl.int64)
        tl.store(CS + b * N + offs_n, cur_s, mask=nm)
        tl.store(CP + b * N + offs_n, cur_p, mask=nm)
        tl.debug_barrier()  # cur's rows are read above before the token may overwrite one below
    if tl.load(VALID + b) != 0:
        # --- the token competes for cur
        tok_s = tl.load(TS + b)
        tok_p = tl.load(TP + b)
        key = _order_key(cur_s, cur_p)
        empty = nm & (key == _NO_KEY)
        has_empty = tl.sum(empty.to(tl.int32), 0) > 0
        worst_key = tl.min(tl.where(nm, key, _INT64_MAX), 0)
        worst = tl.min(tl.where(nm & (key == worst_key), offs_n, BLOCK_N), 0)
        first_empty = tl.min(tl.where(empty, offs_n, BLOCK_N), 0)
        slot = tl.where(has_empty, first_empty, worst).to(tl.int64)
        if has_empty | (_order_key(tok_s, tok_p) > worst_key):
            tl.store(CS + b * N + slot, tok_s)
            tl.store(CP + b * N + slot, tok_p)
            _copy_row(TK + b * HD, CK + (b * N + slot) * HD, HD, BLOCK_HD)
            _copy_row(TV + b * HD, CV + (b * N + slot) * HD, HD, BLOCK_HD)


_SET_ARGS = [f"{set_name}_{t}" for set_name in ("store", "prev", "cur") for t in "spkv"]


def _fake(*args):
    return None


@kernel_op("eidetic_decode_step", fake=_fake, mutates=tuple(_SET_ARGS))
def _eidetic_step_op(store_s: Tensor, store_p: Tensor, store_k: Tensor, store_v: Tensor,
                     prev_s: Tensor, prev_p: Tensor, prev_k: Tensor, prev_v: Tensor,
                     cur_s: Tensor, cur_p: Tensor, cur_k: Tensor, cur_v: Tensor,
                     tok_s: Tensor, tok_p: Tensor, tok_k: Tensor, tok_v: Tensor,
                     at_boundary: Tensor, valid: Tensor) -> None:
    """Every tensor contiguous: sets' s [B, S] float32, p [B, S] int64, k / v [B, S, Hkv, D]; the token's
    s [B] float32, p [B] int64, k / v [B, Hkv, D]; at_boundary, valid [B] bool."""
    batch, size = (int(n) for n in store_s.shape)
    per_chunk = int(cur_s.shape[1])
    hd = int(cur_k[0, 0].numel())
    launch(_eidetic_step_kernel, traced=False)[(batch,)](
        store_s, store_p, store_k, store_v, prev_s, prev_p, prev_k, prev_v, cur_s, cur_p, cur_k, cur_v,
        tok_s, tok_p, tok_k, tok_v, at_boundary, valid, size, per_chunk, hd,
        BLOCK_M=max(2, triton.next_power_of_2(size)), BLOCK_N=max(2, triton.next_power_of_2(per_chunk)),
        BLOCK_HD=min(1024, max(16, triton.next_power_of_2(hd))), num_warps=4)


def _check(store, prev, cur, token, at_boundary, valid):
    batch = token[0].shape[0]
    for name, tensors in (("store", store), ("prev", prev), ("cur", cur)):
        s, p, k, v = tensors
        if s.dtype != torch.float32 or p.dtype != torch.int64 or s.shape != p.shape or s.shape[0] != batch:
            raise ValueError(f"{name}: s must be float32 and p int64, both [B={batch}, S]; got {s.dtype} "
                             f"{tuple(s.shape)} and {p.dtype} {tuple(p.shape)}")
        if k.shape != v.shape or tuple(k.shape[:2]) != tuple(s.shape) or k.shape[2:] != token[2].shape[1:]:
            raise ValueError(f"{name}: k and v must be [B, S, Hkv, D] = [{batch}, {s.shape[1]}, "
                             f"{', '.join(map(str, token[2].shape[1:]))}]; "
                             f"got {tuple(k.shape)}, {tuple(v.shape)}")
        if not all(t.is_contiguous() for t in tensors):
            raise ValueError(f"{name}: the set's tensors must be contiguous (they are written in place)")
    if prev[0].shape != cur[0].shape:
        raise ValueError(f"prev and cur must have one size n_e; "
                         f"got {tuple(prev[0].shape)}, {tuple(cur[0].shape)}")
    if at_boundary.dtype != torch.bool or valid.dtype != torch.bool:
        raise ValueError(f"at_boundary and valid must be bool [B]; got {at_boundary.dtype}, {valid.dtype}")


def eidetic_decode_step_triton_(store, prev, cur, token, at_boundary, valid):
    """In place, as `naive.decode_sets_step_`: store, prev, cur are (s, p, k, v) tuples of state tensors;
    token (s [B], p [B], k [B, Hkv, D], v)."""
    _check(store, prev, cur, token, at_boundary, valid)
    tok_s, tok_p, tok_k, tok_v = token
    _eidetic_step_op(*store, *prev, *cur, tok_s.float().contiguous(), tok_p.contiguous(), tok_k.contiguous(),
                     tok_v.contiguous(), at_boundary.contiguous(), valid.contiguous())
