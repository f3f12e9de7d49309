"""The decoding update of the eidetic sets: the in-place reference (kernels/innovation/naive.py) selects what
the ordered merges select, and the Triton kernel (kernels/innovation/decode.py) writes exactly what the
reference writes.

CPU: the reference against the ordered merges; the kernel under the Triton interpreter (TRITON_INTERPRET=1,
in a child pytest, as tests/test_kernels_memory_attention.py) on small sets. GPU (skipped without CUDA):
the bench model's sizes (store 512, 32 candidates per chunk, 12 x 64 keys), bf16 keys.
"""

import pytest
import torch

from bmojo.kernels.innovation.naive import EMPTY, decode_sets_step_
from bmojo.modeling_bmojo.innovation import step_sets
from conftest import in_position_order, run_under_interpreter, triton_interpreter_marks

triton = pytest.importorskip("triton", reason="triton is not installed")
try:
    from bmojo.kernels.innovation.decode import eidetic_decode_step_triton_
except Exception as exc:  # a Triton build that cannot load the kernels
    pytest.skip(f"Triton kernels unavailable here: {exc!r}", allow_module_level=True)

CUDA = torch.cuda.is_available()
INTERPRET, on_interpreter = triton_interpreter_marks(CUDA)  # conftest: why a child process


class Sets:
    """store / prev / cur as the model holds them: (s, p, k, v) each."""

    def __init__(self, batch, store, per_chunk, kv_heads, dim, dtype=torch.float32, device="cpu"):
        def empty(size):
            return [torch.full((batch, size), float("-inf"), device=device),
                    torch.full((batch, size), EMPTY, dtype=torch.long, device=device),
                    torch.zeros(batch, size, kv_heads, dim, dtype=dtype, device=device),
                    torch.zeros(batch, size, kv_heads, dim, dtype=dtype, device=device)]

        self.store, self.prev, self.cur = empty(store), empty(per_chunk), empty(per_chunk)

    def clone(self):
        other = object.__new__(Sets)
        for name in ("store", "prev", "cur"):
            setattr(other, name, [t.clone() for t in getattr(self, name)])
        return other

    def tuples(self):
        return self.store, self.prev, self.cur


class _View:  # in_position_order reads .s .p .k .v
    def __init__(self, tensors):
        self.s, self.p, self.k, self.v = tensors


def assert_same_sets(a, b, context):
    for name, x, y in zip(("store", "prev", "cur"), a.tuples(), b.tuples()):
        for part, u, v in zip("pskv", in_position_order(_View(x)), in_position_order(_View(y))):
            assert torch.equal(u, v), (context, name, part)


def stream(gen, batch, steps, window, kv_heads, dim, levels, device="cpu", dtype=torch.float32):
    """Tokens of a decoding run: (token, at_boundary, valid) per step; rows skip tokens (padding) at random,
    scores drawn from few levels (ties) with -0.0 among them."""
    pos = torch.zeros(batch, dtype=torch.long)
    for _ in range(steps):
        valid = torch.rand(batch, generator=gen) < 0.85
        score = torch.randint(-levels, levels + 1, (batch,), generator=gen).float() / 2
        score[(score == 0) & (torch.rand(batch, generator=gen) < 0.5)] = -0.0
        k = torch.randn(batch, kv_heads, dim, generator=gen).to(dtype)
        v = torch.randn(batch, kv_heads, dim, generator=gen).to(dtype)
        at_boundary = valid & (pos % window == 0)
        token = tuple(t.to(device) for t in (score, pos.clone(), k, v))
        yield token, at_boundary.to(device), valid.to(device)
        pos = pos + valid.long()


@pytest.mark.parametrize("store,per_chunk,window,levels", [(16, 4, 8, 2), (5, 3, 4, 1), (7, 7, 7, 40),
                                                           (1, 1, 2, 3)])
def test_in_place_reference_selects_what_the_ordered_merges_select(store, per_chunk, window, levels):
    """The slot-stable update keeps, at every step, the same sets as the ordered merges the parallel form is
    proved against (tests/test_eidetic.py): only where each entry sits differs."""
    gen = torch.Generator().manual_seed(store * 100 + per_chunk)
    slots, ordered = Sets(3, store, per_chunk, 2, 4), Sets(3, store, per_chunk, 2, 4)
    evicted = 0
    for t, (token, at_boundary, valid) in enumerate(stream(gen, 3, 120, window, 2, 4, levels)):
        full = torch.isfinite(slots.store[0]).sum(-1) == store
        decode_sets_step_(*slots.tuples(), token, at_boundary, valid)
        sets = {name: dict(zip("spkv", tensors)) for name, tensors in zip(("store", "prev", "cur"),
                                                                           ordered.tuples())}
        sets = step_sets(sets, {n: x[:, None] for n, x in zip("spkv", token)}, at_boundary, valid, store,
                         per_chunk)
        ordered.store, ordered.prev, ordered.cur = ([sets[n][x] for x in "spkv"]
                                                    for n in ("store", "prev", "cur"))
        assert_same_sets(slots, ordered, t)
        evicted += int((full & at_boundary & torch.isfinite(slots.prev[0]).any(-1)).any())
    assert evicted > 0, "the stream must fill the store and evict from it"


def random_sets(gen, batch, store, per_chunk, kv_heads, dim, fill, dtype=torch.float32, device="cpu"):
    """Sets in the state a decoding run can leave them: the store's entries in any slot order, prev's all
    later than the store's, cur's later than prev's; a fraction `fill` of the slots filled; score ties."""
    def one(size, base):
        s = torch.randint(-3, 4, (batch, size), generator=gen).float() / 2
        p = base + torch.stack([torch.randperm(3 * size, generator=gen)[:size] for _ in range(batch)])
        empty = torch.rand(batch, size, generator=gen) > fill
        k = torch.randn(batch, size, kv_heads, dim, generator=gen).to(dtype)
        v = torch.randn(batch, size, kv_heads, dim, generator=gen).to(dtype)
        s, p = s.masked_fill(empty, float("-inf")), p.masked_fill(empty, EMPTY)
        return [t.to(device) for t in (s, p, k, v)]

    sets = object.__new__(Sets)
    sets.store, sets.prev, sets.cur = one(store, 0), one(per_chunk, 10_000), one(per_chunk, 20_000)
    return sets


def kernel_matches_reference(gen, batch, store, per_chunk, kv_heads, dim, fill, dtype=torch.float32,
                             device="cpu"):
    """One step from random sets, kernel vs reference: every slot's score and position equal, and every
    filled slot's key and value (copies: bit for bit). Returns whether the store evicted an entry."""
    sets = random_sets(gen, batch, store, per_chunk, kv_heads, dim, fill, dtype, device)
    token = tuple(t.to(device) for t in (torch.randn(batch, generator=gen).round(),
                                         torch.full((batch,), 30_000), torch.randn(batch, kv_heads, dim,
                                                                                   generator=gen).to(dtype),
                                         torch.randn(batch, kv_heads, dim, generator=gen).to(dtype)))
    at_boundary = (torch.rand(batch, generator=gen) < 0.6).to(device)
    valid = ((torch.rand(batch, generator=gen) < 0.8).to(device)) | at_boundary
    ref, out = sets.clone(), sets.clone()
    decode_sets_step_(*ref.tuples(), token, at_boundary, valid)
    eidetic_decode_step_triton_(*out.tuples(), token, at_boundary, valid)
    for name, x, y in zip(("store", "prev", "cur"), ref.tuples(), out.tuples()):
        filled = torch.isfinite(x[0])[..., None, None]
        for part, u, v in zip("spkv", x, y):
            if part in "kv":
                u, v = torch.where(filled, u, 0), torch.where(filled, v, 0)
            assert torch.equal(u, v), (name, part)
    real = torch.isfinite(sets.store[0]).sum(-1) + torch.isfinite(sets.prev[0]).sum(-1)
    return bool(((real > store) & at_boundary).any())


# ---------------------------------------------------------------- CPU: Triton interpreter, small sets

@on_interpreter
@pytest.mark.parametrize("store,per_chunk", [(16, 4), (37, 5), (1, 1), (8, 8), (64, 3)])
def test_interpreter_kernel_matches_reference(store, per_chunk):
    gen = torch.Generator().manual_seed(store * 10 + per_chunk)
    evictions = sum(kernel_matches_reference(gen, 3, store, per_chunk, 2, 16, fill)
                    for fill in (0.0, 0.3, 0.7, 1.0, 1.0, 0.9))
    assert evictions > 0, "some case must evict from a full store"


@on_interpreter
def test_interpreter_kernel_follows_a_decoding_stream():
    """Token after token (rows skipping tokens, chunk boundaries, a store filling then evicting), the
    kernel's sets stay the reference's."""
    gen = torch.Generator().manual_seed(5)
    ref, out = Sets(2, 6, 3, 1, 16), Sets(2, 6, 3, 1, 16)
    for token, at_boundary, valid in stream(gen, 2, 40, 4, 1, 16, 2):
        decode_sets_step_(*ref.tuples(), token, at_boundary, valid)
        eidetic_decode_step_triton_(*out.tuples(), token, at_boundary, valid)
        assert_same_sets(ref, out, int(token[1][0]))
    assert bool(torch.isfinite(out.store[0]).all())


@pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or the interpreter")
def test_compiled_call_writes_the_sets_in_place():
    """Inside a compiled graph (fullgraph, AOT autograd's functionalization: how a compiled decode step
    sees the op) the op still writes the caller's tensors, as the eager call does."""
    device = "cuda" if CUDA else "cpu"
    gen = torch.Generator().manual_seed(3)
    sets = random_sets(gen, 2, 16, 4, 2, 16, 1.0, device=device)
    token = (torch.randn(2, device=device), torch.full((2,), 30_000, device=device),
             torch.randn(2, 2, 16, device=device), torch.randn(2, 2, 16, device=device))
    flags = (torch.tensor([True, False], device=device), torch.tensor([True, True], device=device))
    eager, compiled = sets.clone(), sets.clone()
    eidetic_decode_step_triton_(*eager.tuples(), token, *flags)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(store, prev, cur, token, at_boundary, valid):
        eidetic_decode_step_triton_(store, prev, cur, token, at_boundary, valid)

    step(*compiled.tuples(), token, *flags)
    assert_same_sets(compiled, eager, "compiled")
    assert not torch.equal(compiled.store[1], sets.store[1]), "the step must have changed the store"


@pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or the interpreter")
def test_custom_op_passes_opcheck():
    """torch.library.opcheck of bmojo::eidetic_decode_step: schema (it declares what it mutates), fake
    implementation, dispatch."""
    device = "cuda" if CUDA else "cpu"
    sets = random_sets(torch.Generator().manual_seed(0), 2, 16, 4, 2, 16, 0.9, device=device)
    token = (torch.randn(2, device=device), torch.full((2,), 30_000, device=device),
             torch.randn(2, 2, 16, device=device), torch.randn(2, 2, 16, device=device))
    flags = (torch.tensor([True, False], device=device), torch.tensor([True, True], device=device))
    torch.library.opcheck(torch.ops.bmojo.eidetic_decode_step.default,
                          (*sets.store, *sets.prev, *sets.cur, *token, *flags))


@pytest.mark.skipif(CUDA or INTERPRET, reason="the parent of the interpreter run, CPU only")
def test_interpreter_suite():
    run_under_interpreter(__file__)


# ---------------------------------------------------------------- GPU: the bench model's sizes

@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("batch", [1, 16])
def test_gpu_kernel_matches_reference(batch):
    gen = torch.Generator().manual_seed(batch)
    evictions = sum(kernel_matches_reference(gen, batch, 512, 32, 12, 64, fill, torch.bfloat16, "cuda")
                    for fill in (0.5, 1.0, 1.0))
    assert evictions > 0


@pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or the interpreter")
@torch.no_grad()
def test_compiled_model_decode_step_with_the_kernel_equals_eager(monkeypatch):
    """The model's decode step, compiled whole (fullgraph, AOT autograd, each layer a nested compile
    region as generate() compiles it) with the eidetic update going through the kernel, gives the eager
    step's logits and sets, across chunk boundaries and a full, evicting store."""
    from bmojo.modeling_bmojo import attention
    from conftest import random_ids, tiny_model

    def through_kernel(store, prev, cur, token, at_boundary, valid, use_kernels="auto"):
        return eidetic_decode_step_triton_(store, prev, cur, token, at_boundary, valid)

    monkeypatch.setattr(attention, "eidetic_decode_step_", through_kernel)  # as on CUDA
    monkeypatch.setattr(attention, "eidetic_kernel_used", lambda tensor, use_kernels="auto": True)
    device = "cuda" if CUDA else "cpu"
    model = tiny_model().to(device)
    ids = random_ids(2, 21, seed=3).to(device)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    caches = [model(ids, use_cache=True).past_key_values, model(ids, use_cache=True).past_key_values]
    token = ids[:, -1:]
    for _ in range(40):  # w = 8: five chunk boundaries; the store (16) fills from the fourth chunk on
        one = torch.ones(2, 1, dtype=torch.long, device=device)
        want = model(token, attention_mask=one, past_key_values=caches[0]).logits
        got = compiled(token, attention_mask=one, past_key_values=caches[1]).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        token = want[:, -1].argmax(-1, keepdim=True)
    torch._dynamo.reset()
    # The same tokens in the same sets, exactly; scores, keys and values to float rounding: AOT autograd's
    # decompositions may round the projections differently from eager on CUDA (bitwise equal on CPU)
    for layer in range(2):
        for name in ("store", "prev", "cur"):
            sets = (in_position_order(getattr(c.states[layer], name)) for c in caches)
            (p0, *values0), (p1, *values1) = sets
            assert torch.equal(p1, p0), (layer, name, "positions")
            for field, x, y in zip("skv", values1, values0):
                torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5, msg=f"layer {layer} {name}.{field}")
    assert bool(torch.isfinite(caches[0].states[0].store.s).all())
