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


def chunk_candidates(scores, valid, window, per_chunk):
    """Each chunk's `per_chunk` best tokens. scores [B, T] float, valid [B, T] bool.

    Returns (cand_scores [B, NC, n_e], cand_pos [B, NC, n_e]) with NC = ceil(T / w)."""
    batch, seqlen = scores.shape
    nchunks = -(-seqlen // window)
    pad = nchunks * window - seqlen
    s = scores.float().masked_fill(~valid, float("-inf"))
    s = torch.nn.functional.pad(s, (0, pad), value=float("-inf")).reshape(batch, nchunks, window)
    pos = torch.arange(nchunks * window, device=scores.device).reshape(1, nchunks, window)
    pos = pos.expand(batch, -1, -1)
    cand_scores, cand_pos, _, _ = take_best(s, pos, per_chunk)
    return cand_scores, cand_pos


def merge_sets(scores_a, pos_a, scores_b, pos_b, k):
    """Best k of the union of two sets, every real token of `b` later than every one of `a` (each set in
    position order). Returns (scores, pos, index into cat([a, b], -1), occupied)."""
    scores = torch.cat([scores_a, scores_b], dim=-1)
    pos = torch.cat([pos_a, pos_b], dim=-1)
    return take_best(scores, pos, scores.shape[-1] if k is None else k)


def eidetic_stores(cand_scores, cand_pos, capacity):
    """The store of every chunk. E_0 = E_1 = {}; E_c = best `capacity` of E_{c-1} and chunk c-2's candidates.

    capacity None keeps every candidate. Returns (store_scores, store_pos) [B, NC, M]."""
    batch, nchunks, per_chunk = cand_scores.shape
    size = per_chunk * max(nchunks - 2, 0) if capacity is None else capacity
    store_s = cand_scores.new_full((batch, size), float("-inf"))
    store_p = cand_pos.new_full((batch, size), EMPTY)
    all_s, all_p = [], []
    for c in range(nchunks):
        if c >= 2:
            store_s, store_p, _, _ = merge_sets(store_s, store_p, cand_scores[:, c - 2], cand_pos[:, c - 2],
                                                size)
        all_s.append(store_s)
        all_p.append(store_p)
    return torch.stack(all_s, dim=1), torch.stack(all_p, dim=1)


def innovation_scores(keys, predicted_keys):
    """e_t = ||k_t - k̂_t||^2 / d_k, averaged over KV heads. keys, predicted [B, T, Hkv, D] -> [B, T]."""
    return (keys.float() - predicted_keys.float()).pow(2).mean(dim=(-1, -2))
