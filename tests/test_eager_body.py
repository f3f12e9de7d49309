"""kernels/custom_ops.py `EagerBody`: which eager calls of a registered op run its body directly (no autograd,
no dispatch mode, plain tensors: the dispatcher's host cost skipped) and that the body then launches with
`wrap_triton` switched off, as torch's own eager call of a triton_op does. With `wrap_triton` on, every launch
went through a higher-order op, ~1 ms each: on an H200 a 2k prefill took 71 instead of 51 ms (2026-12-05)."""

import traceback

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from bmojo.kernels.custom_ops import EagerBody, kernel_op

triton_lib = pytest.importorskip("torch._library.triton")
CALLS = []


def _fake(x):
    return torch.empty_like(x)


@kernel_op("test_eager_body_probe", fake=_fake)
def probe(x: torch.Tensor) -> torch.Tensor:
    """Records (called through torch's op machinery, wrap_triton on) and doubles x."""
    frames = traceback.extract_stack()
    dispatched = any(("torch/_library" in f.filename or "torch/_ops" in f.filename) for f in frames)
    CALLS.append((dispatched, triton_lib.is_wrap_triton_enabled()))
    return x * 2


def _probe_backward(ctx, grad):
    return grad * 2


probe.register_autograd(_probe_backward)


def call(x):
    """probe(x), checked, and how its body ran: (through the op machinery, wrap_triton on)."""
    CALLS.clear()
    out = probe(x)
    if type(out) is torch.Tensor:
        assert torch.equal(out, x.detach() * 2)
    assert len(CALLS) == 1
    return CALLS[0]


def test_registered_ops_are_wrapped():
    assert isinstance(probe, EagerBody)
    assert probe.op._qualname == "bmojo::test_eager_body_probe"  # attributes reach the op


def test_plain_eager_call_runs_the_body_with_wrap_triton_off():
    assert triton_lib.is_wrap_triton_enabled()  # torch's default, restored after the call
    assert call(torch.randn(3)) == (False, False)
    assert triton_lib.is_wrap_triton_enabled()
    with torch.no_grad():
        assert call(torch.randn(3, requires_grad=True)) == (False, False)
    assert call(torch.nn.Parameter(torch.randn(3), requires_grad=False)) == (False, False)


def test_calls_that_need_the_op_use_it():
    x = torch.randn(3, requires_grad=True)
    assert call(x)[0]
    probe(x).sum().backward()  # the registered autograd formula
    assert torch.equal(x.grad, torch.full((3,), 2.0))
    with FakeTensorMode() as mode:  # a dispatch mode, as when a compiler traces
        assert call(mode.from_tensor(torch.randn(3)))[0]
    compiled = torch.compile(lambda t: probe(t), backend="eager", fullgraph=True)
    assert torch.equal(compiled(torch.ones(2)), torch.full((2,), 2.0))


def test_switch_off_sends_eager_calls_through_the_op(monkeypatch):
    """BMOJO_EAGER_BODY=0 (read at import into EAGER_BODY): the op, as before EagerBody existed."""
    from bmojo.kernels import custom_ops
    monkeypatch.setattr(custom_ops, "EAGER_BODY", False)
    assert call(torch.randn(3))[0]


MUTATING = []


def _fill_fake(dest, src):
    return None


@kernel_op("test_mutating_probe", fake=_fill_fake, mutates=("dest",))
def fill_probe(dest: torch.Tensor, src: torch.Tensor) -> None:
    """dest := 2 src, in place; records whether a custom_op's Python layers ran above it."""
    frames = traceback.extract_stack()
    MUTATING.append(any("torch/_library/custom_ops" in f.filename or "torch/_library/autograd" in f.filename
                        for f in frames))
    dest.copy_(src * 2)


def test_mutating_ops_are_called_without_custom_op_layers():
    """An op that writes its arguments is defined in the dispatcher, not as a custom_op: the call that
    compiled code makes reaches the body without the custom_op's Python layers (~150 us of host time per
    call of an 11-argument op), the written tensor stays out of autograd when an input needs a gradient,
    and compiled callers (auto_functionalized) and opcheck see a correct op."""
    dest, src = torch.zeros(3), torch.randn(3, requires_grad=True)
    MUTATING.clear()
    fill_probe.op(dest, src)  # through the dispatcher, as Inductor's generated code calls it
    assert MUTATING == [False]
    assert torch.equal(dest, src.detach() * 2) and not dest.requires_grad
    compiled = torch.compile(lambda d, s: fill_probe(d, s), backend="aot_eager", fullgraph=True)
    written = torch.zeros(3)
    compiled(written, src.detach())
    assert torch.equal(written, src.detach() * 2)
    torch.library.opcheck(fill_probe.op, (torch.zeros(3), torch.randn(3)))


def test_a_second_copy_of_the_module_redefines_mutating_ops():
    """The Hub's remote code carries its own copy of custom_ops.py; loaded where bmojo is imported too, it
    defines the same mutating ops again. That must not fail (a plain `Library.define` would), and the latest
    definition is the one called, as with `custom_op`."""
    import importlib.util

    from bmojo.kernels import custom_ops
    spec = importlib.util.spec_from_file_location("copy_of_custom_ops", custom_ops.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    for module, added in ((custom_ops, 1.0), (copy, 2.0)):
        @module.kernel_op("test_redefined_probe", fake=_fill_fake, mutates=("dest",))
        def add_probe(dest: torch.Tensor, src: torch.Tensor) -> None:
            dest.copy_(src + added)

        written = torch.zeros(2)
        add_probe.op(written, torch.ones(2))
        assert torch.equal(written, torch.full((2,), 1.0 + added))
