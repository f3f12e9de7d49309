"""Innovation selection for the eidetic store, in plain PyTorch.

B'MOJO (Zancato et al., 2024, Sec. 3) keeps a token in its eidetic memory when the fading memory
could not predict it. Given per-token innovation scores, tokens are ranked by (score descending,
position ascending): ties go to the earlier token, and every selection below is a top-k under
that one total order, so the parallel form and the token-by-token form pick the same tokens.

  - each chunk of w tokens proposes its n_e best tokens as candidates;
  - the store E_c of chunk c holds the M_e best candidates of chunks 0..c-2.

Empty slots carry score -inf and position EMPTY; sets are kept sorted by position.

Selection without sorting (`best_in_order`): every set this module merges is a union whose real
tokens already appear in position order (a chunk's tokens; a store followed by later candidates; a
chunk's candidates followed by the newest token). So the best k are found by a threshold on one
integer order key (pairwise counts for small sets, `kthvalue` for large ones) and written out in
position order by a prefix sum. That is a handful of fusable element-wise ops in a decode step
instead of three argsorts per merge; `rank_topk` (argsorts, no ordering precondition) is kept as
the reference the tests compare it with.
"""

import torch

EMPTY = torch.iinfo(torch.int64).max


_NO_KEY = torch.iinfo(torch.int64).min
# Positions take the low 31 bits, not 32: 2^32 - 1 does not fit an int32, and Inductor's Triton code for
# `_LOW_BITS - pos` with pos an index then multiplies an unsigned constant by -1, which Triton refuses
# (torch 2.11 / Triton 3.6 on an H200: "Cannot perform a binary operation between an unsigned tensor and a
# negative scalar").
_LOW_BITS = (1 << 31) - 1
# Sets up to this size are ranked by pairwise comparison (S^2 element-wise work, fused by the compiler);
# larger ones (a chunk's w tokens, a store of hundreds) by one k-th value selection.
_PAIRWISE_MAX = 64


def order_key(scores, pos):
    """One int64 per entry ordering (score desc, pos asc) as larger-is-better; empty slots get the minimum.

    The float32 score's bits are mapped to an int32 of the same order (negative floats have their magnitude
    bits flipped), shifted into the high half; the low half is 2^31 - 1 - pos (positions < 2^31)."""
    s = scores.float() + 0.0  # -0.0 -> +0.0: the two compare equal as floats, so they must share a key
    bits = s.view(torch.int32)
    monotone = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    key = monotone * (1 << 32) + (_LOW_BITS - pos.clamp(0, _LOW_BITS))
    return torch.where(torch.isneginf(s) | (pos == EMPTY), torch.full_like(key, _NO_KEY), key)


def best_in_order(scores, pos, k):
    """The k best entries by (score desc, pos asc) along the last dim, in position order, empty slots last.

    Precondition: the real entries (finite score) appear in position order along the last dim. Returns
    (index [..., k] into the last dim, occupied [..., k] bool); unoccupied slots' indices are meaningless."""
    size = scores.shape[-1]
    key = order_key(scores, pos)
    real = key != _NO_KEY
    if size <= _PAIRWISE_MAX:
        better = (key[..., None, :] > key[..., :, None]).sum(-1)  # entries better than each entry
        keep = real & (better < k)
    elif k >= size:
        keep = real
    else:
        kth = torch.kthvalue(key, size - k + 1, dim=-1, keepdim=True).values  # the k-th largest key
        keep = real & (key >= kth)  # real keys are distinct (distinct positions): exactly the best k
    slot = torch.cumsum(keep.to(torch.int32), dim=-1) - 1  # position order, thanks to the precondition
    slot = torch.where(keep, slot, k).to(torch.int64)  # dropped entries go to a spare column, cut below
    source = torch.arange(size, device=scores.device).expand_as(slot)
    index = torch.zeros(*slot.shape[:-1], k + 1, dtype=torch.int64, device=scores.device)
    index = index.scatter(-1, slot, source)[..., :k]
    occupied = torch.arange(k, device=scores.device) < keep.sum(-1, keepdim=True)
    return index, occupied


def take_best(scores, pos, k):
    """`best_in_order` with the picked scores and positions: (scores, pos, index, occupied), empties
    holding -inf and EMPTY."""
    index, occupied = best_in_order(scores, pos, k)
    picked_s = torch.where(occupied, torch.gather(scores, -1, index), float("-inf"))
    picked_p = torch.where(occupied, torch.gather(pos, -1, index), EMPTY)
    return picked_s, picked_p, index, occupied


def rank_topk(scores, pos, k):
    """Reference for `best_in_order` (argsorts, any input order): indices of the k best entries by (score
    desc, pos asc), returned sorted by position (empty slots last). scores float [..., S], pos int64;
    k <= S."""
    by_pos = torch.argsort(pos, dim=-1, stable=True)
    by_score = torch.argsort(torch.gather(scores, -1, by_pos), dim=-1, descending=True, stable=True)
    best = torch.gather(by_pos, -1, by_score[..., :k])
    best_pos = torch.gather(pos, -1, best)
    best_pos = best_pos.masked_fill(torch.isneginf(torch.gather(scores, -1, best)), EMPTY)
    return torch.gather(best, -1, torch.argsort(best_pos, dim=-1, stable=True))


def chunk_candidates(scores, valid, window, per_chunk, take=take_best):
    """Each chunk's `per_chunk` best tokens. scores [B, T] float, valid [B, T] bool. `take`: `take_best` or a
    function computing the same (the model passes a compiled one on CUDA).

    Returns (cand_scores [B, NC, n_e], cand_pos [B, NC, n_e]) with NC = ceil(T / w)."""
    batch, seqlen = scores.shape
    nchunks = -(-seqlen // window)
    pad = nchunks * window - seqlen
    s = scores.float().masked_fill(~valid, float("-inf"))
    s = torch.nn.functional.pad(s, (0, pad), value=float("-inf")).reshape(batch, nchunks, window)
    pos = torch.arange(nchunks * window, device=scores.device).reshape(1, nchunks, window)
    pos = pos.expand(batch, -1, -1)
    cand_scores, cand_pos, _, _ = take(s, pos, per_chunk)
    return cand_scores, cand_pos


def merge_sets(scores_a, pos_a, scores_b, pos_b, k):
    """Best k of the union of two sets, every real token of `b` later than every one of `a` (each set in
    position order). Returns (scores, pos, index into cat([a, b], -1), occupied)."""
    scores = torch.cat([scores_a, scores_b], dim=-1)
    pos = torch.cat([pos_a, pos_b], dim=-1)
    return take_best(scores, pos, scores.shape[-1] if k is None else k)


# eidetic_stores works on blocks of chunks whose [B, chunks, entries] order keys stay under this many entries
# (128 MiB of int64 keys): one block up to ~64k tokens at the 130m preset's sizes, for any batch up to 16.
_STORE_BLOCK_ENTRIES = 1 << 24


def eidetic_stores(cand_scores, cand_pos, capacity, block_entries=_STORE_BLOCK_ENTRIES, take=take_best):
    """The store of every chunk. E_0 = E_1 = {}; E_c = best `capacity` of E_{c-1} and chunk c-2's candidates.

    capacity None keeps every candidate. Returns (store_scores, store_pos) [B, NC, M].

    Best-k is a top-k under one total order, so the recursion unrolls: E_c is the best M of ALL candidates
    of chunks 0..c-2 (an entry left out of E_{c-1} has M better ones before it). Every chunk's store is
    then one masked selection over the flat candidate list, all chunks at once, instead of NC merges one
    after another (~20 launches each: ~1,300 per layer of an eager 32k-token prefill). To bound memory
    (NC^2 n_e keys), chunks go in blocks: a block starts from the store of its first chunk. `take` as in
    `chunk_candidates`."""
    batch, nchunks, per_chunk = cand_scores.shape
    size = per_chunk * max(nchunks - 2, 0) if capacity is None else capacity
    if size == 0 or nchunks == 0:
        shape = (batch, nchunks, size)
        return cand_scores.new_full(shape, float("-inf")), cand_pos.new_full(shape, EMPTY)
    flat_s, flat_p = cand_scores.reshape(batch, -1), cand_pos.reshape(batch, -1)
    block = _store_block(batch, nchunks, per_chunk, size, block_entries)
    base_s = cand_scores.new_full((batch, size), float("-inf"))  # E_c0: empty for the first block
    base_p = cand_pos.new_full((batch, size), EMPTY)
    all_s, all_p = [], []
    for c0 in range(0, nchunks, block):
        c1 = min(c0 + block, nchunks)  # this block's chunks c0..c1-1, and c1's store as the next base
        first = max(c0 - 1, 0)  # E_c0 holds chunks 0..c0-2; the block's chunks add first..c-2
        span = slice(first * per_chunk, max(c1 - 1, first) * per_chunk)  # chunks first..c1-2
        new_s, new_p = flat_s[:, span], flat_p[:, span]
        chunk = first + torch.arange(new_s.shape[1], device=cand_scores.device) // per_chunk  # (L,)
        stores = torch.arange(c0, c1 + 1, device=cand_scores.device)  # (G + 1,)
        eligible = chunk[None, :] <= stores[:, None] - 2  # (G + 1, L)
        s = torch.cat([base_s[:, None].expand(-1, len(stores), -1),
                       torch.where(eligible, new_s[:, None], float("-inf"))], dim=-1)
        p = torch.cat([base_p, new_p], dim=-1)[:, None].expand(-1, len(stores), -1)
        store_s, store_p, _, _ = take(s, p, size)  # base then later candidates: position order
        all_s.append(store_s[:, :c1 - c0])
        all_p.append(store_p[:, :c1 - c0])
        base_s, base_p = store_s[:, -1], store_p[:, -1]
    return torch.cat(all_s, dim=1), torch.cat(all_p, dim=1)


def _store_block(batch, nchunks, per_chunk, size, block_entries):
    """Chunks per block of `eidetic_stores`: the most whose keys [B, G + 1, M + G n_e] fit block_entries."""
    block = nchunks
    while block > 1 and batch * (block + 1) * (size + block * per_chunk) > block_entries:
        block //= 2
    return block


def innovation_scores(keys, predicted_keys):
    """e_t = ||k_t - k̂_t||^2 / d_k, averaged over KV heads. keys, predicted [B, T, Hkv, D] -> [B, T]."""
    return (keys.float() - predicted_keys.float()).pow(2).mean(dim=(-1, -2))


# ---------------------------------------------------------------------------------------------
# Decoding: the sets updated in place, entries never moved (the reference of innovation/decode.py)
# ---------------------------------------------------------------------------------------------
# A decoding step selects what the ordered merges above select (the same best-k rule), but writes only what
# changes: an entry that stays keeps its slot, and newcomers take the slots that were freed or empty, in slot
# order. The sets are then in no particular order (attention reads them as sets); a compiled step writes a
# few rows instead of re-packing a store of hundreds, and the fused kernel does the whole update in one
# launch.
# Empty slots are marked by (-inf, EMPTY) only: their keys and values are left as they were and never read.


def _rows_at(x, index):
    """x [B, S, ...] at one slot per row, index [B, n] -> [B, n, ...]."""
    idx = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, idx)


def _write_slots_(dest, slot, src, write):
    """dest[b, slot[b, j]] = src[b, j] where write[b, j], in place: the slots a row writes are distinct."""
    rows = torch.arange(dest.shape[0], device=dest.device)[:, None].expand_as(slot)
    old = dest[rows, slot]
    keep = write.reshape(*write.shape, *([1] * (src.dim() - 2)))
    dest[rows, slot] = torch.where(keep, src.to(dest.dtype), old)


def merge_into_(store, new, rows):
    """store := the best `M` (its size) of store ∪ new, for the rows where `rows` [B] is True, in place.

    store, new: (s [B, S], p [B, S], k [B, S, Hkv, D], v); every real entry of `new` is later than those of
    `store`. When the union has more than M real entries exactly M are kept, so every freed slot is
    refilled."""
    s, p = store[0], store[1]
    size = s.shape[1]
    key = order_key(torch.cat([s, new[0]], -1), torch.cat([p, new[1]], -1))
    real = key != _NO_KEY
    if key.shape[-1] > size:
        kth = torch.kthvalue(key, key.shape[-1] - size + 1, dim=-1, keepdim=True).values  # M-th largest
        keep = real & (key >= kth)  # real keys are distinct: at most M, all of them when fewer are real
    else:
        keep = real
    free, incoming = ~keep[:, :size], keep[:, size:]
    free_rank = torch.cumsum(free.to(torch.int32), -1) - 1  # slot i is the free_rank[i]-th free slot
    new_rank = torch.cumsum(incoming.to(torch.int32), -1) - 1  # entry j is the new_rank[j]-th newcomer
    # the newcomer of rank r sits at index source[r] of the new set (the others scatter to a spare column)
    count = incoming.shape[-1]
    source = torch.zeros(s.shape[0], count + 1, dtype=torch.long, device=s.device).scatter(
        -1, torch.where(incoming, new_rank, count).long(),
        torch.arange(count, device=s.device).expand_as(new_rank))[:, :count]
    refill = free & (free_rank < incoming.sum(-1, keepdim=True)) & rows[:, None]
    from_slot = torch.gather(source, -1, free_rank.clamp(0, max(count - 1, 0)).long())  # (B, M)
    for dest, src in zip(store, new):
        picked = _rows_at(src, from_slot)
        keep_shape = refill.reshape(*refill.shape, *([1] * (dest.dim() - 2)))
        dest.copy_(torch.where(keep_shape, picked.to(dest.dtype), dest))


def insert_token_(tokens, token, valid):
    """tokens := the best n (its size) of tokens ∪ {token} for the rows where `valid` [B], in place: the
    token takes the first empty slot, else the worst entry's slot if it ranks above it."""
    s, p = tokens[0], tokens[1]
    key = order_key(s, p)
    token_key = order_key(token[0][:, None], token[1][:, None])[:, 0]
    empty = key == _NO_KEY
    has_empty = empty.any(-1)
    worst_key, worst = key.min(-1)
    slot = torch.where(has_empty, empty.to(torch.int8).argmax(-1), worst)  # argmax: the first empty slot
    write = valid & (has_empty | (token_key > worst_key))
    for dest, src in zip(tokens, token):
        _write_slots_(dest, slot[:, None], src[:, None], write[:, None])


def decode_sets_step_(store, prev, cur, token, at_boundary, valid, rotate=True):
    """One decoding token's update of the eidetic sets, in place (DESIGN.md §3.4).

    store (size M_e), prev and cur (size n_e): (s [B, S] float32, p [B, S] int64, k [B, S, Hkv, D], v);
    token: (s [B], p [B], k [B, Hkv, D], v); at_boundary [B]: the token opens a chunk (valid rows only);
    valid [B]. Entering chunk c, chunk c-2's candidates (prev) join the store and chunk c-1's (cur) wait
    one more chunk; then the token competes for cur. `rotate=False` skips the chunk rotation (the caller
    knows no row is at a boundary)."""
    if rotate:
        if store[0].shape[1] > 0:
            merge_into_(store, prev, at_boundary)
        for dest, src in zip(prev, cur):
            dest.copy_(torch.where(at_boundary.reshape(-1, *([1] * (dest.dim() - 1))), src, dest))
        cur[0].masked_fill_(at_boundary[:, None], float("-inf"))
        cur[1].masked_fill_(at_boundary[:, None], EMPTY)
    insert_token_(cur, token, valid)
