"""Compiled decoding: the decode step traces as one graph (`fullgraph=True`), compiles once for a whole
generation (no recompilation per token), and gives the eager step's logits and tokens (DESIGN.md §5).

CPU stand-ins for what generate() does on CUDA: `torch.compile(..., fullgraph=True)` with a counting
backend around `aot_eager` (the graph transformers' CUDA-graph path would hand to inductor)."""

import copy

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import CompileConfig

import bmojo
from bmojo.modeling_bmojo.cache import CACHE_NAME, BMojoCache
from conftest import random_ids, tiny_model

MIXES = {
    "bmojo": ["bmojo", "bmojo"],
    "mixed": ["bmojo", "mamba2", "sliding_attention", "full_attention"],
}


def model_for(mix):
    return tiny_model(mixer_types=MIXES[mix], num_hidden_layers=len(MIXES[mix]))


def counting_backend():
    """A torch.compile backend that counts the graphs it is handed and runs them through aot_eager.

    A function, not an object: transformers deep-copies its CompileConfig, which copies objects but
    not functions, so the count stays visible here."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def backend(gm, example_inputs, **kwargs):
        graphs.append(gm)
        return aot_autograd(fw_compiler=lambda g, _: make_boxed_func(g.forward))(gm, example_inputs)

    return backend, graphs


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _prefill(model, ids, mask, room):
    cache = BMojoCache(model.config, max_cache_len=room)
    out = model(ids, attention_mask=mask, cache=cache)
    return out, cache


@torch.no_grad()
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_decode_step_is_one_graph_and_equals_eager(mix):
    model = model_for(mix)
    ids = random_ids(2, 21, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # a left-padded row
    steps = 24  # crosses several chunk boundaries (w = 8): store merges happen inside the graph
    backend, graphs = counting_backend()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    eager_out, eager_cache = _prefill(model, ids, mask, 21 + steps)
    comp_out, comp_cache = _prefill(model, ids, mask, 21 + steps)
    eager_tok = comp_tok = eager_out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(steps):
        one = torch.ones(2, 1, dtype=torch.long)
        eager_logits = model(eager_tok, attention_mask=one, cache=eager_cache).logits
        comp_logits = compiled(comp_tok, attention_mask=one, cache=comp_cache).logits
        torch.testing.assert_close(comp_logits, eager_logits, atol=1e-5, rtol=1e-5)
        eager_tok = comp_tok = eager_logits[:, -1].argmax(-1, keepdim=True)
    assert len(graphs) == 1, f"the decode step compiled {len(graphs)} times in {steps} steps"
    assert comp_cache.get_seq_length() == eager_cache.get_seq_length() == 21 + steps
    assert torch.equal(comp_cache.lengths, eager_cache.lengths)


@torch.no_grad()
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_generate_with_compiled_step_equals_eager_token_for_token(mix):
    """256 greedy tokens through generate(), the decode step compiled by generate() itself."""
    model = model_for(mix)
    ids = random_ids(2, 12, seed=4)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    config = dict(max_new_tokens=256, do_sample=False, pad_token_id=0, eos_token_id=None)
    eager = model.generate(ids, attention_mask=mask, generation_config=GenerationConfig(**config))
    backend, graphs = counting_backend()
    compile_config = CompileConfig(backend=backend, fullgraph=True, mode=None)
    compile_config._compile_all_devices = True  # transformers' switch for compiling on CPU
    assert BMojoCache(model.config, max_cache_len=268).is_compileable
    compiled = model.generate(ids, attention_mask=mask, compile_config=compile_config,
                              generation_config=GenerationConfig(**config))
    assert len(graphs) == 1, f"generate() compiled the decode step {len(graphs)} times"
    assert torch.equal(compiled, eager)


def test_cache_is_compileable_only_with_fixed_size():
    config = bmojo.preset_config("tiny")
    assert BMojoCache(config).is_compileable
    unbounded = bmojo.preset_config("tiny", eidetic_capacity=None)
    assert not BMojoCache(unbounded).is_compileable
    full = bmojo.preset_config("tiny", mixer_types=["bmojo", "full_attention"])
    assert not BMojoCache(full).is_compileable  # a full-attention layer needs a known length
    assert BMojoCache(full, max_cache_len=64).is_compileable


@torch.no_grad()
def test_decode_steps_update_the_states_in_place():
    """Every tensor of the cache keeps its address across decode steps (what CUDA graphs need)."""
    model = model_for("mixed")
    out, cache = _prefill(model, random_ids(2, 10), None, 40)
    before = {(i, name): t.data_ptr() for i, s in enumerate(cache.states) for name, t in s.named_tensors()}
    before["lengths"], before["seen"] = cache.lengths.data_ptr(), cache.seen.data_ptr()
    for t in range(20):
        model(random_ids(2, 1, seed=t), cache=cache)
    after = {(i, name): t.data_ptr() for i, s in enumerate(cache.states) for name, t in s.named_tensors()}
    after["lengths"], after["seen"] = cache.lengths.data_ptr(), cache.seen.data_ptr()
    assert after == before


@torch.no_grad()
def test_full_attention_grows_eagerly_past_its_room():
    model = tiny_model(mixer_types=["bmojo", "full_attention"])
    ids = random_ids(1, 30, seed=5)
    full = model(ids).logits
    out, cache = _prefill(model, ids[:, :10], None, None)  # room for the prefill only
    logits = [out.logits]
    for t in range(10, 30):
        logits.append(model(ids[:, t:t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(logits, 1), full, atol=1e-4, rtol=0)


@torch.no_grad()
def test_reused_cache_after_reset_equals_a_fresh_one():
    """generate() on CUDA reuses its cache, cleared in place: a reset cache must forget everything."""
    model = model_for("mixed")
    first, second = random_ids(2, 17, seed=6), random_ids(2, 17, seed=7)
    fresh = model(second, cache=BMojoCache(model.config, max_cache_len=40))
    cache = BMojoCache(model.config, max_cache_len=40)
    model(first, cache=cache)
    model(random_ids(2, 1), cache=cache)
    pointers = [t.data_ptr() for s in cache.states for _, t in s.named_tensors()]
    cache.reset()
    again = model(second, cache=cache)
    assert [t.data_ptr() for s in cache.states for _, t in s.named_tensors()] == pointers
    torch.testing.assert_close(again.logits, fresh.logits, atol=0, rtol=0)
    step_fresh = model(random_ids(2, 1, seed=8), cache=getattr(fresh, CACHE_NAME)).logits
    step_again = model(random_ids(2, 1, seed=8), cache=cache).logits
    torch.testing.assert_close(step_again, step_fresh, atol=0, rtol=0)


@torch.no_grad()
def test_reused_cache_keeps_each_batch_size_allocation():
    """A reused cache going back to a batch size it held gets that size's buffers back (the addresses its
    CUDA graphs were recorded on), cleared: the result equals a fresh cache's."""
    model = model_for("mixed")
    cache = BMojoCache(model.config, max_cache_len=40)

    def pointers():
        return [t.data_ptr() for s in cache.states for _, t in s.named_tensors()] + [cache.lengths.data_ptr()]

    model(random_ids(2, 9, seed=1), cache=cache)
    two = pointers()
    for batch in (3, 1):
        cache.reset()
        model(random_ids(batch, 9, seed=batch), cache=cache)
        assert pointers() != two
    cache.reset()
    ids = random_ids(2, 17, seed=4)
    again = model(ids, cache=cache)
    assert pointers() == two
    fresh = model(ids, cache=BMojoCache(model.config, max_cache_len=40))
    torch.testing.assert_close(again.logits, fresh.logits, atol=0, rtol=0)
    step = random_ids(2, 1, seed=5)
    torch.testing.assert_close(model(step, cache=cache).logits,
                               model(step, cache=getattr(fresh, CACHE_NAME)).logits, atol=0, rtol=0)


def test_compiled_model_plain_forward_equals_eager():
    """torch.compile(model) (default settings) runs a plain training forward on CPU."""
    model = tiny_model()
    ids = random_ids(2, 20, seed=9)
    eager = model(ids, use_cache=False).logits
    compiled = torch.compile(copy.deepcopy(model), backend="aot_eager")
    torch.testing.assert_close(compiled(ids, use_cache=False).logits, eager, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_generate_batch_of_one_compiles_once():
    """With one row, a (1, 1) slice of the growing mask counts as contiguous but keeps the mask's stride:
    generate() must hand the step a fresh (1, 1) mask, or dynamo recompiles (and CUDA graphs re-record)
    at every token."""
    model = tiny_model()
    backend, graphs = counting_backend()
    compile_config = CompileConfig(backend=backend, fullgraph=True, mode=None)
    compile_config._compile_all_devices = True
    ids = random_ids(1, 9, seed=10)
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, pad_token_id=0,
                   compile_config=compile_config)
    assert len(graphs) == 1, f"generate() compiled the decode step {len(graphs)} times"
