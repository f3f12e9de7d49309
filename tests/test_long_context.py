"""Long inputs: finite logits far past the training length, and decoding memory that stays bounded."""

import pytest
import torch

from conftest import cache_of, random_ids, tiny_model


@torch.no_grad()
def test_3000_tokens_past_a_256_token_training_context():
    model = tiny_model(max_position_embeddings=256)  # the recorded training context; nothing depends on it
    logits = model(random_ids(1, 3000)).logits
    assert logits.shape == (1, 3000, 128)
    assert bool(torch.isfinite(logits).all())


@torch.no_grad()
@pytest.mark.parametrize("mixers", [["bmojo", "bmojo"], ["mamba2", "sliding_attention"]])
def test_decoding_memory_does_not_grow(mixers):
    model = tiny_model(mixer_types=mixers)
    w = model.config.window_size
    ids = random_ids(1, 12 * w + 1)
    cache = cache_of(model(ids[:, :1], use_cache=True))
    sizes = {}
    for t in range(1, ids.shape[1]):
        model(ids[:, t:t + 1], cache=cache, attention_mask=torch.ones(1, t + 1, dtype=torch.long))
        if t in (10 * w, 11 * w, 12 * w):
            sizes[t] = (cache.nbytes(), {k: tuple(v.shape) for s in cache.states for k, v in s.named_tensors()})
    assert sizes[10 * w] == sizes[11 * w] == sizes[12 * w]
