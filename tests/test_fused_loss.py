"""Chunked linear + cross-entropy (`modeling_bmojo/loss.py`): equal to the materialised-logits loss in value
and gradients, alone and inside `BMojoForCausalLM` training forwards, eager and compiled."""

import shutil

import pytest
import torch
import torch.nn.functional as F

import bmojo
from bmojo.modeling_bmojo.loss import default_chunk_size, linear_cross_entropy
from conftest import left_padded_batch, tiny_model


def reference(hidden, weight, labels):
    return F.cross_entropy(hidden @ weight.T, labels, reduction="sum", ignore_index=-100)


def inputs(n, d, vocab, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocab, d, generator=g, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.3] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, None])
def test_function_equals_cross_entropy(dtype, chunk_size):
    hidden, weight, labels = inputs(37, 16, 50, dtype, seed=chunk_size or 0)  # 37: not a multiple of 7
    loss = linear_cross_entropy(hidden, weight, labels, chunk_size=chunk_size)
    grads = torch.autograd.grad(loss * 0.7, (hidden, weight))  # a grad_output other than 1
    ref = reference(hidden, weight, labels)
    ref_grads = torch.autograd.grad(ref * 0.7, (hidden, weight))
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(loss, ref, **tol)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, **tol)


def test_all_ignored_and_no_grad():
    hidden, weight, labels = inputs(9, 8, 11, torch.float32, seed=1)
    loss = linear_cross_entropy(hidden, weight, torch.full_like(labels, -100))
    assert loss.item() == 0.0
    hidden.grad = None
    loss.backward()
    assert torch.count_nonzero(hidden.grad) == 0 and torch.count_nonzero(weight.grad) == 0
    with torch.no_grad():
        value = linear_cross_entropy(hidden, weight, labels, chunk_size=4)
    assert not value.requires_grad
    torch.testing.assert_close(value, reference(hidden, weight, labels).detach())


def test_bf16_gradient_dtypes():
    hidden, weight, labels = inputs(20, 8, 30, torch.float32, seed=2)
    h, w = hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()
    loss = linear_cross_entropy(h, w, labels, chunk_size=6)
    loss.backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == w.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, reference(h.float(), w.float(), labels), atol=0.5, rtol=2e-2)


@pytest.mark.parametrize("bad, name", [
    (dict(hidden=torch.zeros(3)), "hidden"),
    (dict(weight=torch.zeros(5, 3)), "weight"),
    (dict(labels=torch.zeros(4, dtype=torch.long)), "labels"),
    (dict(labels=torch.zeros(3, dtype=torch.int32)), "labels"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(ignore_index=1.5), "ignore_index"),
])
def test_bad_arguments_raise(bad, name):
    args = dict(hidden=torch.zeros(3, 4), weight=torch.zeros(5, 4), labels=torch.zeros(3, dtype=torch.long))
    args.update(bad)
    with pytest.raises(ValueError, match=name):
        linear_cross_entropy(**args)


def test_default_chunk_bounds_float32_logits():
    for vocab in (1, 128, 32000, 50280, 2 ** 29):
        rows = default_chunk_size(vocab)
        assert rows >= 1 and (rows == 1 or rows * vocab * 4 <= 2 ** 28)


def train_model(fused, seed=0, **overrides):
    return tiny_model(seed, use_kernels=False, fused_linear_cross_entropy=fused, **overrides).train()


def batch():
    inputs = left_padded_batch()
    inputs["labels"][0, 3:6] = -100  # ignored labels inside a row too
    return inputs


def step(model, **kwargs):
    model.zero_grad(set_to_none=True)
    out = model(**kwargs)
    out.loss.backward()
    params = getattr(model, "_orig_mod", model).named_parameters()
    return out, {name: p.grad.clone() for name, p in params if p.grad is not None}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("items", [None, torch.tensor(31)])
def test_model_loss_and_gradients_equal_unfused(tied, items):
    extra = {} if items is None else dict(num_items_in_batch=items)
    fused_out, fused_grads = step(train_model(True, tie_word_embeddings=tied), **batch(), **extra)
    plain_out, plain_grads = step(train_model(False, tie_word_embeddings=tied), **batch(), **extra)
    assert fused_out.logits is None and plain_out.logits is not None
    torch.testing.assert_close(fused_out.loss, plain_out.loss, atol=1e-6, rtol=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    # named_parameters() lists a tied lm_head weight once, as the embedding
    assert ("lm_head.weight" in plain_grads) == (not tied) and "model.embed_tokens.weight" in plain_grads
    for name in plain_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_eval_mode_returns_logits():
    model = train_model(True).eval()
    inputs = batch()
    out = model(**inputs)
    assert out.logits.shape == (2, 21, 128)
    plain = train_model(False).eval()(**inputs)
    torch.testing.assert_close(out.loss, plain.loss)


def test_bad_config_value_raises():
    with pytest.raises(ValueError, match="fused_linear_cross_entropy"):
        bmojo.preset_config("tiny", fused_linear_cross_entropy="yes")


@pytest.mark.slow  # Inductor compiles the model's C++ kernels: about 1-3 minutes on a shared CPU
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="Inductor needs g++")
def test_compiled_training_step_equals_eager():
    torch._dynamo.reset()
    try:
        model = train_model(True, num_hidden_layers=1)
        eager_out, eager_grads = step(model, **batch())
        compiled_out, compiled_grads = step(torch.compile(model), **batch())
    finally:
        torch._dynamo.reset()
    assert compiled_out.logits is None
    torch.testing.assert_close(compiled_out.loss, eager_out.loss, atol=1e-5, rtol=1e-4)
    assert compiled_grads.keys() == eager_grads.keys()
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_function_is_one_graph_under_aot_eager():
    torch._dynamo.reset()
    try:
        hidden, weight, labels = inputs(37, 16, 50, torch.float32, seed=3)
        fn = torch.compile(linear_cross_entropy, backend="aot_eager", fullgraph=True)
        loss = fn(hidden, weight, labels, chunk_size=8)
        grads = torch.autograd.grad(loss, (hidden, weight))
    finally:
        torch._dynamo.reset()
    ref = reference(hidden, weight, labels)
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-5)
    for got, want in zip(grads, torch.autograd.grad(ref, (hidden, weight))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
