"""Innovation selection for the eidetic store, in plain PyTorch.

B'MOJO (Zancato et al., 2024, Sec. 3) keeps a token in its eidetic memory when the fading memory
could not predict it. Given per-token innovation scores, tokens are ranked by (score descending,
position ascending): ties go to the earlier token, and every selection below is a top-k under
that one total order, so the parallel form and the token-by-token form pick the same tokens.

  - each chunk of w tokens proposes its n_e best tokens as candidates;
  - the store E_c of chunk c holds the M_e best candidates of chunks 0..c-2.

Empty slots carry score -inf and position EMPTY; sets are kept sorted by position.
"""

import torch

EMPTY = torch.iinfo(torch.int64).max


def rank_topk(scores, pos, k):
    """Indices (along the last dim) of the k best entries by (score desc, pos asc), returned sorted by
    position (empty slots last). scores float [..., S], pos int64 [..., S]; k <= S."""
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
    pos = torch.arange(nchunks * window, device=scores.device).reshape(1, nchunks, window).expand(batch, -1, -1)
    best = rank_topk(s, pos, per_chunk)
    cand_scores = torch.gather(s, -1, best)
    cand_pos = torch.gather(pos, -1, best).masked_fill(torch.isneginf(cand_scores), EMPTY)
    return cand_scores, cand_pos


def merge_sets(scores_a, pos_a, scores_b, pos_b, k):
    """Best k of the union of two sets. Returns (scores, pos, index into cat([a, b], -1))."""
    scores = torch.cat([scores_a, scores_b], dim=-1)
    pos = torch.cat([pos_a, pos_b], dim=-1)
    k = scores.shape[-1] if k is None else k
    pick = rank_topk(scores, pos, k)
    picked_scores = torch.gather(scores, -1, pick)
    picked_pos = torch.gather(pos, -1, pick).masked_fill(torch.isneginf(picked_scores), EMPTY)
    return picked_scores, picked_pos, pick


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
            store_s, store_p, _ = merge_sets(store_s, store_p, cand_scores[:, c - 2], cand_pos[:, c - 2], size)
        all_s.append(store_s)
        all_p.append(store_p)
    return torch.stack(all_s, dim=1), torch.stack(all_p, dim=1)


def innovation_scores(keys, predicted_keys):
    """e_t = ||k_t - k̂_t||^2 / d_k, averaged over KV heads. keys, predicted [B, T, Hkv, D] -> [B, T]."""
    return (keys.float() - predicted_keys.float()).pow(2).mean(dim=(-1, -2))
