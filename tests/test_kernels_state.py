"""The Triton kernels of BMOJO_STATE_KERNELS=1 against the PyTorch definitions: the eidetic selection's best-k
per row (kernels/innovation/select.py against naive.py `take_best`), and the writes of the decoding state
(kernels/state_fill/rows.py): the prefill's rings (state_fill/naive.py `fill_ring_reference_`), eidetic
sets (modeling_bmojo/innovation.py `sets_after_prefill`) and store tokens (`gather_tokens`), and a decode
step's ring pushes (`KeyValueRing.push`). They select and copy, so the results must be equal, bit for bit.

CPU: the Triton interpreter (TRITON_INTERPRET=1, in a child pytest: conftest.triton_interpreter_marks) on tiny
shapes, and a tiny model's prefill and eager decode steps with the kernels forced on against the same calls
without them (logits and cache). GPU (skipped without CUDA): the bench model's sizes in bf16, and the model's
outputs with the kernels against the default path.
"""

import pytest
import torch

import bmojo
from bmojo.kernels import dispatch
from bmojo.kernels.innovation.naive import EMPTY, take_best
from bmojo.kernels.state_fill.naive import fill_ring_reference_
from bmojo.modeling_bmojo import innovation
from bmojo.modeling_bmojo.innovation import gather_tokens, sets_after_prefill
from bmojo.modeling_bmojo.state import KeyValueRing, reset_states_
from conftest import run_under_interpreter, training_step, triton_interpreter_marks

triton = pytest.importorskip("triton", reason="triton is not installed")
try:
    from bmojo.kernels.innovation.select import MAX_ROW, take_best_triton
    from bmojo.kernels.state_fill.rows import (fill_ring_triton_, fill_set_triton_, gather_tokens_autograd,
                                               gather_tokens_triton, push_rings_triton_)
except Exception as exc:  # a Triton build that cannot load the kernels
    pytest.skip(f"Triton kernels unavailable here: {exc!r}", allow_module_level=True)

CUDA = torch.cuda.is_available()
INTERPRET, on_interpreter = triton_interpreter_marks(CUDA)  # conftest: why a child process
DEVICE = "cuda" if CUDA else "cpu"


def keys_values(batch, seqlen, heads, dim, dtype, seed=0, strided=False):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(batch, seqlen, heads * (2 if strided else 1), dim, generator=gen)
    k = k[:, :, ::2] if strided else k  # heads not adjacent: the launcher copies such a tensor first
    v = torch.randn(batch, seqlen, heads, dim, generator=gen)
    return k.to(DEVICE, dtype), v.to(DEVICE, dtype)


def check_ring(size, lengths, seqlen, heads=2, dim=8, dtype=torch.float32, strided=False):
    k, v = keys_values(len(lengths), seqlen, heads, dim, dtype, strided=strided)
    lengths = torch.tensor(lengths, device=DEVICE)

    def ring(fill):  # garbage first: every slot must be written
        return [torch.full((len(lengths), size, heads, dim), 7.0, device=DEVICE, dtype=dtype),
                torch.full((len(lengths), size, heads, dim), 7.0, device=DEVICE, dtype=dtype),
                torch.full((len(lengths), size), fill, device=DEVICE, dtype=torch.long)]

    want, got = ring(-5), ring(9)
    fill_ring_reference_(*want, k, v, lengths)
    fill_ring_triton_(*got, k, v, lengths)
    for name, g, w in zip(("k", "v", "pos"), got, want):
        assert torch.equal(g, w), (name, size, lengths.tolist())


def chunk_sets(batch, chunks, size, seqlen, seed):
    """Per-chunk sets as the selection leaves them: scores with empty (-inf) slots, positions in range."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, chunks, size, generator=gen)
    s[torch.rand(batch, chunks, size, generator=gen) < 0.3] = float("-inf")
    p = torch.randint(0, seqlen, (batch, chunks, size), generator=gen)
    p[s == float("-inf")] = EMPTY
    return s.to(DEVICE), p.to(DEVICE)


def check_sets(lengths, window, chunks, store, per_chunk, seqlen, heads=2, dim=8, dtype=torch.float32):
    batch = len(lengths)
    k, v = keys_values(batch, seqlen, heads, dim, dtype, seed=1)
    lengths = torch.tensor(lengths, device=DEVICE)
    stores = chunk_sets(batch, chunks, store, seqlen, seed=2)
    cands = chunk_sets(batch, chunks, per_chunk, seqlen, seed=3)
    want = sets_after_prefill(lengths, window, cands, stores, k, v)
    for name, source, offset, size in (("store", stores, 0, store), ("prev", cands, -1, per_chunk),
                                       ("cur", cands, 0, per_chunk)):
        got = (torch.full((batch, size), 3.0, device=DEVICE), torch.full((batch, size), 3, device=DEVICE),
               torch.full((batch, size, heads, dim), 3.0, device=DEVICE, dtype=dtype),
               torch.full((batch, size, heads, dim), 3.0, device=DEVICE, dtype=dtype))
        fill_set_triton_(got, *source, offset, lengths, window, k, v)
        for part, g in zip("spkv", got):
            assert torch.equal(g, want[name][part].to(g.dtype)), (name, part, lengths.tolist())


def check_take_best(batch, rows, size, k, seed=0, expanded_pos=True):
    """Rows as the selection builds them: real entries in position order, -inf holes, tied scores."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (batch, rows, size), generator=gen).float()  # few levels: ties
    scores[torch.rand(batch, rows, size, generator=gen) < 0.3] = float("-inf")
    pos = torch.arange(size).expand(batch, rows, size)  # as chunk_candidates / eidetic_stores pass it
    pos = pos if expanded_pos else pos.contiguous()
    scores, pos = scores.to(DEVICE), pos.to(DEVICE)
    want = take_best(scores, pos, k)[:2]
    got = take_best_triton(scores, pos, k)
    for name, g, w in zip(("scores", "pos"), got, want):
        assert torch.equal(g, w), (name, batch, rows, size, k)


def check_gather(batch, chunks, size, seqlen, heads=2, dim=8, dtype=torch.float32):
    """Every chunk's store tokens, as the attention kernel reads them: positions with EMPTY slots."""
    k, v = keys_values(batch, seqlen, heads, dim, dtype, seed=4, strided=True)
    _, pos = chunk_sets(batch, chunks, size, seqlen, seed=5)
    got = gather_tokens_triton(k, v, pos)
    for name, g, src in zip("kv", got, (k, v)):
        assert torch.equal(g, gather_tokens(src, pos)), name


def check_gather_gradients(batch, chunks, size, seqlen, heads=2, dim=8, dtype=torch.float32, strided=True):
    """The gather of a training step: the store tokens and the gradients of the keys and values they come
    from (positions repeat across chunks and within one; EMPTY slots and never-gathered positions get none),
    against autograd through the reference, computed in float32 from the same inputs."""
    k, v = keys_values(batch, seqlen, heads, dim, dtype, seed=6, strided=strided)
    _, pos = chunk_sets(batch, chunks, size, seqlen, seed=7)
    gen = torch.Generator().manual_seed(8)
    # weights the keys' dtype holds exactly: the gradients reaching the gather are then exact, and the sums
    # at each position differ from the reference only by their one rounding to that dtype
    weights = [torch.randn(*pos.shape, heads, dim, generator=gen).to(DEVICE, dtype).float() for _ in range(2)]
    got_in = [t.detach().requires_grad_() for t in (k, v)]
    got = gather_tokens_autograd(*got_in, pos)
    sum(((g.float() * w).sum() for g, w in zip(got, weights))).backward()
    want_in = [t.detach().float().requires_grad_() for t in (k, v)]
    want = [gather_tokens(t, pos) for t in want_in]
    sum(((g * w).sum() for g, w in zip(want, weights))).backward()
    for name, g, w in zip("kv", got, want):
        assert torch.equal(g.float(), w), name
    for name, g, w in zip("kv", got_in, want_in):
        assert g.grad.dtype == dtype and g.grad.shape == g.shape, name
        # float32 sums in another order, then one rounding to the keys' dtype
        tol = 1e-6 if dtype == torch.float32 else 2.0 ** -8
        err = ((g.grad.float() - w.grad).abs() - tol * w.grad.abs()).max().item()
        assert err <= 1e-5, (name, err)
    untouched = torch.ones(batch, seqlen, dtype=torch.bool, device=DEVICE)
    for row in range(batch):
        untouched[row, pos[row][pos[row] != EMPTY]] = False
    assert untouched.any() and (got_in[0].grad[untouched] == 0).all()


def check_push(batch, sizes, steps, heads=2, dim=8, dtype=torch.float32, seed=0):
    """Pushes into two rings, the kernel against `KeyValueRing.push` on each; some rows invalid per step."""
    gen = torch.Generator().manual_seed(seed)

    def rings():
        made = [KeyValueRing(batch, size, heads, dim, DEVICE, dtype) for size in sizes]
        reset_states_(made)
        return made

    want, got = rings(), rings()
    pos = torch.randint(0, 5, (batch,), generator=gen)
    for _ in range(steps):
        k, v, kf, vf = (torch.randn(batch, heads, dim, generator=gen).to(DEVICE, dtype) for _ in range(4))
        valid = torch.rand(batch, generator=gen) < 0.8
        at, ok = pos.to(DEVICE), valid.to(DEVICE)
        want[0].push(k, v, at, ok)
        want[1].push(kf, vf, at, ok)
        push_rings_triton_(*[(r.k, r.v, r.pos) for r in got], k, v, kf, vf, at, ok)
        pos = pos + valid.long()
    for w, g in zip(want, got):
        for name in ("k", "v", "pos"):
            assert torch.equal(getattr(g, name), getattr(w, name)), (name, w.size)


def forced(monkeypatch, on):
    """BMOJO_STATE_KERNELS as if set (on) or not, whatever the device: every module's view of the switch."""
    switch = (lambda tensor, use_kernels="auto": on)
    for module in (dispatch, innovation):  # attention asks dispatch
        monkeypatch.setattr(module, "state_kernels_used", switch)


@torch.no_grad()
def prefill_and_decode(model, ids, mask, extra, kernels, monkeypatch):
    """The logits of a prefill and of eager decode steps, and every tensor of the cache after each call, the
    state kernels forced on or off."""
    with monkeypatch.context() as patch:
        forced(patch, kernels)
        out = model(ids, attention_mask=mask, use_cache=True)
        results, cache = [], out.past_key_values

        def record(logits):
            results.append(logits.clone())
            results.extend(t.clone() for state in cache.states for _, t in state.named_tensors())

        record(out.logits)
        for t in range(extra.shape[1]):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            record(model(extra[:, t:t + 1], past_key_values=cache, attention_mask=mask).logits)
    return results


def check_model(config, lengths, monkeypatch, dtype=torch.float32, steps=12):
    model = bmojo.BMojoForCausalLM(config).to(DEVICE, dtype).eval()
    seqlen = max(lengths)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(3, config.vocab_size, (len(lengths), seqlen), generator=gen).to(DEVICE)
    extra = torch.randint(3, config.vocab_size, (len(lengths), steps), generator=gen).to(DEVICE)
    mask = torch.zeros(len(lengths), seqlen, dtype=torch.long, device=DEVICE)
    for row, n in enumerate(lengths):
        mask[row, seqlen - n:] = 1  # left padding, as generate() pads a batch
    got = prefill_and_decode(model, ids, mask, extra, True, monkeypatch)
    want = prefill_and_decode(model, ids, mask, extra, False, monkeypatch)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), i


# ---------------------------------------------------------------- CPU: Triton interpreter, tiny shapes

@on_interpreter
@pytest.mark.parametrize("batch,rows,size,k", [
    (2, 3, 40, 7),      # a chunk's candidates: k of a row
    (1, 2, 300, 64),    # a row longer than a kernel block of 256
    (2, 2, 5, 9),       # k above the row's size: every real entry, then empties
    (1, 3, 20, 20),     # k equal to the row's size
    (3, 1, 1, 1),
])
def test_interpreter_take_best_equals_reference(batch, rows, size, k):
    check_take_best(batch, rows, size, k)
    check_take_best(batch, rows, size, k, seed=1, expanded_pos=False)


@on_interpreter
@pytest.mark.parametrize("size,lengths,seqlen", [
    (4, [37, 5, 0], 37),     # a full ring, a short row, an empty row
    (16, [16, 15, 17], 17),  # lengths around the ring size
    (40, [37, 1], 37),       # a ring longer than the sequence
    (19, [37, 36], 37),      # slots spanning two blocks of the kernel (16 slots a block)
])
def test_interpreter_ring_equals_reference(size, lengths, seqlen):
    check_ring(size, lengths, seqlen)


@on_interpreter
def test_interpreter_gather_tokens_equals_reference():
    check_gather(2, 3, 6, 37)
    check_gather(1, 1, 20, 5)  # more slots than tokens: positions repeat


@on_interpreter
def test_interpreter_gather_tokens_gradients_equal_reference():
    check_gather_gradients(2, 3, 6, 37)
    check_gather_gradients(1, 4, 20, 30, strided=False)  # more entries than tokens: positions repeat


@on_interpreter
@pytest.mark.parametrize("batch,sizes,steps", [(3, (4, 12), 30), (1, (8, 8), 5)])
def test_interpreter_push_equals_reference(batch, sizes, steps):
    check_push(batch, sizes, steps)


@on_interpreter
def test_interpreter_ring_reads_strided_keys_and_casts():
    check_ring(8, [11, 3], 11, strided=True)
    check_ring(8, [11, 3], 11, dtype=torch.float16)


@on_interpreter
@pytest.mark.parametrize("lengths,window,chunks", [
    ([37, 5, 0], 8, 5),     # several chunks; a row in its first chunk (prev out of range); an empty row
    ([16, 17, 8], 8, 3),    # lengths at and just past chunk boundaries
    ([9], 16, 1),           # one chunk
])
def test_interpreter_sets_equal_reference(lengths, window, chunks):
    check_sets(lengths, window, chunks, store=6, per_chunk=3, seqlen=max(lengths + [1]))


@on_interpreter
@pytest.mark.parametrize("preset", ["tiny", "bmojo-f-tiny", "swa-transformer-tiny"])
def test_interpreter_model_equals_reference(preset, monkeypatch):
    """A tiny model's prefill of a left-padded batch and 12 eager decode steps (across chunk boundaries): the
    logits and every cache tensor after each call, with the state kernels forced on, equal the default
    path's (selection, rings, sets, SSM and conv states)."""
    config = bmojo.preset_config(preset, use_kernels=False)
    check_model(config, [29, 13, 4], monkeypatch)


@on_interpreter
def test_interpreter_training_step_equals_reference(monkeypatch):
    """A tiny model's loss and every parameter gradient on a left-padded batch with the state kernels forced
    on (the store tokens gathered by the kernel, their gradients summed back by its backward) equal the
    default path's."""
    results = [training_step("tiny", monkeypatch, forced, on) for on in (True, False)]
    assert len(results[0]) == len(results[1]) > 10
    for i, (g, w) in enumerate(zip(*results)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=f"tensor {i}")


@on_interpreter
def test_custom_ops_pass_opcheck():
    """torch.library.opcheck of the five ops: schema (the fills and the push mutate their first arguments),
    fake implementation, and a traced call (aot_dispatch)."""
    gen = torch.Generator().manual_seed(7)
    scores = torch.randn(2, 3, 20, generator=gen)
    pos = torch.arange(20).expand(2, 3, 20).contiguous()
    torch.library.opcheck(torch.ops.bmojo.take_best.default, (scores, pos, 5))
    k, v = torch.randn(2, 11, 2, 4, generator=gen), torch.randn(2, 11, 2, 4, generator=gen)
    lengths = torch.tensor([11, 6])
    ring = (torch.zeros(2, 8, 2, 4), torch.zeros(2, 8, 2, 4), torch.zeros(2, 8, dtype=torch.long))
    torch.library.opcheck(torch.ops.bmojo.fill_ring.default, (*ring, k, v, lengths))
    token_set = (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, 2, 4),
                 torch.zeros(2, 3, 2, 4))
    chunk_s, chunk_p = torch.randn(2, 2, 3, generator=gen), torch.randint(0, 11, (2, 2, 3), generator=gen)
    torch.library.opcheck(torch.ops.bmojo.gather_tokens.default,
                          (k, v, torch.tensor([[0, 10, 3], [EMPTY, 5, 5]])))
    band = (torch.zeros(2, 12, 2, 4), torch.zeros(2, 12, 2, 4), torch.full((2, 12), -1))
    one = [torch.randn(2, 2, 4, generator=gen) for _ in range(4)]
    torch.library.opcheck(torch.ops.bmojo.push_rings.default,
                          (*ring, *band, *one, torch.tensor([9, 3]), torch.tensor([True, False])))
    torch.library.opcheck(torch.ops.bmojo.fill_set.default,
                          (*token_set, chunk_s, chunk_p, lengths, k, v, 8, 0))


@on_interpreter
def test_compiled_selection_equals_eager(monkeypatch):
    """The parallel form's eidetic selection with the Triton best-k, traced whole by torch.compile
    (aot_eager, fullgraph): no graph break, the eager values."""
    forced(monkeypatch, True)
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 4, (2, 40), generator=gen).float()
    real = torch.arange(40)[None] < torch.tensor([[40], [23]])
    keys, values = torch.randn(2, 40, 1, 8, generator=gen), torch.randn(2, 40, 1, 8, generator=gen)

    def select(*args):
        return innovation.parallel_eidetic(*args, 8, 3, 6)

    compiled = torch.compile(select, backend="aot_eager", fullgraph=True)
    got, want = compiled(scores, real, keys, values), select(scores, real, keys, values)
    flat = lambda out: [*out[:3], *out[3], *out[4]]  # noqa: E731
    for g, w in zip(flat(got), flat(want)):
        assert torch.equal(g, w)


@on_interpreter
def test_compiled_prefill_traces_the_fills_and_equals_eager(monkeypatch):
    """With the state kernels on, an eager prefill writes the rings and eidetic sets with the Triton ops; a
    compiled one (aot_eager, fullgraph) traces the references instead (the opaque op cost ~120 us of host
    time per call in a compiled graph, H100): no fill op in its graph, and the same logits and cache, bit
    for bit where the fills copy."""
    forced(monkeypatch, True)
    config = bmojo.preset_config("tiny", num_hidden_layers=2, mixer_types=["bmojo", "sliding_attention"])
    model = bmojo.BMojoForCausalLM(config).eval()
    ids = torch.randint(3, config.vocab_size, (2, 37), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, 29:] = 0  # a shorter row: part of its rings and sets empty
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    with torch.no_grad():
        eager = model(ids, attention_mask=mask, use_cache=True)
        torch._dynamo.reset()
        compiled_model = torch.compile(model, backend=keep, fullgraph=True)
        compiled = compiled_model(ids, attention_mask=mask, use_cache=True)
    torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-5, rtol=1e-4)
    for e_state, c_state in zip(eager.past_key_values.states, compiled.past_key_values.states, strict=True):
        for (name, e), (_, c) in zip(e_state.named_tensors(), c_state.named_tensors(), strict=True):
            torch.testing.assert_close(c, e, atol=1e-5, rtol=1e-4, msg=name)
    targets = {str(node.target) for gm in graphs for node in gm.graph.nodes}
    assert len(graphs) == 1 and not {t for t in targets if "fill_set" in t or "fill_ring" in t}, targets
    eager_calls = []
    original = innovation.fill_set_
    monkeypatch.setattr(innovation, "fill_set_", lambda *a: eager_calls.append(a) or original(*a))
    with torch.no_grad():
        model(ids, attention_mask=mask, use_cache=True)
    assert eager_calls  # the eager prefill did use the op: the comparison above is the one intended


def test_bad_inputs_raise_naming_the_field():
    with pytest.raises(ValueError, match="float32"):
        take_best_triton(torch.zeros(1, 2, 3, dtype=torch.float16), torch.zeros(1, 2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=str(MAX_ROW)):
        take_best_triton(torch.zeros(1, 1, MAX_ROW + 1), torch.zeros(1, 1, MAX_ROW + 1, dtype=torch.long), 2)
    ring = [torch.zeros(2, 4, 1, 8), torch.zeros(2, 4, 1, 8), torch.zeros(2, 4, dtype=torch.long)]
    with pytest.raises(ValueError, match="keys and values"):
        fill_ring_triton_(*ring, torch.zeros(2, 5, 2, 8), torch.zeros(2, 5, 2, 8), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="ring_pos"):
        fill_ring_triton_(*ring[:2], ring[2].int(), torch.zeros(2, 5, 1, 8), torch.zeros(2, 5, 1, 8),
                          torch.tensor([5, 5]))
    token_set = (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, 1, 8),
                 torch.zeros(2, 3, 1, 8))
    k = torch.zeros(2, 5, 1, 8)
    with pytest.raises(ValueError, match="chunk_s"):
        fill_set_triton_(token_set, torch.zeros(2, 2, 4), torch.zeros(2, 2, 4, dtype=torch.long), 0,
                         torch.tensor([5, 5]), 4, k, k)
    with pytest.raises(ValueError, match="window"):
        fill_set_triton_(token_set, torch.zeros(2, 2, 3), torch.zeros(2, 2, 3, dtype=torch.long), 0,
                         torch.tensor([5, 5]), 0, k, k)


@pytest.mark.skipif(CUDA or INTERPRET, reason="the parent of the interpreter run, CPU only")
def test_interpreter_suite():
    run_under_interpreter(__file__)


# ---------------------------------------------------------------- GPU: the bench model's sizes

@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_take_best_at_the_bench_sizes():
    """A 32k-token prefill at the 130m sizes: 64 chunks of 512 tokens -> 32 candidates each; the stores'
    rows: 512 + 62 x 32 entries, 65 of them."""
    check_take_best(1, 64, 512, 32)
    check_take_best(1, 65, 512 + 62 * 32, 512)
    check_take_best(16, 4, 512, 32)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_bf16_rings_and_sets_equal_reference():
    """w = 512, w + n_f = 1,024, store 512, 32 candidates, 12 x 64 keys, bf16, lengths around the chunks."""
    lengths = [2048, 1500, 513, 1]
    for size in (512, 1024):
        check_ring(size, lengths, 2048, heads=12, dim=64, dtype=torch.bfloat16)
    check_sets(lengths, 512, 4, store=512, per_chunk=32, seqlen=2048, heads=12, dim=64, dtype=torch.bfloat16)
    check_push(16, (512, 1024), 40, heads=12, dim=64, dtype=torch.bfloat16)
    check_gather(1, 64, 512, 32768, heads=12, dim=64, dtype=torch.bfloat16)
    check_gather_gradients(8, 4, 512, 2048, heads=12, dim=64, dtype=torch.bfloat16)  # a training step's


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_model_equals_reference(monkeypatch):
    """bmojo-130m's layer (2 layers), bf16, Triton kernels elsewhere as shipped: the logits and the cache
    after the prefill and each eager decode step equal the default path's, tensor for tensor."""
    config = bmojo.preset_config("bmojo-130m", num_hidden_layers=2)
    check_model(config, [1100, 600, 7], monkeypatch, dtype=torch.bfloat16)
