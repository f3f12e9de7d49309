"""The parallel form (one forward) and the recurrent form (prefill + token-by-token decode) are one
function: logits agree for every split point, across chunks and with a full, evicting store."""

import pytest
import torch

from conftest import cache_of, random_ids, tiny_model

from bmojo.kernels.innovation.naive import EMPTY
from bmojo.kernels.state_fill.naive import NO_TOKEN
from bmojo.modeling_bmojo.state import State, reset_states_

KINDS = {
    "bmojo": ["bmojo", "bmojo"],
    "mamba2": ["mamba2", "mamba2"],
    "sliding_attention": ["sliding_attention", "sliding_attention"],
    "full_attention": ["full_attention", "full_attention"],
    "mixed": ["bmojo", "mamba2", "sliding_attention", "full_attention"],
}


def prefill_then_decode(model, ids, split):
    out = model(ids[:, :split], use_cache=True)
    cache, logits = cache_of(out), [out.logits]
    for t in range(split, ids.shape[1]):
        mask = torch.ones(ids.shape[0], t + 1, dtype=torch.long)
        step = model(ids[:, t:t + 1], cache=cache, attention_mask=mask)
        logits.append(step.logits)
    return torch.cat(logits, dim=1), cache


@torch.no_grad()
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_parallel_form_is_causal(kind):
    """Changing the tokens from position t on changes no logit before t: the one-forward form (the one
    training and perplexity use) never reads the future, for every mixer, across chunks and the store."""
    layers = KINDS[kind]
    model = tiny_model(num_hidden_layers=len(layers), mixer_types=layers)
    ids = random_ids(2, 41, seed=5)
    full = model(ids, use_cache=False).logits
    for t in (1, 8, 17, 40):
        other = torch.cat([ids[:, :t], random_ids(2, 41 - t, seed=t)], dim=1)
        changed = model(other, use_cache=False).logits
        torch.testing.assert_close(changed[:, :t], full[:, :t], atol=1e-5, rtol=0)
        assert not torch.allclose(changed[:, t:], full[:, t:])  # the change does reach the later logits


@torch.no_grad()
@pytest.mark.parametrize("length", [6, 30, 88])  # < w; several chunks; store full and evicting (M_e = 16)
def test_bmojo_every_split_point(length):
    model = tiny_model()
    ids = random_ids(2, length, seed=length)
    full = model(ids, use_cache=False).logits
    for split in range(1, length + 1):
        got, cache = prefill_then_decode(model, ids, split)
        torch.testing.assert_close(got, full, atol=1e-4, rtol=0)
    if length == 88:
        store_scores = cache.states[0].store.s
        assert bool(torch.isfinite(store_scores).all()), "the store should be full"
        # 8 complete chunks before the last one proposed 4 candidates each: 32 > 16, so some were evicted.
        assert store_scores.shape[1] == 16


@torch.no_grad()
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_mixer_type(kind):
    layers = KINDS[kind]
    model = tiny_model(num_hidden_layers=len(layers), mixer_types=layers)
    ids = random_ids(2, 41, seed=3)
    full = model(ids, use_cache=False).logits
    for split in (1, 7, 8, 9, 23, 40):
        got, _ = prefill_then_decode(model, ids, split)
        torch.testing.assert_close(got, full, atol=1e-4, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("overrides", [
    dict(qk_norm=True, tie_fading_projections=False),
    dict(eidetic_capacity=0),  # B'MOJO-F
    dict(eidetic_capacity=None),  # unbounded store
    dict(fading_tokens=0),
    dict(fading_tokens=3, window_size=5, eidetic_tokens_per_chunk=2, eidetic_capacity=3),
    dict(num_key_value_heads=2, ssm_n_groups=2, conv_kernel=2, ssm_chunk_size=5),
])
def test_config_variants(overrides):
    model = tiny_model(**overrides)
    ids = random_ids(2, 45, seed=5)
    full = model(ids, use_cache=False).logits
    for split in (1, 16, 17, 33):
        got, _ = prefill_then_decode(model, ids, split)
        torch.testing.assert_close(got, full, atol=1e-4, rtol=0)


@torch.no_grad()
def test_multi_token_continuation():
    model = tiny_model()
    ids = random_ids(2, 50, seed=9)
    full = model(ids, use_cache=False).logits
    first = model(ids[:, :20], use_cache=True)
    second = model(ids[:, 20:], cache=cache_of(first))
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full, atol=1e-4, rtol=0)


@torch.no_grad()
def test_left_padded_prefill_and_decode_match_rows_alone():
    model = tiny_model()
    a, b = random_ids(1, 37, seed=1), random_ids(1, 21, seed=2)
    batch = torch.zeros(2, 37, dtype=torch.long)
    batch[0], batch[1, 16:] = a[0], b[0]
    mask = torch.zeros(2, 37, dtype=torch.long)
    mask[0], mask[1, 16:] = 1, 1
    out = model(batch, attention_mask=mask, use_cache=True)
    torch.testing.assert_close(out.logits[0], model(a).logits[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits[1, 16:], model(b).logits[0], atol=1e-5, rtol=0)
    # Decode a few more tokens on both: each row continues exactly as it would alone.
    extra = random_ids(2, 12, seed=4)
    cache, full_a, full_b = cache_of(out), torch.cat([a, extra[:1]], 1), torch.cat([b, extra[1:]], 1)
    ref_a, ref_b = model(full_a).logits[0, 37:], model(full_b).logits[0, 21:]
    for t in range(12):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        step = model(extra[:, t:t + 1], cache=cache, attention_mask=mask).logits
        torch.testing.assert_close(step[0, 0], ref_a[t], atol=1e-4, rtol=0)
        torch.testing.assert_close(step[1, 0], ref_b[t], atol=1e-4, rtol=0)


INITIAL = {"pos": NO_TOKEN, "s": float("-inf"), "p": EMPTY}  # every other state tensor starts at zero


@torch.no_grad()
def test_states_reset_in_groups_to_their_initial_values():
    """`reset_states_` (one foreach call per device, dtype and value instead of a fill per tensor): every
    tensor of every mixer's state, new (torch.empty) or overwritten, gets its empty-slot marker or zero."""
    model = tiny_model(mixer_types=["bmojo", "mamba2", "sliding_attention", "full_attention"],
                       num_hidden_layers=4)
    states = [layer.mixer.new_state(2, torch.device("cpu"), torch.float32, 40) for layer in model.model.layers]
    for round_ in range(2):
        reset_states_(states)
        names = {name.rsplit(".", 1)[-1] for state in states for name, _ in state.named_tensors()}
        assert {"pos", "s", "p", "k", "v", "ssm", "conv", "f_last"} <= names
        for state in states:
            for name, t in state.named_tensors():
                want = INITIAL.get(name.rsplit(".", 1)[-1], 0)
                assert (t == want).all(), (name, round_)
                t.fill_(7)  # garbage for the next round


def test_state_fields_name_every_tensor():
    """The states list their tensors by name (`FIELDS`: Dynamo cannot trace vars() on torch 2.11), so a tensor
    added to a state but not to its list would be missed by the reset, beam reordering and batch changes."""
    model = tiny_model(mixer_types=["bmojo", "mamba2", "sliding_attention", "full_attention"],
                       num_hidden_layers=4)
    pending = [layer.mixer.new_state(2, torch.device("cpu"), torch.float32, 40) for layer in model.model.layers]
    seen = set()
    while pending:
        state = pending.pop()
        seen.add(type(state).__name__)
        held = {name for name, value in vars(state).items() if isinstance(value, (torch.Tensor, State))}
        assert held == {name for name, _ in state._fields()}, type(state).__name__
        pending += [value for _, value in state._fields() if isinstance(value, State)]
    assert seen == {"BMojoState", "Mamba2State", "KeyValueRing", "FullKeyValues", "TokenSet", "AttentionState"}


@torch.no_grad()
def test_reused_cache_equals_a_new_one():
    """A cache that held one sequence and is prefilled with another (a shorter one: slots the prefill does not
    write) gives the logits a new cache gives, prefill and decode steps, in the same tensors: nothing of the
    first sequence leaks. Garbage (NaN, stray positions) stands in for what torch.empty may hand a new state;
    the prefill writes every slot today (this passes without the reset too), the reset keeps it so whatever
    fills the states."""
    model = tiny_model()
    first, second = random_ids(2, 45, seed=5), random_ids(2, 45, seed=6)
    reused = cache_of(model(first, use_cache=True))
    addresses = [t.data_ptr() for state in reused.states for _, t in state.named_tensors()]
    for state in reused.states:
        for _, t in state.named_tensors():
            t.fill_(float("nan") if t.is_floating_point() else 3)
    reused.reset()
    got = model(second[:, :6], cache=reused, use_cache=True).logits
    want_out = model(second[:, :6], use_cache=True)
    torch.testing.assert_close(got, want_out.logits, atol=0, rtol=0)
    assert addresses == [t.data_ptr() for state in reused.states for _, t in state.named_tensors()]
    fresh = cache_of(want_out)
    for t in range(6, 12):
        got = model(second[:, t:t + 1], cache=reused).logits
        want = model(second[:, t:t + 1], cache=fresh).logits
        torch.testing.assert_close(got, want, atol=0, rtol=0)
