"""generate() works unchanged on a BMojoCache: greedy equals an argmax loop, sampling and beams run,
left-padded batches continue each row as it would alone."""

import pytest
import torch

import bmojo
from conftest import cache_of, random_ids, tiny_model

MIXED = ["bmojo", "mamba2", "sliding_attention", "full_attention"]


@torch.no_grad()
def argmax_loop(model, ids, steps):
    for _ in range(steps):
        nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return ids


@pytest.mark.parametrize("mixers", [None, MIXED])
def test_greedy_equals_argmax_loop(mixers):
    model = tiny_model(**({} if mixers is None else dict(num_hidden_layers=4, mixer_types=mixers)))
    ids = random_ids(2, 13)
    out = model.generate(ids, max_new_tokens=30, do_sample=False)
    assert torch.equal(out, argmax_loop(model, ids, 30))


def test_generate_builds_a_bmojo_cache():
    model = tiny_model()
    out = model.generate(random_ids(1, 5), max_new_tokens=3, return_dict_in_generate=True)
    assert isinstance(cache_of(out), bmojo.BMojoCache)
    assert cache_of(out).get_seq_length() == 7  # 5 prompt tokens + 2 decoded inputs


@torch.no_grad()
def test_cache_accepted_under_both_names():
    """transformers 5.24 calls the cache `cache`; 5.13-5.23 call it `past_key_values`: both must continue it."""
    model = tiny_model()
    ids = random_ids(2, 12)
    full = model(ids).logits[:, -1]
    for name in ("cache", "past_key_values"):
        prefix = model(ids[:, :11], use_cache=True)
        cache = getattr(prefix, bmojo.modeling_bmojo.cache.CACHE_NAME)
        step = model(ids[:, 11:], **{name: cache}).logits[:, -1]
        torch.testing.assert_close(step, full, atol=1e-4, rtol=0)
    other = model(ids[:, :11], use_cache=True)
    with pytest.raises(ValueError, match="not two different ones"):
        model(ids[:, 11:], cache=cache, past_key_values=getattr(other, bmojo.modeling_bmojo.cache.CACHE_NAME))


def test_sampling_and_num_return_sequences():
    model = tiny_model()
    torch.manual_seed(0)
    out = model.generate(random_ids(2, 9), max_new_tokens=12, do_sample=True, top_k=20, num_return_sequences=3)
    assert out.shape == (6, 21)
    assert int(out.min()) >= 0 and int(out.max()) < model.config.vocab_size


def test_beam_search_matches_rescoring():
    model = tiny_model()
    ids = random_ids(1, 10)
    out = model.generate(ids, max_new_tokens=8, num_beams=4, num_return_sequences=4, do_sample=False,
                         output_scores=True, return_dict_in_generate=True, length_penalty=0.0)
    # Each returned beam's score is the sum of its tokens' log-probs under an uncached forward.
    with torch.no_grad():
        logp = torch.log_softmax(model(out.sequences, use_cache=False).logits.float(), -1)
    new = out.sequences[:, 10:]
    direct = logp[:, 9:-1].gather(-1, new[..., None])[..., 0].sum(-1)
    torch.testing.assert_close(out.sequences_scores, direct, atol=1e-3, rtol=0)


def test_left_padded_batch_equals_rows_alone():
    model = tiny_model(num_hidden_layers=4, mixer_types=MIXED)
    rows = [random_ids(1, n, seed=n) for n in (19, 7, 12)]
    width = max(r.shape[1] for r in rows)
    batch = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, width - r.shape[1]:], mask[i, width - r.shape[1]:] = r[0], 1
    out = model.generate(batch, attention_mask=mask, max_new_tokens=25, do_sample=False, pad_token_id=0)
    for i, r in enumerate(rows):
        alone = model.generate(r, max_new_tokens=25, do_sample=False)
        assert torch.equal(out[i, width:], alone[0, r.shape[1]:]), f"row {i}"
