"""Triton SSD chunked scan (kernels/ssd/chunk.py) against the PyTorch definition.

CPU: the Triton interpreter (TRITON_INTERPRET=1, in a child pytest: conftest.triton_interpreter_marks) on
tiny shapes, float32 against the float64 recurrence. GPU (skipped without CUDA): B=8, T=2048, H=24, P=64,
N=128, bf16 and fp32 against the float64 chunked reference. Every comparison covers y, the final state and
the gradients of x, dt, A, B, C, D and the initial state; errors are relative (||x - ref|| / ||ref||) and
printed (pytest -s shows them).
"""

import pytest
import torch

from conftest import run_under_interpreter, triton_interpreter_marks

triton = pytest.importorskip("triton", reason="triton is not installed")
try:
    from bmojo.kernels.ssd.chunk import ssd_chunk_triton
    from bmojo.kernels.ssd.naive import ssd_chunked, ssd_recurrent
except Exception as exc:  # a Triton build that cannot load the kernels
    pytest.skip(f"Triton kernels unavailable here: {exc!r}", allow_module_level=True)

CUDA = torch.cuda.is_available()
INTERPRET, on_interpreter = triton_interpreter_marks(CUDA)  # conftest: why a child process
DEVICE = "cuda" if CUDA else "cpu"
NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")


# float32 against float64: 1e-5 relative. The gradients of the per-head parameters A and D are each one
# sum over every (batch, time, P, N) term, with cancellation, so their float32 rounding is measured against
# a smaller norm; they get 1e-4 (a real indexing or masking bug gives errors of order 1e-1).
TOL = 1e-5
TOL_BY_NAME = {"dA": 1e-4, "dD": 1e-4}  # keys as `compare` names its errors ("y", "final", "dx", ...)


def over_tolerance(errs):
    """The (name, error) pairs over their tolerance."""
    return {k: v for k, v in errs.items() if v >= TOL_BY_NAME.get(k, TOL)}


def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def make_inputs(batch, T, H, G, P, N, dtype=torch.float32, device=DEVICE, with_d=True, with_s0=True):
    """Fresh random inputs in the model's ranges: dt = softplus(.) >= 0, A < 0."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype).requires_grad_()

    dt = torch.nn.functional.softplus(torch.randn(batch, T, H, generator=gen, device=device) - 1.0)
    A = -torch.exp(torch.rand(H, generator=gen, device=device) * 2.0 - 1.0)  # in [-e, -1/e]
    return dict(x=rnd(batch, T, H, P), dt=dt.to(dtype).requires_grad_(), A=A.requires_grad_(),
                B=rnd(batch, T, G, N, scale=N ** -0.5), C=rnd(batch, T, G, N, scale=N ** -0.5),
                D=torch.randn(H, generator=gen, device=device).requires_grad_() if with_d else None,
                initial_state=rnd(batch, H, P, N).float().detach().requires_grad_() if with_s0 else None)


def run(fn, args, dy, dfinal, **kw):
    """y, final state and the gradients of every tensor input under loss <y, dy> + <final, dfinal>."""
    y, final = fn(args["x"], args["dt"], args["A"], args["B"], args["C"], D=args["D"],
                  initial_state=args["initial_state"], output_final_state=True, **kw)
    names = [n for n in NAMES if args[n] is not None]
    loss = (y.double() * dy.double()).sum() + (final.double() * dfinal.double()).sum()
    grads = torch.autograd.grad(loss, [args[n] for n in names])
    return y, final, dict(zip(names, grads))


def upcast(args, dtype):
    return {n: None if t is None else t.detach().to(dtype).requires_grad_() for n, t in args.items()}


def compare(args, reference, label="", **kw):
    """Relative errors of the kernel vs `reference` (run on the same inputs in float64)."""
    dy = torch.randn_like(args["x"], dtype=torch.float32)
    dfinal = torch.randn(*args["x"].shape[:1], *args["x"].shape[2:], args["B"].shape[-1], device=dy.device)
    y, final, grads = run(ssd_chunk_triton, args, dy, dfinal, **kw)
    ref_y, ref_final, ref_grads = run(reference, upcast(args, torch.float64), dy, dfinal)
    assert y.dtype == args["x"].dtype and final.dtype == torch.float32
    errs = {"y": rel_err(y, ref_y), "final": rel_err(final, ref_final)}
    for name, ref in ref_grads.items():
        g = grads[name]
        assert g.dtype == args[name].dtype and torch.isfinite(g).all(), name
        errs["d" + name] = rel_err(g, ref)
    detail = " ".join(f"{k}={v:.1e}" for k, v in errs.items())
    print(f"\n{label} max rel err {max(errs.values()):.2e} {detail}")
    return errs


def reference_recurrent(x, dt, A, B, C, chunk_size=None, **kw):
    return ssd_recurrent(x, dt, A, B, C, **kw)


# ---------------------------------------------------------------- CPU: Triton interpreter, tiny shapes

CPU_CASES = [  # batch, T, H, G, P, N, kernel chunk Q
    (2, 33, 4, 2, 16, 16, 16),   # 3 chunks, the last one partial
    (1, 7, 2, 1, 16, 16, 16),    # T < Q: one partial chunk
    (2, 33, 2, 2, 20, 24, 16),   # P, N not powers of 2 (masked tiles), one head per group
    (1, 33, 3, 1, 16, 8, 32),    # N = 8 < 16 (the tiny preset's state size), Q = 32
    (1, 40, 2, 1, 48, 16, 16),   # P = 48 > the backward's P tile: the kernel loops over P tiles
]


@on_interpreter
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "B{}-T{}-H{}-G{}-P{}-N{}-Q{}".format(*c))
def test_interpreter_matches_definition(case):
    *shape, q = case
    cfg = {"Q": q, "bwd": (32, 4)} if shape[4] > 32 else {"Q": q}
    errs = compare(make_inputs(*shape), reference_recurrent, label=str(case), _config=cfg)
    assert not over_tolerance(errs), errs


@on_interpreter
@pytest.mark.parametrize("with_d,with_s0", [(False, False), (True, False)], ids=["no-D-no-s0", "D-no-s0"])
def test_interpreter_matches_chunked_reference_optional_inputs(with_d, with_s0):
    args = make_inputs(2, 33, 2, 1, 16, 16, with_d=with_d, with_s0=with_s0)
    errs = compare(args, ssd_chunked_64, label=f"D={with_d} s0={with_s0}", _config={"Q": 16})
    assert not over_tolerance(errs), errs


def ssd_chunked_64(x, dt, A, B, C, **kw):
    return ssd_chunked(x, dt, A, B, C, 64, **kw)


@on_interpreter
def test_interpreter_y_only_and_no_final_state():
    # without output_final_state the function returns None and backprop sees only y
    args = make_inputs(1, 33, 2, 1, 16, 16)
    y, final = ssd_chunk_triton(args["x"], args["dt"], args["A"], args["B"], args["C"], 16, D=args["D"],
                                initial_state=args["initial_state"], _config={"Q": 16})
    assert final is None
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [args[n] for n in NAMES], dy)
    ref = upcast(args, torch.float64)
    y_ref, _ = ssd_recurrent(ref["x"], ref["dt"], ref["A"], ref["B"], ref["C"], D=ref["D"],
                             initial_state=ref["initial_state"])
    ref_grads = torch.autograd.grad(y_ref, [ref[n] for n in NAMES], dy.double())
    errs = {"y": rel_err(y, y_ref), **{"d" + n: rel_err(g, r) for n, g, r in zip(NAMES, grads, ref_grads)}}
    assert not over_tolerance(errs), errs


@pytest.mark.skipif(CUDA or INTERPRET, reason="the parent of the interpreter run, CPU only")
def test_interpreter_suite():
    run_under_interpreter(__file__)


@pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or the interpreter")
def test_every_output_element_written(monkeypatch):
    """Outputs, states and gradients are allocated NaN-filled: a single unwritten element would show."""
    real_empty_like, real_empty = torch.empty_like, torch.empty

    def nan_empty_like(t, *a, **kw):
        out = real_empty_like(t, *a, **kw)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    def nan_empty(*a, **kw):
        out = real_empty(*a, **kw)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty_like", nan_empty_like)
    monkeypatch.setattr(torch, "empty", nan_empty)
    shape, cfg = ((1, 19, 2, 1, 20, 24), {"Q": 16}) if INTERPRET else ((2, 1000, 8, 2, 64, 128), None)
    args = make_inputs(*shape, dtype=torch.float32 if INTERPRET else torch.bfloat16)
    y, final = ssd_chunk_triton(args["x"], args["dt"], args["A"], args["B"], args["C"], 64, D=args["D"],
                                initial_state=args["initial_state"], output_final_state=True, _config=cfg)
    assert torch.isfinite(y).all() and torch.isfinite(final).all()
    grads = torch.autograd.grad((y.float() * torch.randn_like(y, dtype=torch.float32)).sum() + final.sum(),
                                [args[n] for n in NAMES])
    for name, g in zip(NAMES, grads):
        assert torch.isfinite(g).all(), name


@pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or the interpreter")
def test_input_checks():
    args = make_inputs(1, 8, 2, 1, 16, 16)
    x, dt, A, B, C = (args[n] for n in ("x", "dt", "A", "B", "C"))
    with pytest.raises(ValueError, match="dt must be"):
        ssd_chunk_triton(x, dt[:, :4], A, B, C)
    with pytest.raises(ValueError, match="G dividing"):
        ssd_chunk_triton(x, dt, A, torch.randn(1, 8, 3, 16), torch.randn(1, 8, 3, 16))
    with pytest.raises(ValueError, match="initial_state"):
        ssd_chunk_triton(x, dt, A, B, C, initial_state=torch.zeros(1, 2, 16, 8))
    with pytest.raises(ValueError, match="dtype"):
        ssd_chunk_triton(x.double(), dt, A, B, C)


# ---------------------------------------------------------------- the custom operators

@pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or the interpreter")
@pytest.mark.parametrize("with_d,with_s0", [(True, True), (False, False)], ids=["D-s0", "no-D-no-s0"])
def test_custom_ops_pass_opcheck(with_d, with_s0):
    """torch.library.opcheck of bmojo::ssd_chunk_fwd (schema, fake implementation, autograd registration,
    AOT dispatch with dynamic shapes through the backward op) and of the backward op."""
    from bmojo.kernels.ssd import chunk
    fwd, bwd = torch.ops.bmojo.ssd_chunk_fwd.default, torch.ops.bmojo.ssd_chunk_bwd.default
    torch.manual_seed(0)
    args = make_inputs(1, 19, 2, 1, 16, 8, with_d=with_d, with_s0=with_s0)
    config = chunk._flat_config({**chunk._default_config(16, 8), "Q": 16})
    inputs = tuple(args[n] for n in NAMES) + (config,)
    torch.library.opcheck(fwd, inputs)
    inputs = tuple(None if t is None else t.detach() for t in inputs[:-1]) + (config,)
    y, final = fwd(*inputs)
    for dfinal in (torch.randn_like(final), None):
        torch.library.opcheck(bwd, (torch.randn_like(y), dfinal) + inputs)


# ---------------------------------------------------------------- GPU: real shapes

GPU_CASES = [  # batch, T, H, G, P, N
    (8, 2048, 24, 1, 64, 128),   # the benchmark's layer
    (2, 2000, 8, 2, 64, 128),    # ragged T (partial last chunk), two groups
    (2, 1000, 4, 4, 128, 64),    # P = 128, N = 64, one head per group
]


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-3)], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "B{}-T{}-H{}-G{}-P{}-N{}".format(*c))
def test_gpu_matches_reference(case, dtype, tol):
    errs = compare(make_inputs(*case, dtype=dtype), ssd_chunked_64, label=f"{case} {dtype}")
    assert max(errs.values()) < tol, errs


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_dispatch_routes_to_kernel():
    from bmojo.kernels.dispatch import ssd_scan
    args = make_inputs(1, 300, 4, 1, 64, 64, dtype=torch.bfloat16)
    inputs = [args[n] for n in ("x", "dt", "A", "B", "C")]
    y, final = ssd_scan(*inputs, 128, D=args["D"], initial_state=args["initial_state"],
                        output_final_state=True)
    y_k, final_k = ssd_chunk_triton(*inputs, 128, D=args["D"], initial_state=args["initial_state"],
                                    output_final_state=True)
    assert torch.equal(y, y_k) and torch.equal(final, final_k)
