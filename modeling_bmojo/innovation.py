"""Innovation selection (B'MOJO Sec. 3.2): which old tokens the eidetic store keeps.

A linear predictor reads the fading memory f_{t-1} and guesses the key k_t; tokens it predicts badly
(high innovation e_t = ||k_t - k̂_t||^2 / d_k) are the ones the SSM state cannot hold, so they are kept
verbatim. The predictor learns from an auxiliary loss with k_t detached; selection itself is discrete.

Sets of tokens (the store, the previous and current chunk's candidates) are dicts of tensors:
s [B, S] scores (-inf when empty), p [B, S] positions, k and v [B, S, Hkv, D].
"""

import functools

import torch
from torch import nn

from ..kernels.dispatch import (fill_set_, fused_on_prefill, gather_tokens_, needs_grad, select_best,
                                state_kernels_used, state_writes_use_kernels)
from ..kernels.innovation.naive import EMPTY, chunk_candidates, eidetic_stores, innovation_scores, merge_sets
from .common import where_rows

SET_NAMES = ("store", "prev", "cur")


class InnovationPredictor(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=True)

    def forward(self, fading_prev, keys):
        """fading_prev [B, T, d] (f_{t-1}), keys [B, T, Hkv, D] -> innovation e [B, T] (grad to the predictor)."""
        predicted = self.proj(fading_prev).reshape(*keys.shape)
        return innovation_scores(keys.detach(), predicted)


def gather_tokens(x, pos):
    """x [B, T, Hkv, D], pos [B, ...] (EMPTY allowed) -> [B, ..., Hkv, D]; empty slots hold zeros."""
    batch = x.shape[0]
    flat = pos.clamp(max=x.shape[1] - 1).reshape(batch, -1)
    out = torch.gather(x, 1, flat[..., None, None].expand(-1, -1, *x.shape[2:]))
    out = out * (pos.reshape(batch, -1) != EMPTY)[..., None, None].to(out.dtype)
    return out.reshape(*pos.shape, *x.shape[2:])


# With BMOJO_FUSED_PREFILL=1 the parallel selection's pieces run on CUDA as compiled graphs
# (kernels/dispatch.py `fused_on_prefill`; the same functions, eager otherwise and inlined under an outer
# torch.compile); with BMOJO_STATE_KERNELS=1 as Triton kernels (`select_best`, `fill_set_`). Eagerly they
# are ~150 tiny launches per layer, and an eager 2k-token prefill waits on its host issuing them.


@fused_on_prefill
def _store_tokens(keys, values, store_s, store_p):
    return gather_tokens(keys, store_p), gather_tokens(values, store_p), ~torch.isneginf(store_s)


def parallel_eidetic(scores, real, keys, values, window, per_chunk, capacity, use_kernels="auto"):
    """Stores for every chunk from one sequence. scores/real [B, T]; keys/values [B, T, Hkv, D] (pre-RoPE).

    Returns (store keys [B, NC, M, Hkv, D], values, valid [B, NC, M], candidates (s, p) [B, NC, n_e],
    stores (s, p) [B, NC, M])."""
    take = functools.partial(select_best, use_kernels=use_kernels)
    cand_s, cand_p = chunk_candidates(scores, real, window, per_chunk, take=take)
    store_s, store_p = eidetic_stores(cand_s, cand_p, capacity, take=take)
    # one launch (and one for an eager training step's backward); compiled training traces the reference
    compiled_training = needs_grad(keys, values) and torch.compiler.is_compiling()
    if state_kernels_used(keys, use_kernels) and not compiled_training:
        store_k, store_v = gather_tokens_(keys, values, store_p)
        store_valid = ~torch.isneginf(store_s)
    else:
        store_k, store_v, store_valid = _store_tokens(keys, values, store_s, store_p, use_kernels=use_kernels)
    return store_k, store_v, store_valid, (cand_s, cand_p), (store_s, store_p)


def empty_set(batch, size, like):
    """An empty token set with keys/values shaped like `like` [B, *, Hkv, D]."""
    return {
        "s": torch.full((batch, size), float("-inf"), device=like.device),
        "p": torch.full((batch, size), EMPTY, dtype=torch.long, device=like.device),
        "k": like.new_zeros(batch, size, *like.shape[-2:]),
        "v": like.new_zeros(batch, size, *like.shape[-2:]),
    }


def merge(a, b, size):
    """Best `size` tokens of two sets (all of them when size is None)."""
    s, p, pick, occupied = merge_sets(a["s"], a["p"], b["s"], b["p"], size)
    idx = pick[..., None, None]
    keep = occupied[..., None, None]  # empty slots hold zeros

    def take(name):
        both = torch.cat([a[name], b[name]], dim=1)
        picked = torch.gather(both, 1, idx.expand(-1, -1, *both.shape[2:]))
        return torch.where(keep, picked, torch.zeros((), dtype=picked.dtype, device=picked.device))

    return {"s": s, "p": p, "k": take("k"), "v": take("v")}


def select_rows(valid_row, new, old):
    return {name: where_rows(valid_row, new[name], old[name]) for name in new}


def rows_at_chunks(x, chunks, fill):
    """x [B, NC, S] at chunks [B, n] -> [B, n, S]; `fill` where a chunk is out of range."""
    nchunks = x.shape[1]
    ok = (chunks >= 0) & (chunks < nchunks)
    picked = torch.gather(x, 1, chunks.clamp(0, nchunks - 1)[..., None].expand(-1, -1, x.shape[2]))
    return torch.where(ok[..., None], picked, fill)


@fused_on_prefill
def sets_after_prefill(lengths, window, cands, stores, keys, values):
    """The store, previous and current candidate sets a token-by-token run would hold after `lengths` tokens.

    The three sets are read and their keys gathered together (one gather each for keys and values), since
    an eager prefill's cost is its number of launches (one compiled graph on CUDA with
    BMOJO_FUSED_PREFILL=1)."""
    last = torch.div(lengths - 1, window, rounding_mode="floor")[:, None]  # (B, 1): the last chunk
    cand_chunks = torch.cat([last - 1, last], dim=1)  # prev, cur
    s = torch.cat([rows_at_chunks(stores[0], last, float("-inf")).flatten(1),
                   rows_at_chunks(cands[0], cand_chunks, float("-inf")).flatten(1)], dim=1)
    p = torch.cat([rows_at_chunks(stores[1], last, EMPTY).flatten(1),
                   rows_at_chunks(cands[1], cand_chunks, EMPTY).flatten(1)], dim=1)
    p = p.masked_fill(torch.isneginf(s), EMPTY)
    k, v = gather_tokens(keys, p), gather_tokens(values, p)
    sizes = [stores[0].shape[2], cands[0].shape[2], cands[0].shape[2]]
    parts = [t.split(sizes, dim=1) for t in (s, p, k, v)]
    return {name: dict(zip("spkv", (part[i] for part in parts))) for i, name in enumerate(SET_NAMES)}


def fill_sets_after_prefill_(sets, lengths, window, cands, stores, keys, values, use_kernels="auto"):
    """The state's store, prev and cur sets (TokenSets, by name) := what `sets_after_prefill` gives, in place.
    With BMOJO_STATE_KERNELS=1 on CUDA one Triton launch writes each set (kernels/state_fill/rows.py);
    otherwise (see `state_writes_use_kernels`: compiled code traces the reference), and for a store that
    grew past its fixed size (an unbounded store), the reference."""
    fixed = stores[0].shape[2] == sets["store"].size and cands[0].shape[2] == sets["cur"].size
    if fixed and state_writes_use_kernels(keys, use_kernels):
        sources = (("store", stores, 0), ("prev", cands, -1), ("cur", cands, 0))  # the chunk: last + offset
        for name, (chunk_s, chunk_p), offset in sources:
            if sets[name].size:
                fill_set_(sets[name].as_tuple(), chunk_s, chunk_p, offset, lengths, window, keys, values)
        return
    prefilled = sets_after_prefill(lengths, window, cands, stores, keys, values, use_kernels=use_kernels)
    for name, token_set in sets.items():
        token_set.assign(prefilled[name])


def step_sets(sets, token, at_boundary, valid, capacity, per_chunk):
    """Advance the sets by one token. token: a one-entry set; at_boundary [B]: the token opens a new chunk."""
    store, prev, cur = sets["store"], sets["prev"], sets["cur"]
    batch = cur["s"].shape[0]
    # Only one token in w opens a chunk. Eager decoding skips the rotation below when no row's token does
    # (one host read of a flag costs less than its ~100 ops); a compiled step always runs it, masked by row.
    if torch.compiler.is_compiling() or bool(at_boundary.any()):
        none = empty_set(batch, prev["s"].shape[1], prev["k"])
        # Entering chunk c: chunk c-2's candidates join the store, chunk c-1's wait one more chunk.
        store = merge(store, select_rows(at_boundary, prev, none), capacity)
        prev = select_rows(at_boundary, cur, prev)
        cur = select_rows(at_boundary, empty_set(batch, cur["s"].shape[1], cur["k"]), cur)
    nothing = empty_set(batch, 1, token["k"])
    cur = merge(cur, select_rows(valid, token, nothing), per_chunk)
    return {"store": store, "prev": prev, "cur": cur}
