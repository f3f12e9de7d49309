"""The eidetic store holds exactly what a brute-force top-k over eligible positions picks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bmojo.kernels.innovation import EMPTY, best_in_order, chunk_candidates, eidetic_stores, rank_topk
from conftest import cache_of, in_position_order, random_ids, tiny_model


def brute_force_stores(scores, valid, window, per_chunk, capacity):
    """Direct definition: sort positions by (score desc, position asc); E_c from chunks <= c-2."""
    length = len(scores)
    nchunks = -(-length // window)
    rank = lambda s: (-scores[s], s)  # noqa: E731
    cands = []
    for c in range(nchunks):
        chunk = [s for s in range(c * window, min(length, (c + 1) * window)) if valid[s]]
        cands.append(sorted(sorted(chunk, key=rank)[:per_chunk]))
    stores = []
    for c in range(nchunks):
        pool = [s for j in range(c - 1) for s in cands[j]]
        size = len(pool) if capacity is None else capacity
        stores.append(sorted(sorted(pool, key=rank)[:size]))
    return cands, stores


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 60), window=st.integers(1, 9), per_chunk=st.integers(1, 5),
    capacity=st.one_of(st.none(), st.integers(1, 12)), levels=st.integers(1, 4),
    data=st.data(),
)
def test_store_equals_brute_force(length, window, per_chunk, capacity, levels, data):
    per_chunk = min(per_chunk, window)
    # Few distinct score levels: many ties, which must go to the earlier token.
    scores = data.draw(st.lists(st.integers(0, levels), min_size=length, max_size=length))
    pad = data.draw(st.integers(0, length - 1))  # trailing padding, as the model lays rows out
    valid = [s < length - pad for s in range(length)]
    cand_s, cand_p = chunk_candidates(torch.tensor([scores], dtype=torch.float32), torch.tensor([valid]),
                                      window, per_chunk)
    store_s, store_p = eidetic_stores(cand_s, cand_p, capacity)
    cands, stores = brute_force_stores(scores, valid, window, per_chunk, capacity)
    for c in range(len(cands)):
        got = [p for p in cand_p[0, c].tolist() if p != EMPTY]
        assert got == cands[c]
        got = [p for p in store_p[0, c].tolist() if p != EMPTY]
        assert got == stores[c], "padding must never enter the store" if any(not valid[p] for p in got) else ""
        assert store_s.shape[-1] == (capacity if capacity is not None else store_s.shape[-1])
    # chunks in blocks (here of one or two chunks, as memory bounds them at long lengths): the same stores
    for block_entries in (1, 2 * (capacity or store_s.shape[-1]) + 2 * per_chunk + 1):
        blocked_s, blocked_p = eidetic_stores(cand_s, cand_p, capacity, block_entries=block_entries)
        assert torch.equal(blocked_p, store_p) and torch.equal(blocked_s, store_s)


@torch.no_grad()
def test_decoded_sets_equal_prefilled_sets():
    """Token-by-token selection keeps the same store, previous and current candidates as the parallel scan."""
    model = tiny_model()
    ids = random_ids(2, 75, seed=11)
    prefilled = cache_of(model(ids, use_cache=True))
    cache = cache_of(model(ids[:, :1], use_cache=True))
    for t in range(1, 75):
        model(ids[:, t:t + 1], cache=cache, attention_mask=torch.ones(2, t + 1, dtype=torch.long))
    for layer in range(2):
        for name in ("store", "prev", "cur"):
            got = in_position_order(getattr(cache.states[layer], name))
            want = in_position_order(getattr(prefilled.states[layer], name))
            assert torch.equal(got[0], want[0]), name
            for a, b in zip(got[1:], want[1:]):
                torch.testing.assert_close(a, b)
    assert bool(torch.isfinite(cache.states[0].store.s).all())  # full store (16 of 4 * 7 candidates)


@torch.no_grad()
def test_padding_never_enters_the_store():
    model = tiny_model()
    row = random_ids(1, 50, seed=12)
    padded = torch.cat([torch.zeros(1, 30, dtype=torch.long), row], 1)
    mask = torch.cat([torch.zeros(1, 30, dtype=torch.long), torch.ones(1, 50, dtype=torch.long)], 1)
    alone = cache_of(model(row, use_cache=True))
    both = cache_of(model(padded, attention_mask=mask, use_cache=True))
    for layer in range(2):
        for name in ("store", "prev", "cur"):
            assert torch.equal(getattr(both.states[layer], name).p, getattr(alone.states[layer], name).p)


def _ordered_union(gen, rows, size, levels):
    """Sets as the model merges them: real entries in position order (increasing, with gaps), then empty slots
    (-inf, EMPTY) mixed in, scores from few levels (ties), signs and -0.0 included."""
    scores = torch.randint(-levels, levels + 1, (rows, size), generator=gen).float() / 2
    scores[(scores == 0) & (torch.rand(rows, size, generator=gen) < 0.5)] = -0.0  # equal to +0.0
    pos = torch.cumsum(torch.randint(1, 4, (rows, size), generator=gen), dim=-1)
    empty = torch.rand(rows, size, generator=gen) < 0.3
    return scores.masked_fill(empty, float("-inf")), pos.masked_fill(empty, EMPTY)


@pytest.mark.parametrize("size,k", [(1, 1), (7, 3), (33, 32), (64, 64), (65, 17), (300, 32), (544, 512),
                                    (128, 128)])
def test_sort_free_selection_equals_argsort_reference(size, k):
    """The decode path's selection (pairwise counts up to 64 entries, k-th value above) picks exactly the
    tokens the argsort reference picks, in the same (position) order, empty slots last."""
    gen = torch.Generator().manual_seed(size * 1000 + k)
    for levels in (1, 3, 50):
        scores, pos = _ordered_union(gen, 16, size, levels)
        ref = rank_topk(scores, pos, k)
        ref_s = torch.gather(scores, -1, ref)
        ref_p = torch.gather(pos, -1, ref).masked_fill(torch.isneginf(ref_s), EMPTY)
        index, occupied = best_in_order(scores, pos, k)
        assert torch.equal(occupied, ~torch.isneginf(ref_s))
        assert torch.equal(torch.where(occupied, torch.gather(pos, -1, index), EMPTY), ref_p)
        assert torch.equal(torch.where(occupied, torch.gather(scores, -1, index), float("-inf")), ref_s)


def test_store_selection_launches_do_not_grow_with_chunks():
    """Every chunk's store comes from one selection (while one block holds them): the number of ops an eager
    prefill issues for it is the same for 40 chunks as for 64 (both past the pairwise-ranking size), where
    merging chunk by chunk grew by ~20 per chunk."""
    from conftest import CountOps

    def ops_for(nchunks, window=8, per_chunk=2):
        scores = torch.rand(2, nchunks * window, generator=torch.Generator().manual_seed(nchunks))
        valid = torch.ones_like(scores, dtype=torch.bool)
        cand_s, cand_p = chunk_candidates(scores, valid, window, per_chunk)
        with CountOps() as counter:
            eidetic_stores(cand_s, cand_p, 16)
        return counter.count

    assert ops_for(40) == ops_for(64)
