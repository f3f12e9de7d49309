"""Triton short convolution (kernels/conv/causal.py: causal depthwise conv1d + bias + SiLU) against the
PyTorch definition (kernels/conv/naive.py).

CPU: the Triton interpreter (TRITON_INTERPRET=1, in a child pytest: conftest.triton_interpreter_marks) on
tiny shapes, float32 against float64, forward and the gradients of x, weight and bias, with the strided input
the mixer passes. GPU (skipped without CUDA): the bench model's shape (8 x 2048 x 1024, K = 4) in bf16 against
the float32 reference. Errors are relative (||x - ref|| / ||ref||) and printed (pytest -s shows them).
"""

import pytest
import torch

from conftest import run_under_interpreter, triton_interpreter_marks

triton = pytest.importorskip("triton", reason="triton is not installed")
try:
    from bmojo.kernels.conv.causal import causal_conv1d_silu_triton
    from bmojo.kernels.conv.naive import causal_conv1d_silu_reference
except Exception as exc:  # a Triton build that cannot load the kernels
    pytest.skip(f"Triton kernels unavailable here: {exc!r}", allow_module_level=True)

CUDA = torch.cuda.is_available()
INTERPRET, on_interpreter = triton_interpreter_marks(CUDA)  # conftest: why a child process
DEVICE = "cuda" if CUDA else "cpu"


def rel_err(x, ref):
    return float((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def inputs(batch, seqlen, channels, kernel, bias=True, dtype=torch.float32, seed=0, device=DEVICE):
    """x as the mixer passes it: a slice of a wider projection (row stride > channels)."""
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(batch, seqlen, channels + 9, generator=gen)
    x = wide[..., 4: 4 + channels].to(device=device, dtype=dtype).requires_grad_()
    weight = (0.5 * torch.randn(channels, kernel, generator=gen)).to(device).requires_grad_()
    b = torch.randn(channels, generator=gen).to(device).requires_grad_() if bias else None
    dy = torch.randn(batch, seqlen, channels, generator=gen).to(device=device, dtype=dtype)
    return x, weight, b, dy


def run(fn, x, weight, bias, dy, dtype=None):
    """(y, dx, dweight, dbias) of fn on copies of the inputs (cast to `dtype` when given)."""
    leaves = [None if t is None else t.detach().to(dtype or t.dtype).requires_grad_()
              for t in (x, weight, bias)]
    y = fn(*leaves)
    y.backward(dy.to(y.dtype))
    return [y.detach()] + [t.grad for t in leaves if t is not None]


def compare(x, weight, bias, dy, tol):
    got = run(causal_conv1d_silu_triton, x, weight, bias, dy)
    want = run(causal_conv1d_silu_reference, x, weight, bias, dy, dtype=torch.float64)
    errs = {name: rel_err(g, w) for name, g, w in zip(("y", "dx", "dweight", "dbias"), got, want)}
    print(tuple(x.shape), weight.shape[1], x.dtype, {k: f"{v:.1e}" for k, v in errs.items()})
    assert got[0].dtype == x.dtype and got[1].dtype == x.dtype and got[2].dtype == weight.dtype
    bad = {k: v for k, v in errs.items() if v >= tol}
    assert not bad, bad


# ---------------------------------------------------------------- CPU: Triton interpreter, tiny shapes

@on_interpreter
@pytest.mark.parametrize("batch,seqlen,channels,kernel,bias", [
    (2, 37, 20, 4, True),      # T not a multiple of the time tile, C not of the channel tile
    (1, 3, 5, 4, False),       # T < K: every output reads the zero padding; no bias
    (2, 130, 140, 3, True),    # several tiles in time and channels
    (1, 9, 6, 1, True),        # K = 1: a per-channel scale
])
def test_interpreter_matches_reference(batch, seqlen, channels, kernel, bias):
    compare(*inputs(batch, seqlen, channels, kernel, bias), tol=1e-6)


@on_interpreter
def test_interpreter_is_causal():
    """Changing x at time s changes no output before s (forward) and no gradient after s."""
    x, weight, b, _ = inputs(1, 20, 6, 4)
    y = causal_conv1d_silu_triton(x.detach(), weight.detach(), b.detach())
    bumped = x.detach().clone()
    bumped[:, 11] += 5.0
    y2 = causal_conv1d_silu_triton(bumped, weight.detach(), b.detach())
    assert torch.equal(y[:, :11], y2[:, :11]) and not torch.equal(y[:, 11:15], y2[:, 11:15])


@on_interpreter
def test_custom_ops_pass_opcheck():
    """torch.library.opcheck of the forward and backward ops: schema, fake implementation, autograd."""
    x, weight, b, dy = inputs(2, 13, 7, 4)
    x = x.detach().contiguous().requires_grad_()
    torch.library.opcheck(torch.ops.bmojo.causal_conv1d_silu_fwd.default, (x, weight, b))
    torch.library.opcheck(torch.ops.bmojo.causal_conv1d_silu_fwd.default, (x, weight, None))
    torch.library.opcheck(torch.ops.bmojo.causal_conv1d_silu_bwd.default,
                          (dy, x.detach(), weight.detach(), b.detach()))


@on_interpreter
def test_compiled_call_equals_eager():
    """Under torch.compile (aot_eager, fullgraph) the op traces without a break and gives the eager values."""
    x, weight, b, dy = inputs(2, 21, 9, 4)
    compiled = torch.compile(causal_conv1d_silu_triton, backend="aot_eager", fullgraph=True)
    for got, want in zip(run(compiled, x, weight, b, dy), run(causal_conv1d_silu_triton, x, weight, b, dy)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_bad_shapes_raise_naming_the_field():
    x = torch.zeros(2, 5, 4)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_silu_triton(x, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="bias"):
        causal_conv1d_silu_triton(x, torch.zeros(4, 4), torch.zeros(5))
    with pytest.raises(ValueError, match="width K"):
        causal_conv1d_silu_triton(x, torch.zeros(4, 9))


@pytest.mark.skipif(CUDA or INTERPRET, reason="the parent of the interpreter run, CPU only")
def test_interpreter_suite():
    run_under_interpreter(__file__)


# ---------------------------------------------------------------- GPU: the bench model's shape

@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_bf16_matches_reference():
    """8 x 2048 x 1024, K = 4 (bmojo-matched's conv), bf16 inputs against the float64 reference: bf16 rounding
    of y and dx (~4e-3), float32 accumulation of dweight and dbias over 16k positions."""
    compare(*inputs(8, 2048, 1024, 4, dtype=torch.bfloat16), tol=1e-2)
