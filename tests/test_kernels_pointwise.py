"""The Triton kernels of BMOJO_POINTWISE_KERNELS=1 (kernels/pointwise/rows.py) against the PyTorch definitions
(kernels/pointwise/naive.py): RMSNorm, the gated RMSNorm, SwiGLU and the RoPE rotation, forward and backward.

CPU: the Triton interpreter (TRITON_INTERPRET=1, in a child pytest: conftest.triton_interpreter_marks) on tiny
shapes: float32 against the float64 reference (the rotation's reference computes in float32 whatever its
input: compared at float32 precision), with the strided inputs the mixers pass; and a tiny model's training
step, prefill and eager decode steps with the kernels forced on against the same calls without them. GPU
(skipped without CUDA): the bench model's shapes in bf16 against the float32 reference. Errors are relative
(||x - ref|| / ||ref||) and printed (pytest -s shows them).
"""

import pytest
import torch

import bmojo
from bmojo.kernels import dispatch
from bmojo.kernels.pointwise.naive import (gated_rms_norm_reference, rms_norm_reference, rotate_reference,
                                           swiglu_reference)
from conftest import left_padded_batch, run_under_interpreter, training_step, triton_interpreter_marks

triton = pytest.importorskip("triton", reason="triton is not installed")
try:
    from bmojo.kernels.pointwise.rows import (MAX_WIDTH, gated_rms_norm_triton, rms_norm_triton,
                                              rotate_triton, swiglu_triton)
except Exception as exc:  # a Triton build that cannot load the kernels
    pytest.skip(f"Triton kernels unavailable here: {exc!r}", allow_module_level=True)

CUDA = torch.cuda.is_available()
INTERPRET, on_interpreter = triton_interpreter_marks(CUDA)  # conftest: why a child process
DEVICE = "cuda" if CUDA else "cpu"


def rel_err(x, ref):
    return float((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def run(fn, args, dy, dtype=None):
    """(out, grads of every floating input that requires one) of fn on copies of args (cast to `dtype`)."""
    leaves = [a.detach().to(dtype or a.dtype).requires_grad_(a.requires_grad) if torch.is_tensor(a) else a
              for a in args]
    out = fn(*leaves)
    out.backward(dy.to(out.dtype))
    return [out.detach()] + [a.grad for a in leaves if torch.is_tensor(a) and a.requires_grad]


def compare(kernel, reference, args, dy, tol, ref_dtype=torch.float64):
    got = run(kernel, args, dy)
    want = run(reference, args, dy, dtype=ref_dtype)
    errs = [rel_err(g, w) for g, w in zip(got, want, strict=True)]
    print(kernel.__name__, [tuple(a.shape) for a in args if torch.is_tensor(a)], args[0].dtype,
          [f"{e:.1e}" for e in errs])
    for g, a in zip(got, [args[0]] + [a for a in args if torch.is_tensor(a) and a.requires_grad]):
        assert g.dtype == a.dtype and g.shape == a.shape
    assert max(errs) < tol, errs


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def norm_inputs(rows, width, gated, dtype=torch.float32, seed=0):
    """x (and z) as the mixers pass them: slices of one wider projection (row stride > width)."""
    g = gen(seed)
    wide = torch.randn(*rows, 2 * width + 5, generator=g).to(DEVICE, dtype)
    x = wide[..., 3:3 + width].requires_grad_()
    z = wide[..., width + 4:2 * width + 4].requires_grad_() if gated else None
    weight = (1 + 0.3 * torch.randn(width, generator=g)).to(DEVICE, dtype).requires_grad_()
    dy = torch.randn(*rows, width, generator=g).to(DEVICE, dtype)
    return x, z, weight, dy


def check_norm(rows, width, gated, dtype=torch.float32, tol=1e-6):
    x, z, weight, dy = norm_inputs(rows, width, gated, dtype)
    if gated:
        compare(gated_rms_norm_triton, gated_rms_norm_reference, (x, z, weight, 1e-5), dy, tol,
                ref_dtype=torch.float64 if dtype == torch.float32 else torch.float32)
    else:
        compare(rms_norm_triton, rms_norm_reference, (x, weight, 1e-5), dy, tol,
                ref_dtype=torch.float64 if dtype == torch.float32 else torch.float32)


def rope(batch, seqlen, dim, positions=None):
    pos = torch.arange(seqlen).expand(batch, -1) if positions is None else positions
    inv = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = pos.double()[..., None] * inv
    return angles.cos().float()[:, :, None].to(DEVICE), angles.sin().float()[:, :, None].to(DEVICE)


def check_rotate(batch, seqlen, heads, dim, dtype=torch.float32, strided=False, tol=1e-6, positions=None):
    g = gen(1)
    x = torch.randn(batch, seqlen, heads * (2 if strided else 1), dim, generator=g).to(DEVICE, dtype)
    x = (x[:, :, ::2] if strided else x).requires_grad_()
    cos, sin = rope(batch, seqlen, dim, positions)
    dy = torch.randn(batch, seqlen, heads, dim, generator=g).to(DEVICE, dtype)
    compare(rotate_triton, rotate_reference, (x, cos, sin), dy, tol, ref_dtype=None)


def check_swiglu(shape, dtype=torch.float32, tol=1e-6, transposed=False):
    g = gen(2)
    gate, up, dy = (torch.randn(*shape, generator=g).to(DEVICE, dtype) for _ in range(3))
    if transposed:  # not contiguous: the launcher copies
        gate = gate.transpose(0, 1).contiguous().transpose(0, 1)
    compare(swiglu_triton, swiglu_reference, (gate.requires_grad_(), up.requires_grad_()), dy, tol,
            ref_dtype=torch.float64 if dtype == torch.float32 else torch.float32)


# ---------------------------------------------------------------- CPU: Triton interpreter, tiny shapes

@on_interpreter
@pytest.mark.parametrize("rows,width", [
    ((3, 5), 37),      # width not a power of two; 15 rows over 4 backward programs (ranges of 4, last short)
    ((1,), 3),         # one row of three elements (a width of 1 has a gradient of ~0: no relative error)
    ((2, 9, 3), 64),   # several leading dims
    ((40,), 8),        # many rows per backward program
])
@pytest.mark.parametrize("gated", [False, True])
def test_interpreter_norms_match_reference(rows, width, gated):
    check_norm(rows, width, gated)


@on_interpreter
def test_interpreter_norms_in_half_precision():
    """float16 inputs and weight: the kernel rounds as the reference does (the normalised row to the weight's
    dtype, then the product); the gated norm's reference rounds y * silu(z) too, the kernel does not."""
    check_norm((4, 6), 48, gated=False, dtype=torch.float16, tol=2e-3)
    check_norm((4, 6), 48, gated=True, dtype=torch.float16, tol=5e-3)
    x, _, weight, _ = norm_inputs((4, 6), 48, False, torch.float16)
    with torch.no_grad():
        assert torch.equal(rms_norm_triton(x, weight, 1e-5), rms_norm_reference(x, weight, 1e-5))


@on_interpreter
@pytest.mark.parametrize("shape,transposed", [((3, 700), False), ((2, 3, 1025), False), ((5, 7), True)])
def test_interpreter_swiglu_matches_reference(shape, transposed):
    check_swiglu(shape, transposed=transposed)


@on_interpreter
@pytest.mark.parametrize("batch,seqlen,heads,dim,strided", [
    (2, 7, 20, 16, False),   # heads over two blocks of 16
    (3, 1, 4, 8, True),      # a decode step's shape; heads not adjacent (a strided view)
    (1, 5, 1, 2, False),     # D = 2
])
def test_interpreter_rotate_matches_reference(batch, seqlen, heads, dim, strided):
    check_rotate(batch, seqlen, heads, dim, strided=strided)


@on_interpreter
def test_interpreter_rotate_at_per_row_positions():
    """Decode-style angles: each row at its own position (cos, sin [B, 1, 1, D/2] not expanded over rows)."""
    check_rotate(3, 1, 5, 16, positions=torch.tensor([[4], [0], [1000]]))


@on_interpreter
def test_interpreter_no_grad_forward_equals_autograd_forward():
    x, z, weight, _ = norm_inputs((3, 4), 24, True)
    cos, sin = rope(3, 4, 24)
    with torch.no_grad():
        plain = [rms_norm_triton(x, weight, 1e-5), gated_rms_norm_triton(x, z, weight, 1e-5),
                 swiglu_triton(x, z), rotate_triton(x.reshape(3, 4, 1, 24), cos, sin)]
    tracked = [rms_norm_triton(x, weight, 1e-5), gated_rms_norm_triton(x, z, weight, 1e-5),
               swiglu_triton(x, z), rotate_triton(x.reshape(3, 4, 1, 24), cos, sin)]
    for a, b in zip(plain, tracked, strict=True):
        assert b.requires_grad and torch.equal(a, b.detach())


def forced(monkeypatch, on):
    """BMOJO_POINTWISE_KERNELS as if set (on) or not, whatever the device."""
    monkeypatch.setattr(dispatch, "pointwise_kernels_used", lambda tensor, use_kernels="auto": on)


@on_interpreter
@pytest.mark.parametrize("preset", ["tiny", "swa-transformer-tiny"])
def test_interpreter_model_training_step_equals_reference(preset, monkeypatch):
    """A tiny model's loss and every parameter gradient with the kernels forced on equal the default path's
    (norms, gated norm, SwiGLU and RoPE in the forward and the backward)."""
    results = [training_step(preset, monkeypatch, forced, on) for on in (True, False)]
    assert len(results[0]) == len(results[1]) > 10
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@on_interpreter
def test_interpreter_training_step_under_bf16_autocast(monkeypatch):
    """What HF Trainer's bf16=True runs: float32 weights, bf16 activations from autocast's matmuls, so the norms
    see a bf16 x with a float32 weight and the gated norm a float32 y with a bf16 z. Loss and gradients with
    the kernels forced on agree with the default path at bf16 precision."""
    results = [training_step("tiny", monkeypatch, forced, on, autocast=torch.bfloat16)
               for on in (True, False)]
    assert len(results[0]) == len(results[1]) > 10
    for got, want in zip(*results):
        assert got.dtype == want.dtype
        assert rel_err(got, want) < 3e-2, rel_err(got, want)


@on_interpreter
def test_interpreter_model_prefill_and_decode_equal_reference(monkeypatch):
    """Prefill of a left-padded batch and 6 eager decode steps (rotations of one token per row, norms of
    [B, d]): logits with the kernels forced on equal the default path's."""
    config = bmojo.preset_config("tiny", use_kernels=False)
    model = bmojo.BMojoForCausalLM(config).eval()
    batch = left_padded_batch()
    logits = []
    for on in (True, False):
        with monkeypatch.context() as patch, torch.no_grad():
            forced(patch, on)
            ids, mask = batch["input_ids"], batch["attention_mask"]
            out = model(ids, attention_mask=mask, use_cache=True)
            cache, calls = out.past_key_values, [out.logits]
            for step in range(6):
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                token = calls[-1][:, -1:].argmax(-1)
                calls.append(model(token, past_key_values=cache, attention_mask=mask).logits)
        logits.append(calls)
    for got, want in zip(*logits, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_bad_inputs_raise_naming_the_field():
    x = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="weight has shape"):
        rms_norm_triton(x, torch.ones(7), 1e-5)
    with pytest.raises(ValueError, match="z has shape"):
        gated_rms_norm_triton(x, torch.zeros(2, 7), torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match=str(MAX_WIDTH)):
        rms_norm_triton(torch.zeros(1, MAX_WIDTH + 1), torch.ones(MAX_WIDTH + 1), 1e-5)
    with pytest.raises(ValueError, match="gate has dtype"):
        swiglu_triton(x.long(), x.long())
    with pytest.raises(ValueError, match="D even"):
        rotate_triton(torch.zeros(1, 2, 3, 5), torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 1, 2))
    with pytest.raises(ValueError, match="sin requires grad"):
        angles = torch.zeros(1, 2, 1, 2)
        rotate_triton(torch.zeros(1, 2, 3, 4), angles, angles.clone().requires_grad_())


def test_dispatch_takes_the_reference_for_what_the_kernels_refuse(monkeypatch):
    """With the switch on, inputs a kernel refuses (float64 here) run the reference, not an error."""
    forced(monkeypatch, True)
    gate = torch.randn(2, 3, dtype=torch.float64)
    assert torch.equal(dispatch.swiglu(gate, gate), swiglu_reference(gate, gate))


@pytest.mark.skipif(CUDA or INTERPRET, reason="the parent of the interpreter run, CPU only")
def test_interpreter_suite():
    run_under_interpreter(__file__)


# ---------------------------------------------------------------- GPU: the bench model's shapes

@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_bf16_at_the_bench_shapes():
    """bmojo-matched at 8 x 2048: RMSNorm over d = 768, the gated norm over 1,024 inner channels read from the
    in-projection's slices, SwiGLU at 8 x 2048 x 1,024, RoPE of 12 heads of 64; bf16 against float32."""
    check_norm((8, 2048), 768, gated=False, dtype=torch.bfloat16, tol=1e-2)
    check_norm((8, 2048), 1024, gated=True, dtype=torch.bfloat16, tol=1e-2)
    check_swiglu((8, 2048, 1024), dtype=torch.bfloat16, tol=1e-2)
    check_rotate(8, 2048, 12, 64, dtype=torch.bfloat16, tol=1e-2)
    check_rotate(16, 1, 36, 64, dtype=torch.bfloat16, tol=1e-2, positions=torch.arange(16)[:, None] * 97)
    check_norm((1, 32768), 768, gated=False, dtype=torch.bfloat16, tol=1e-2)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_model_with_the_kernels_equals_the_default_path(monkeypatch):
    """bmojo-130m's layer (2 layers), bf16: a training step's loss and gradients, and a prefill plus 4 eager
    decode steps' logits, with the kernels on against the compiled helpers (`fused_on_cuda`); bf16 rounds
    differently in the two (the kernels round once, the helpers as the reference does): a tolerance."""
    config = bmojo.preset_config("bmojo-130m", num_hidden_layers=2)
    g = gen(4)
    ids = torch.randint(3, config.vocab_size, (2, 700), generator=g).to(DEVICE)
    results = []
    for on in (True, False):
        torch.manual_seed(0)
        model = bmojo.BMojoForCausalLM(config).to(DEVICE, torch.bfloat16)
        with monkeypatch.context() as patch:
            forced(patch, on)
            loss = model(ids, labels=ids).loss
            loss.backward()
            grads = [p.grad.float() for p in model.parameters() if p.grad is not None]
            with torch.no_grad():
                out = model(ids, use_cache=True)
                logits, cache = [out.logits[:, -1].float()], out.past_key_values
                for t in range(4):  # fixed tokens: an argmax could differ between the paths in bf16
                    step = model(ids[:, t:t + 1], past_key_values=cache)
                    logits.append(step.logits[:, -1].float())
        # the gradients as one vector: a small parameter's gradient alone may move more with bf16's rounding
        results.append([loss.float(), torch.cat([grad.flatten() for grad in grads]), *logits])
    errs = [rel_err(got, want) for got, want in zip(*results, strict=True)]
    print("loss, gradients, logits of the prefill and 4 steps:", [f"{e:.1e}" for e in errs])
    assert max(errs) < 3e-2, errs
