"""torch.compile through the whole model on CPU (use_kernels=False): compiled training steps equal eager ones.

Inductor (the default backend; on CPU it needs a C++ compiler, else aot_eager stands in) checks the
numerics of `torch.compile(model)`; `fullgraph=True` with the cheaper aot_eager backend checks that the
training forward (parallel form, no cache) is one graph, through every mixer's code. Tiny models and
short sequences keep compile times short. The batch is conftest's `left_padded_batch`: the model moves each
row's padding behind its tokens in-graph.
"""

import os
import shutil

import pytest
import torch

import bmojo
from conftest import left_padded_batch, random_ids, tiny_model


def training_model(seed=0, **overrides):
    return tiny_model(seed, use_kernels=False, **overrides).train()


def step(model, inputs):
    """Loss, logits and every parameter's gradient of one training step. The logits are None under the
    fused linear + cross-entropy loss (config.fused_linear_cross_entropy, on by default), which never forms
    them; the loss and the lm_head / embedding gradients then check that path."""
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    params = getattr(model, "_orig_mod", model).named_parameters()  # a compiled model wraps the original
    grads = {name: p.grad.clone() for name, p in params if p.grad is not None}
    return out.loss.detach(), None if out.logits is None else out.logits.detach(), grads


def assert_steps_equal(eager, compiled, atol=1e-5, rtol=1e-4):
    (loss, logits, grads), (c_loss, c_logits, c_grads) = eager, compiled
    torch.testing.assert_close(c_loss, loss, atol=atol, rtol=rtol)
    if logits is None or c_logits is None:
        assert logits is None and c_logits is None
    else:
        torch.testing.assert_close(c_logits, logits, atol=atol, rtol=rtol)
    assert c_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(c_grads[name], grads[name], atol=atol, rtol=rtol, msg=name)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# Inductor on CPU compiles C++ with g++ (or $CXX); without one, aot_eager still checks the traced graphs.
DEFAULT_BACKEND = "inductor" if shutil.which(os.environ.get("CXX", "g++")) else "aot_eager"


def test_compiled_model_matches_eager():
    print(f"backend: {DEFAULT_BACKEND}")
    model = training_model(num_hidden_layers=1)
    inputs = left_padded_batch()
    eager = step(model, inputs)
    compiled = step(torch.compile(model, backend=DEFAULT_BACKEND), inputs)
    assert_steps_equal(eager, compiled)


def test_training_forward_is_one_graph():
    # fullgraph=True raises at the first graph break. A B'MOJO layer runs the code of the Mamba-2 and
    # sliding-window layers too (its fading memory and window); full attention has a path of its own.
    kinds = ["bmojo", "full_attention"]
    model = training_model(num_hidden_layers=len(kinds), mixer_types=kinds)
    inputs = left_padded_batch()
    eager = step(model, inputs)
    compiled_model = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert_steps_equal(eager, step(compiled_model, inputs), atol=1e-6, rtol=1e-5)
    # another length compiles once more, with dynamic shapes, still without a graph break
    shorter = {name: t[:, :13] for name, t in inputs.items()}
    assert_steps_equal(step(model, shorter), step(compiled_model, shorter), atol=1e-6, rtol=1e-5)


def recording_aot_eager(graphs):
    """aot_eager that keeps each graph Dynamo hands it (before AOTAutograd), to look at its layer calls."""
    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)
    return backend


def layer_subgraph_calls(graph):
    """Identifiers of the nested compile regions (one per compiled layer structure) each call invokes."""
    return [node.args[1] for node in graph.graph.nodes
            if node.op == "call_function" and node.target is torch.ops.higher_order.invoke_subgraph]


needs_nested_regions = pytest.mark.skipif(
    getattr(torch.compiler, "nested_compile_region", None) is None
    or os.environ.get("BMOJO_NESTED_COMPILE", "1") == "0",
    reason="torch.compiler.nested_compile_region (torch >= 2.8) is off")

ALTERNATING = ["bmojo", "full_attention", "bmojo", "full_attention"]


@pytest.fixture
def parallel_regions(monkeypatch):
    """The parallel form's regions are opt-in (BMOJO_NESTED_COMPILE_PARALLEL=1): on for this test."""
    from bmojo.modeling_bmojo import modeling
    monkeypatch.setattr(modeling, "PARALLEL_REGIONS", True)


@needs_nested_regions
def test_training_compiles_each_layer_kind_once(parallel_regions):
    # The parallel form is traced once per layer kind (forward and backward), not once per layer: four
    # layers of two kinds call two subgraphs, each twice, in one graph; the step still equals eager.
    model = training_model(num_hidden_layers=len(ALTERNATING), mixer_types=ALTERNATING)
    inputs, graphs = left_padded_batch(), []
    eager = step(model, inputs)
    compiled = step(torch.compile(model, backend=recording_aot_eager(graphs), fullgraph=True), inputs)
    assert_steps_equal(eager, compiled, atol=1e-6, rtol=1e-5)
    calls = layer_subgraph_calls(graphs[0])
    assert len(graphs) == 1 and len(calls) == len(ALTERNATING)
    assert calls[0] == calls[2] and calls[1] == calls[3] and calls[0] != calls[1]


@needs_nested_regions
def test_compiled_prefill_compiles_each_layer_kind_once(parallel_regions):
    # prefill fills each layer's cache state in place inside its region: logits and states equal eager
    torch.manual_seed(0)
    cfg = bmojo.preset_config("tiny", initializer_range=0.2, use_kernels=False,
                              num_hidden_layers=len(ALTERNATING), mixer_types=ALTERNATING)
    model = bmojo.BMojoForCausalLM(cfg).eval()
    inputs, graphs = left_padded_batch(), []
    del inputs["labels"]
    compiled_model = torch.compile(model, backend=recording_aot_eager(graphs), fullgraph=True)
    with torch.no_grad():
        eager = model(**inputs, use_cache=True)
        compiled = compiled_model(**inputs, use_cache=True)
    torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-6, rtol=1e-5)
    for e_state, c_state in zip(eager.past_key_values.states, compiled.past_key_values.states, strict=True):
        e_tensors, c_tensors = dict(e_state.named_tensors()), dict(c_state.named_tensors())
        assert e_tensors.keys() == c_tensors.keys() and e_tensors
        for name, e in e_tensors.items():
            torch.testing.assert_close(c_tensors[name], e, atol=1e-6, rtol=1e-5, msg=name)
    calls = layer_subgraph_calls(graphs[0])
    assert len(calls) == len(ALTERNATING) and len(set(calls)) == 2
    # the new states' reset traced as fills: Inductor has no lowering for foreach ops and called them as
    # functional fallbacks, each state tensor then copied back (~250 copies, 12 layers, H100)
    assert not [node for node in graphs[0].graph.nodes if "_foreach_" in str(node.target)]


def test_compiled_step_with_gradient_checkpointing_equals_eager(parallel_regions):
    # a checkpointed layer cannot sit in a nested compile region: it is inlined, and the step is unchanged.
    # The unfused loss here, so that a compiled training step's logits are compared too.
    model = training_model(num_hidden_layers=2, mixer_types=["bmojo", "bmojo"],
                           fused_linear_cross_entropy=False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    inputs, graphs = left_padded_batch(), []
    eager = step(model, inputs)
    compiled = step(torch.compile(model, backend=recording_aot_eager(graphs), fullgraph=True), inputs)
    assert_steps_equal(eager, compiled, atol=1e-6, rtol=1e-5)
    assert layer_subgraph_calls(graphs[0]) == []


def test_compiled_input_checks_still_fire():
    # under compile the value checks are in-graph asserts (RuntimeError, same message), not graph breaks
    model = torch.compile(training_model(num_hidden_layers=1), backend="aot_eager", fullgraph=True)
    ids = random_ids(1, 9)
    ids[0, 3] = 128  # vocab_size is 128
    with pytest.raises(RuntimeError, match="input_ids must lie in"):
        model(input_ids=ids)


def test_fused_on_cuda_is_traced_inline_when_the_model_is_compiled(monkeypatch):
    """`fused_on_cuda` runs its torch.compile'd copy outside a compiled region (where Triton is allowed)
    and the plain function inside one, so a compiled model never nests a compiled call."""
    from bmojo.kernels import dispatch

    real_compile, calls = torch.compile, []

    def recording_compile(fn, **kwargs):
        def compiled(*args):
            calls.append(fn.__name__)
            return fn(*args)
        return compiled

    monkeypatch.setattr(torch, "compile", recording_compile)

    @dispatch.fused_on_cuda
    def double(x):
        return 2 * x

    monkeypatch.setattr(dispatch, "use_triton", lambda tensor, use_kernels: use_kernels is not False)
    x = torch.arange(4.0)
    assert torch.equal(double(x), 2 * x) and calls == ["double"]  # eager, kernels allowed: the compiled copy
    assert torch.equal(double(x, use_kernels=False), 2 * x) and calls == ["double"]
    outer = real_compile(lambda t: double(t) + 1, backend="aot_eager", fullgraph=True)
    assert torch.equal(outer(x), 2 * x + 1) and calls == ["double"]  # inside a compiled region: inline


def test_rope_angles_of_sequences_are_one_opaque_op_under_compile():
    """Compiled, the RoPE angles of a whole sequence come from the op bmojo::rope_cos_sin (so Inductor cannot
    inline cos / sin into every rotation); one position per row stays inline; both equal the eager values."""
    from bmojo.modeling_bmojo.common import rope_angles
    graphs = []

    def keep_graph(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    for length, op_expected in ((6, True), (1, False)):
        torch._dynamo.reset()
        graphs.clear()
        positions = torch.arange(2 * length).view(2, length) + 3
        compiled = torch.compile(lambda p: rope_angles(p, 16, 10000.0), backend=keep_graph, fullgraph=True)
        got, want = compiled(positions), rope_angles(positions, 16, 10000.0)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
        assert want[0].shape == (2, length, 1, 8)
        assert ("rope_cos_sin" in graphs[0]) == op_expected, graphs[0]


def inductor_region_step(model, inputs):
    return step(torch.compile(model, backend="inductor"), inputs)


@needs_nested_regions
@pytest.mark.skipif(DEFAULT_BACKEND != "inductor", reason="needs Inductor (a C++ compiler)")
def test_inductor_reused_parallel_region_gradients(parallel_regions):
    """Why the parallel form's regions stay opt-in. A region called twice (two layers of one kind) gets wrong
    gradients under Inductor on torch 2.13: the backward region writes its input gradient into the buffer
    of its incoming gradient, which the caller then reuses (upstream: pytorch/pytorch#192840, #193960,
    "silently-wrong gradients from subgraphs inheriting bw_donated_idxs"). With Inductor's buffer reuse off
    the step equals eager. When torch fixes it the last assertion fails: then turn PARALLEL_REGIONS on."""
    model = training_model(num_hidden_layers=2, mixer_types=["full_attention"] * 2)
    inputs = left_padded_batch()
    eager = step(model, inputs)
    with torch._inductor.config.patch(allow_buffer_reuse=False):
        assert_steps_equal(eager, inductor_region_step(model, inputs))
    torch._dynamo.reset()
    _, _, grads = inductor_region_step(model, inputs)
    wrong = [name for name in grads
             if not torch.allclose(grads[name], eager[2][name], atol=1e-5, rtol=1e-4)]
    assert wrong, "torch no longer corrupts reused regions' gradients: PARALLEL_REGIONS can be turned on"


@pytest.mark.parametrize("cache_len", [None, 64])
def test_compiled_prefill_into_a_reused_cache_equals_eager(cache_len):
    """A compiled prefill resets only the state tensors it does not overwrite in full (`PREFILL_WRITES_ALL`:
    each reset tensor is a fill kernel of its own there). Into a cache that held another sequence and is
    filled with garbage (NaN, stray positions), of every mixer kind and a full-attention buffer longer than
    the prompt (cache_len 64), its logits, decode steps and states equal an eager prefill's into a new cache."""
    mixers = ["bmojo", "mamba2", "sliding_attention", "full_attention"]
    torch.manual_seed(0)
    cfg = bmojo.preset_config("tiny", initializer_range=0.2, use_kernels=False, num_hidden_layers=4,
                              mixer_types=mixers)
    model = bmojo.BMojoForCausalLM(cfg).eval()
    inputs, graphs = left_padded_batch(), []
    del inputs["labels"]
    with torch.no_grad():
        reused = bmojo.BMojoCache(cfg, max_cache_len=cache_len)
        model(random_ids(2, 30, seed=9), past_key_values=reused, use_cache=True)
        for state in reused.states:
            for _, t in state.named_tensors():
                t.fill_(float("nan") if t.is_floating_point() else 3)
        reused.reset()
        compiled_model = torch.compile(model, backend=recording_aot_eager(graphs), fullgraph=True)
        compiled = compiled_model(**inputs, past_key_values=reused, use_cache=True)
        eager = model(**inputs, use_cache=True)
        torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-6, rtol=1e-5)
        fresh, mask = eager.past_key_values, inputs["attention_mask"]
        for t in range(3):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            token = random_ids(2, 1, seed=20 + t)
            got = model(token, past_key_values=reused, attention_mask=mask).logits
            want = model(token, past_key_values=fresh, attention_mask=mask).logits
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # the fills: the reset's of the full-attention layer's keys, values and positions (a full reset: 26) and
    # the cache's column count
    fills = [node for node in graphs[0].graph.nodes if str(node.target).endswith("fill_")]
    assert len(fills) == 4, [str(node.target) for node in fills]
