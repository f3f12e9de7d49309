"""Triton fused B'MOJO attention (kernels/memory_attention/parallel.py) against the PyTorch reference.

CPU: the Triton interpreter (TRITON_INTERPRET=1, in a child pytest: conftest.triton_interpreter_marks) on
tiny shapes, float32 against the float64 definition. GPU (skipped without CUDA): the paper's shapes, bf16
and fp32. Every comparison covers the output and the gradient of every tensor input; errors are relative
(||x - ref|| / ||ref||) and printed (pytest -s shows them).
"""

import pytest
import torch

from conftest import run_under_interpreter, triton_interpreter_marks

triton = pytest.importorskip("triton", reason="triton is not installed")
try:
    from bmojo.kernels.memory_attention.decode import decode_attention_triton
    from bmojo.kernels.memory_attention.naive import (decode_attention_reference, memory_attention_chunked,
                                                      memory_attention_naive)
    from bmojo.kernels.memory_attention.parallel import memory_attention_triton
except Exception as exc:  # a Triton build that cannot load the kernels
    pytest.skip(f"Triton kernels unavailable here: {exc!r}", allow_module_level=True)

CUDA = torch.cuda.is_available()
INTERPRET, on_interpreter = triton_interpreter_marks(CUDA)  # conftest: why a child process
DEVICE = "cuda" if CUDA else "cpu"
GRAD_NAMES = ("q_rot", "k", "v", "q_raw", "fading_keys", "fading_values", "eidetic_keys", "eidetic_values")


def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def make_inputs(B, T, H, Hkv, D, w, n_f, M, dtype=torch.float32, device=DEVICE, p_valid=0.7, seed=None):
    gen = torch.Generator(device=device)
    gen.manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else seed)
    nc = -(-T // w)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(dtype).requires_grad_()

    args = dict(q_rot=rnd(B, T, H, D), k=rnd(B, T, Hkv, D), v=rnd(B, T, Hkv, D), window=w,
                q_raw=rnd(B, T, H, D), fading_keys=rnd(B, T, Hkv, D), fading_values=rnd(B, T, Hkv, D),
                fading_tokens=n_f, eidetic_keys=rnd(B, nc, M, Hkv, D), eidetic_values=rnd(B, nc, M, Hkv, D),
                eidetic_valid=torch.rand(B, nc, M, generator=gen, device=device) < p_valid)
    return args


def run_with_grads(fn, args, do):
    out = fn(**args)
    ins = [args[name] for name in GRAD_NAMES]
    grads = torch.autograd.grad(out, ins, do, allow_unused=True)
    return out, dict(zip(GRAD_NAMES, grads))


def upcast(args, dtype):
    def up(x):
        return x.detach().to(dtype).requires_grad_() if torch.is_tensor(x) and x.is_floating_point() else x

    return {name: up(x) for name, x in args.items()}


def compare(args, reference, ref_dtype, label=""):
    """Relative errors of the kernel vs `reference` (run on inputs upcast to ref_dtype): out and grads."""
    do = torch.randn_like(args["q_rot"])
    out, grads = run_with_grads(memory_attention_triton, args, do)
    ref_out, ref_grads = run_with_grads(reference, upcast(args, ref_dtype), do.to(ref_dtype))
    errs = {"o": rel_err(out, ref_out)}
    assert out.dtype == args["q_rot"].dtype and torch.isfinite(out).all()
    for name in GRAD_NAMES:
        g, r = grads[name], ref_grads[name]
        if r is None:  # the reference ignores this input (n_f = 0 or M = 0): so must the kernel
            assert g is None or not g.abs().any(), name
            continue
        assert g is not None and torch.isfinite(g).all(), name
        errs[name] = rel_err(g, r) if r.abs().any() else g.abs().max().item()
    detail = " ".join(f"{k}={v:.1e}" for k, v in errs.items())
    print(f"\n{label} max rel err {max(errs.values()):.2e} {detail}")
    return errs


# ---------------------------------------------------------------- CPU: Triton interpreter, tiny shapes

CPU_CASES = [  # B, T, H, Hkv, D, w, n_f, M
    (1, 16, 2, 1, 16, 8, 0, 0),    # window only
    (2, 19, 2, 1, 16, 4, 4, 3),    # T not a multiple of w, several chunks per query tile
    (2, 7, 2, 1, 16, 8, 4, 3),     # T < w: no fading band reached, one chunk
    (1, 16, 2, 1, 16, 4, 0, 3),    # eidetic without fading
    (2, 19, 2, 1, 16, 8, 4, 0),    # fading without eidetic
    (1, 37, 2, 2, 24, 8, 4, 3),    # head dim not a power of 2 (padded to 32), no GQA
    (1, 40, 4, 2, 16, 16, 16, 17),  # M > one eidetic tile, GQA group 2
]


@on_interpreter
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "B{}-T{}-H{}-Hkv{}-D{}-w{}-nf{}-M{}".format(*c))
def test_interpreter_matches_definition(case):
    args = make_inputs(*case)
    errs = compare(args, memory_attention_naive, torch.float64, label=str(case))
    assert max(errs.values()) < 1e-5, errs


@on_interpreter
def test_interpreter_matches_chunked_reference_all_invalid_store():
    # every eidetic entry invalid in some chunks, and eidetic_valid=None (all valid) is accepted
    args = make_inputs(1, 19, 2, 1, 16, 8, 4, 3, p_valid=0.0)
    args["eidetic_valid"][:, 1] = True
    errs = compare(args, memory_attention_chunked, torch.float64, label="all-invalid chunks")
    assert max(errs.values()) < 1e-5, errs
    args["eidetic_valid"] = None
    out = memory_attention_triton(**args)
    all_valid = torch.ones(1, 3, 3, dtype=torch.bool)
    ref = memory_attention_naive(**{**upcast(args, torch.float64), "eidetic_valid": all_valid})
    assert rel_err(out, ref) < 1e-5


@on_interpreter
def test_window_none_is_causal():
    args = make_inputs(1, 19, 2, 1, 16, 8, 4, 3)
    out = memory_attention_triton(args["q_rot"], args["k"], args["v"], None)
    qkv = upcast({"q_rot": args["q_rot"], "k": args["k"], "v": args["v"]}, torch.float64)
    ref = memory_attention_naive(**qkv, window=None)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.skipif(CUDA or INTERPRET, reason="the parent of the interpreter run, CPU only")
def test_interpreter_suite():
    run_under_interpreter(__file__)


@pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or the interpreter")
def test_every_output_element_written(monkeypatch):
    """Outputs and gradients are allocated NaN-filled: a single unwritten element would show."""
    real_empty_like, real_empty = torch.empty_like, torch.empty

    def nan_empty_like(t, *a, **kw):
        out = real_empty_like(t, *a, **kw)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    def nan_empty(*a, **kw):
        out = real_empty(*a, **kw)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty_like", nan_empty_like)
    monkeypatch.setattr(torch, "empty", nan_empty)
    shape = (1, 19, 2, 1, 16, 4, 4, 3) if INTERPRET else (2, 1000, 4, 2, 64, 128, 128, 20)
    args = make_inputs(*shape, p_valid=0.5)
    out = memory_attention_triton(**args)
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out, [args[n] for n in GRAD_NAMES], torch.randn_like(out))
    for name, g in zip(GRAD_NAMES, grads):
        assert torch.isfinite(g).all(), name


@pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or the interpreter")
def test_input_checks():
    args = make_inputs(1, 8, 2, 1, 16, 4, 0, 2)
    with pytest.raises(ValueError, match="q_raw"):
        memory_attention_triton(**{**args, "q_raw": None})
    with pytest.raises(ValueError, match="head dim"):
        memory_attention_triton(torch.randn(1, 8, 2, 8), torch.randn(1, 8, 1, 8), torch.randn(1, 8, 1, 8), 4)
    with pytest.raises(ValueError, match="multiple"):
        kv = torch.randn(1, 8, 2, 16)
        memory_attention_triton(torch.randn(1, 8, 3, 16), kv, kv, 4)
    with pytest.raises(ValueError, match="NC"):
        memory_attention_triton(**{**args, "eidetic_keys": args["eidetic_keys"][:, :1],
                                   "eidetic_values": args["eidetic_values"][:, :1]})


# ---------------------------------------------------------------- the custom operators

OPCHECK_CASES = [  # B, T, H, Hkv, D, w, n_f, M: every band, and the window alone (optional inputs None)
    (1, 19, 2, 1, 16, 8, 4, 3),
    (2, 16, 2, 2, 16, 8, 0, 0),
]


def op_inputs(B, T, H, Hkv, D, w, n_f, M, requires_grad):
    """Arguments of bmojo::memory_attention_fwd as `memory_attention_triton` hands them over."""
    from bmojo.kernels.memory_attention import parallel
    args = make_inputs(B, T, H, Hkv, D, w, n_f, M, p_valid=0.5, seed=0)
    tensors = {name: t.detach().requires_grad_(requires_grad) for name, t in args.items()
               if torch.is_tensor(t) and t.is_floating_point()}
    eidetic = M > 0
    config = parallel._flat_config(parallel._default_config(D, torch.float32, not CUDA))
    return (tensors["q_rot"], tensors["q_raw"] if eidetic else None, tensors["k"], tensors["v"],
            tensors["fading_keys"] if n_f else None, tensors["fading_values"] if n_f else None,
            tensors["eidetic_keys"] if eidetic else None, tensors["eidetic_values"] if eidetic else None,
            args["eidetic_valid"].to(torch.uint8) if eidetic else None, w, n_f, config)


@pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or the interpreter")
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: "B{}-T{}-H{}-Hkv{}-D{}-w{}-nf{}-M{}".format(*c))
def test_custom_ops_pass_opcheck(case):
    """torch.library.opcheck of bmojo::memory_attention_fwd (schema, fake implementation, autograd
    registration, AOT dispatch with dynamic shapes through the backward op) and of the backward op."""
    fwd, bwd = torch.ops.bmojo.memory_attention_fwd.default, torch.ops.bmojo.memory_attention_bwd.default
    inputs = op_inputs(*case, requires_grad=True)
    torch.library.opcheck(fwd, inputs)
    inputs = op_inputs(*case, requires_grad=False)
    o, lse = fwd(*inputs)
    do = torch.randn_like(o)
    delta = (do * o).sum(-1).transpose(1, 2).contiguous()
    q, qr, k, v, fk, fv, ek, ev, evalid, w, n_f, config = inputs
    torch.library.opcheck(bwd, (do, q, qr, k, v, fk, fv, ek, ev, evalid, lse, delta, w, n_f, config))


# ---------------------------------------------------------------- GPU: real shapes

GPU_CASES = [  # B, T, H, Hkv, D, w, n_f, M
    (2, 2048, 12, 12, 64, 512, 512, 64),   # the paper's layer at 2k
    (2, 2000, 12, 4, 64, 512, 512, 64),    # ragged T, GQA
    (1, 1536, 8, 8, 128, 256, 128, 40),    # D = 128, n_f != w, M not a power of 2
]


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-3)], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "B{}-T{}-H{}-Hkv{}-D{}-w{}-nf{}-M{}".format(*c))
def test_gpu_matches_reference(case, dtype, tol):
    args = make_inputs(*case, dtype=dtype)
    errs = compare(args, memory_attention_chunked, torch.float64, label=f"{case} {dtype}")
    assert max(errs.values()) < tol, errs


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_bf16_batch8():
    args = make_inputs(8, 2048, 12, 12, 64, 512, 512, 64, dtype=torch.bfloat16)
    errs = compare(args, memory_attention_chunked, torch.float32, label="B8 bf16 (fp32 reference)")
    assert max(errs.values()) < 1e-2, errs


# ---------------------------------------------------------------- decoding: one query against key segments
# kernels/memory_attention/decode.py against decode_attention_reference (naive.py), the function the
# model's decode step ran before the kernel existed.

def decode_segments(B, H, Hkv, D, lengths, dtype=torch.float32, device=DEVICE, p_valid=0.6, seed=0):
    """[(q [B, H, D], k, v [B, S, Hkv, D], mask [B, S])] per length; each segment has its own query."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    return [(rnd(B, H, D), rnd(B, S, Hkv, D), rnd(B, S, Hkv, D),
             torch.rand(B, S, generator=gen, device=device) < p_valid) for S in lengths]


def as_dtype(segments, dtype):
    return [(q.to(dtype), k.to(dtype), v.to(dtype), m) for q, k, v, m in segments]


def decode_by_loop(segments, scale):
    """The definition, row by row and head by head: softmax over the valid keys of all segments."""
    q0 = segments[0][0]
    batch, heads, dim = q0.shape
    group = heads // segments[0][1].shape[2]
    out = torch.zeros(batch, heads, dim, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            logits = torch.cat([k[b, m[b], h // group].double() @ q[b, h].double()
                                for q, k, _, m in segments])
            values = torch.cat([v[b, m[b], h // group].double() for _, _, v, m in segments])
            if len(logits):
                out[b, h] = torch.softmax(logits * scale, 0) @ values
    return out


def test_decode_reference_matches_definition():
    """The reference (what CPU decoding runs): GQA, three segments, rows whose segments are partly or
    wholly masked, and a row without any valid key, which gets zeros (not NaN)."""
    segments = decode_segments(3, 4, 2, 8, (5, 7, 3), device="cpu")
    segments[1][3][0] = False  # row 0: no fading key
    for _, _, _, m in segments:
        m[2] = False  # row 2: no key at all
    out = decode_attention_reference(segments, 8 ** -0.5)
    assert out.dtype == torch.float32 and out.shape == (3, 4, 8)
    assert torch.isfinite(out).all() and not out[2].any()
    assert rel_err(out, decode_by_loop(segments, 8 ** -0.5)) < 1e-6


DECODE_CASES = [  # B, H, Hkv, D, segment lengths, [BLOCK_N, splits, warps, stages]
    (2, 2, 2, 16, (9,), [16, 1, 1, 1]),             # window only, one launch
    (2, 2, 1, 24, (5, 21), [16, 2, 1, 1]),          # GQA G=2, D not a power of 2, two splits
    (2, 2, 2, 16, (5, 21, 9), [16, 1, 1, 1]),       # three segments, lengths not multiples of the tile
    (1, 4, 1, 16, (17, 33, 3), [16, 3, 1, 1]),      # G=4 (tl.dot path, rows padded to 16), three splits
    (2, 2, 2, 16, (5, 21, 9), [16, 2, 1, 1, 1, 0]),  # G=1 through the fp32 dot, masked keys read anyway
    (1, 4, 1, 16, (17, 33, 3), [16, 3, 1, 1, 0, 1]),  # G=4 through broadcasts
]


@on_interpreter
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: "B{}-H{}-Hkv{}-D{}-S{}-cfg{}".format(*c))
def test_interpreter_decode_matches_reference(case):
    B, H, Hkv, D, lengths, config = case
    segments = decode_segments(B, H, Hkv, D, lengths)
    if len(lengths) > 1:
        segments[1][3][0] = False  # row 0 has an all-masked segment
    scale = D ** -0.5
    out = decode_attention_triton(segments, scale, _config=config)
    ref = decode_attention_reference(as_dtype(segments, torch.float64), scale)
    err = rel_err(out, ref)
    print(f"\ndecode {case} fp32 rel err {err:.1e}")
    assert out.dtype == torch.float32 and out.shape == (B, H, D) and err < 1e-5


@on_interpreter
def test_interpreter_decode_bf16_strided_and_empty_rows():
    """bf16 in and out; keys and queries that are strided views (not contiguous); a row without any valid
    key (zeros, as the reference); an empty segment (S = 0) contributes nothing."""
    segments = decode_segments(3, 2, 1, 16, (7, 20), dtype=torch.bfloat16)
    wide = torch.randn(3, 20, 1, 32).to(torch.bfloat16)
    q_t = torch.randn(2, 3, 16).to(torch.bfloat16).transpose(0, 1)  # [B, H, D], strides (16, 48, 1)
    segments[1] = (q_t, wide[..., :16], wide[..., 16:], segments[1][3])
    for _, _, _, m in segments:
        m[1] = False
    q, k, v, m = segments[0]
    segments.append((q, k[:, :0], v[:, :0], m[:, :0]))  # S = 0 (an eidetic store of capacity 0)
    out = decode_attention_triton(segments, 0.25, _config=[16, 2, 1, 1])
    ref = decode_attention_reference(as_dtype(segments[:2], torch.float64), 0.25)
    err = rel_err(out, ref)
    print(f"\ndecode bf16 rel err {err:.1e}")
    assert out.dtype == torch.bfloat16 and not out[1].any() and err < 1e-2


@on_interpreter
@pytest.mark.parametrize("skip_masked", [1, 0])
@pytest.mark.parametrize("group", [1, 4])
def test_interpreter_decode_native_dot(group, skip_masked):
    """DOT_NATIVE (tensor-core dots on the 16-bit keys and values, softmax weights rounded to that dtype)
    against the float64 reference, with masked keys skipped or read; on float32 inputs the launcher falls
    back to the exact fp32 dot, which must then match to fp32 precision. float16 here: Triton 3.9's
    interpreter multiplies bfloat16 dot operands as raw bits (the GPU cases below run bf16)."""
    from bmojo.kernels.memory_attention.decode import DOT_NATIVE
    config = [16, 2, 1, 1, DOT_NATIVE, skip_masked]
    for dtype, tol in ((torch.float16, 1e-2), (torch.float32, 1e-5)):
        segments = decode_segments(2, 4, 4 // group, 16, (9, 21, 5), dtype=dtype)
        segments[1][3][0, ::2] = False
        out = decode_attention_triton(segments, 0.25, _config=config)
        ref = decode_attention_reference(as_dtype(segments, torch.float64), 0.25)
        err = rel_err(out, ref)
        print(f"\ndecode native dot G={group} {dtype} rel err {err:.1e}")
        assert out.dtype == dtype and err < tol
    # mixed dtypes (fp16 queries, fp32 keys and values): the exact fp32 path, whatever the config asks
    segments = [(q.half(), k, v, m) for q, k, v, m in decode_segments(2, 4, 4 // group, 16, (9, 21, 5))]
    out = decode_attention_triton(segments, 0.25, _config=config)
    ref = decode_attention_reference(as_dtype(segments, torch.float64), 0.25)
    assert out.dtype == torch.float16 and rel_err(out, ref) < 1e-3


@on_interpreter
def test_interpreter_decode_op_opcheck_and_compiles_fullgraph(monkeypatch):
    """bmojo::decode_attention passes opcheck (schema, fake implementation, dynamic-shape AOT dispatch) with
    one and three segments; the dispatcher, made to choose Triton on CPU, traces into one graph (aot_eager
    runs the op) and equals eager."""
    from bmojo.kernels import dispatch
    monkeypatch.setattr(dispatch, "use_triton", lambda tensor, use_kernels: True)
    monkeypatch.setattr(dispatch, "DECODE_KERNEL", True)  # as if BMOJO_DECODE_KERNEL=0 were not set
    op = torch.ops.bmojo.decode_attention.default
    segments = decode_segments(2, 2, 1, 16, (5, 21, 9))
    flat = [t for seg in segments for t in seg]
    torch.library.opcheck(op, (*flat, 0.25, [16, 2, 1, 1]))
    torch.library.opcheck(op, (*flat[:4], *[None] * 8, 0.25, [16, 1, 1, 1]))

    def step(*tensors):
        segs = [tuple(tensors[i:i + 4]) for i in range(0, len(tensors), 4)]
        return dispatch.decode_attention(segs, 0.25)

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    out = compiled(*flat)
    torch._dynamo.reset()
    assert "decode_attention" in str(torch._dynamo.explain(step)(*flat).graphs[0].code)
    torch.testing.assert_close(out, step(*flat), rtol=0, atol=0)


@on_interpreter
def test_interpreter_decode_dispatch(monkeypatch):
    """decode_attention runs the kernel when Triton is chosen and no gradient is needed, else the reference
    (the kernel has no backward)."""
    from bmojo.kernels import dispatch
    from bmojo.kernels.memory_attention import decode
    calls = []
    real = decode.decode_attention_triton
    monkeypatch.setattr(decode, "decode_attention_triton",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setattr(dispatch, "use_triton", lambda tensor, use_kernels: use_kernels is not False)
    monkeypatch.setattr(dispatch, "DECODE_KERNEL", True)  # as if BMOJO_DECODE_KERNEL=0 were not set
    segments = decode_segments(1, 2, 1, 16, (5, 6))
    ref = dispatch.decode_attention(segments, 0.25, use_kernels=False)
    assert not calls
    torch.testing.assert_close(dispatch.decode_attention(segments, 0.25), ref, rtol=1e-5, atol=1e-6)
    assert calls == [1]
    q = segments[0][0].clone().requires_grad_()
    out = dispatch.decode_attention([(q, *segments[0][1:]), segments[1]], 0.25)
    assert calls == [1] and out.requires_grad
    with torch.no_grad():
        dispatch.decode_attention([(q, *segments[0][1:]), segments[1]], 0.25)
    assert calls == [1, 1]


# GPU: the paper's layer as the decode step sees it: window ring w=512, fading ring w + n_f = 1024 slots of
# which the oldest n_f = 512 are the band (half masked), eidetic store M = 512 (scored with the raw query)
DECODE_GPU_CASES = [  # B, H, Hkv, lengths, config (None: the launcher's default)
    (16, 12, 12, (512, 1024, 512), None),
    (1, 12, 12, (512, 1024, 512), None),        # small batch: split + merge
    (16, 12, 12, (512, 1024, 512), [64, 4, 4, 3]),
    (16, 12, 12, (512, 1024, 512), [64, 4, 4, 3, 2, 0]),  # tensor-core dots (bf16), masked keys read
    (1, 12, 12, (512, 1024, 512), [64, 16, 4, 3, 2, 1]),
    (3, 12, 4, (512, 1000, 37), [32, 4, 4, 3, 2, 1]),
    (3, 12, 4, (512, 1000, 37), None),          # GQA G=3 (tl.dot path), ragged lengths
    (2, 8, 8, (300,), None),                    # one segment
]


def band_masks(segments):
    """Realistic masks: the window ring full, the band ring half valid (one contiguous run of slots)."""
    if len(segments) > 1:
        mask = segments[1][3]
        slots = torch.arange(mask.shape[1], device=mask.device)
        start = torch.randint(0, mask.shape[1], (mask.shape[0], 1), device=mask.device)
        mask.copy_((slots - start) % mask.shape[1] < mask.shape[1] // 2)
    segments[0][3].fill_(True)
    return segments


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-4)], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", DECODE_GPU_CASES, ids=lambda c: "B{}-H{}-Hkv{}-S{}-cfg{}".format(*c))
def test_gpu_decode_matches_reference(case, dtype, tol):
    B, H, Hkv, lengths, config = case
    segments = band_masks(decode_segments(B, H, Hkv, 64, lengths, dtype=dtype))
    if B > 1 and len(lengths) > 2:
        segments[2][3][1] = False  # an empty eidetic store in row 1
    out = decode_attention_triton(segments, 0.125, _config=config)
    ref = decode_attention_reference(as_dtype(segments, torch.float64), 0.125)
    err = rel_err(out, ref)
    print(f"\ndecode {case} {dtype} rel err {err:.1e}")
    assert out.dtype == dtype and torch.isfinite(out).all() and err < tol


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_gpu_decode_compiles_fullgraph(mode, monkeypatch):
    """The dispatcher inside torch.compile(fullgraph=True) (Inductor; CUDA graphs with reduce-overhead, as
    generate()'s compiled decode step) equals the eager kernel."""
    from bmojo.kernels import dispatch
    from bmojo.kernels.dispatch import decode_attention
    monkeypatch.setattr(dispatch, "DECODE_KERNEL", True)
    segments = band_masks(decode_segments(4, 12, 12, 64, (512, 1024, 512), dtype=torch.bfloat16))
    flat = [t for seg in segments for t in seg]

    def step(*tensors):
        segs = [tuple(tensors[i:i + 4]) for i in range(0, len(tensors), 4)]
        return decode_attention(segs, 0.125, use_kernels=True)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, mode=mode)
    eager = step(*flat)
    for _ in range(3):  # reduce-overhead records its CUDA graph on a later call
        out = compiled(*flat)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
