"""Registers the Triton launchers as PyTorch custom operators (namespace `bmojo`), so that
`torch.compile` traces a model through them instead of breaking its graph or tracing into them.

Each op is a launcher that allocates its outputs and launches Triton kernels; its autograd formula
(`register_autograd`) calls the backward launcher, itself an op. Three registrations, one body:

  - `torch.library.triton_op` when the kernels are compiled Triton: AOTAutograd decomposes the op
    into its allocations and kernel launches (`wrap_triton`), so Inductor sees the kernels and
    schedules the code around them; the body is the op's fake implementation.
  - `torch.library.custom_op` with an explicit fake implementation otherwise: under the Triton
    interpreter (TRITON_INTERPRET=1, CPU tests: the interpreter cannot run on fake tensors, which is
    how triton_op traces its body), on a torch without `triton_op`, or when BMOJO_OPAQUE_KERNELS=1
    asks for it (an escape hatch should Inductor fail to compile one of the kernels: the op is then
    an opaque call, still without a graph break).
  - Ops that write their arguments in place (the cache fills and decode updates) are opaque either way,
    defined directly in the dispatcher (`_mutating_op`): a custom_op's Python layers cost each call of
    those more host time than its kernel takes on the device.

Ops take Python ints and int lists only (tile sizes are passed flattened), and return tensors only:
an absent gradient is an empty tensor, which the autograd formula turns into None.
"""

import os

import torch
import triton


def _interpreted():
    # triton.jit returns an InterpretedFunction instead of a JITFunction under TRITON_INTERPRET=1
    @triton.jit
    def probe():
        pass

    return type(probe).__name__ == "InterpretedFunction"


# BMOJO_EAGER_BODY=0 sends every eager call through the registered op (the dispatcher) instead of the body
# (`EagerBody`): a switch to time the two paths on one machine, and to bisect should they ever differ.
EAGER_BODY = os.environ.get("BMOJO_EAGER_BODY", "1") == "1"

USE_TRITON_OP = (hasattr(torch.library, "triton_op") and not _interpreted()
                 and os.environ.get("BMOJO_OPAQUE_KERNELS", "0") != "1")


def launch(kernel, traced=True):
    """The kernel as the op body must launch it: wrapped for tracing under triton_op, as is otherwise
    (`traced=False`: the body of an op registered as an opaque custom_op, see `kernel_op`)."""
    return torch.library.wrap_triton(kernel) if USE_TRITON_OP and traced else kernel


def kernel_op(name, fake, mutates=()):
    """Decorator: registers a launcher as the op `bmojo::<name>`; `fake` computes the outputs' metadata
    (used as the fake implementation of the custom_op form; the triton_op form traces the body).
    `mutates`: the names of the arguments the op writes in place (it then returns None). Such an op is
    always opaque (`_mutating_op`): functionalization rejects a `triton_op` that mutates its inputs (torch
    2.11 on an H200: "Found a custom (non-ATen) operator whose output has alias annotations"), while an
    opaque mutating op is traced as `auto_functionalized` and written back in place by Inductor."""

    def register(fn):
        qualname = f"bmojo::{name}"
        if mutates:
            return EagerBody(_mutating_op(name, fn, fake, mutates), fn)
        if USE_TRITON_OP:
            return EagerBody(torch.library.triton_op(qualname, fn, mutates_args=mutates), fn)
        op = torch.library.custom_op(qualname, fn, mutates_args=mutates)
        op.register_fake(fake)
        return EagerBody(op, fn)

    return register


def _library_of(name):
    """A Library fragment of its own for the op `bmojo::<name>`, the one a previous definition used destroyed
    first: a second copy of this module (the Hub's remote code, loaded where bmojo is also imported) then
    redefines the op instead of failing, as `custom_op` allows. torch's own registry of those libraries is
    what custom_op uses; without it (another torch), one library per op and copy, kept alive here."""
    try:
        from torch._library.custom_ops import get_library_allowing_overwrite
    except ImportError:
        library = torch.library.Library("bmojo", "FRAGMENT")
        _LIBRARIES.append(library)  # a Library unregisters its ops when collected
        return library
    return get_library_allowing_overwrite("bmojo", name)


_LIBRARIES = []


def _mutating_op(name, fn, fake, mutates):
    """A mutating op, registered at the dispatcher's level (`Library.define` / `impl`), not as a `custom_op`.

    Why: what a compiled graph calls of such an op is the op itself (Inductor cannot see into it), and a
    `custom_op`'s call passes three Python layers (an autograd wrapper, a version-bumping ADInplaceOrView
    kernel that rebuilds the argument list, a checking backend wrapper) before the body: ~150 us per call of
    an 11-argument op on this project's CPU sandbox (torch 2.13), 110-220 us on the H100/H200 hosts, where a
    compiled 1 x 2048 prefill then called `fill_set` and `fill_ring` 60 times (~7 of its 20 ms of host time,
    H200, 2026-12-05: benchmarks/results/prefill_compiled_bmojo-matched_2048_h200_2026-12-05d.txt; compiled
    code now traces those fills' references, `dispatch.state_writes_use_kernels`, and calls the decode
    step's `eidetic_decode_step` this way). Defined here,
    a call is two short Python hops (~21 us there, with the autograd kernel: benchmarks/results/
    mutating_op_cost_cpu_2026-12-05d.py). That kernel runs the op below
    autograd: the state it writes never joins a graph, as with the custom_op (none has a gradient)."""
    schema = torch.library.infer_schema(fn, mutates_args=mutates)
    library = _library_of(name)
    library.define(name + schema)
    op = getattr(torch.ops.bmojo, name).default

    def below_autograd(keyset, *args, **kwargs):
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args, **kwargs)

    for key in ("CPU", "CUDA"):
        library.impl(name, fn, key)
    library.impl(name, below_autograd, "Autograd", with_keyset=True)
    torch.library.register_fake(f"bmojo::{name}", fake, lib=library)
    return op


class EagerBody:
    """A registered op that eager calls without autograd run as its plain body.

    Going through the dispatcher costs host time that eager prefills and decode steps cannot spare: on this
    project's CPU sandbox (torch 2.13) a call took ~37 us more than the body, and ops with many arguments
    ~0.3 ms more (`torch._library.utils.fill_defaults` walks the schema's argument list once per argument,
    rebuilding it each time). Compiled code (the op is what torch.compile must see) and calls that need a
    gradient (the op's registered autograd formula) use the op, and so does any call under a dispatch mode
    or on tensor subclasses (fake tensors, AOT Autograd's tracing of a backward formula: the body would
    launch kernels on them). Everything else (`register_autograd`, `register_fake`, ...) is the op's."""

    def __init__(self, op, body):
        self.op, self.body = op, body

    def __call__(self, *args, **kwargs):
        if EAGER_BODY and _direct_wrap_off is not None and _plain_eager_call((*args, *kwargs.values())):
            # as the op's own eager call does: `wrap_triton` launches the kernel itself, not through its
            # higher-order op (about 1 ms per launch eagerly, torch's note; measured on the H200 2026-12-05:
            # a 2k prefill 51 -> 71 ms when the bodies ran without this)
            with _direct_wrap_off(False):
                return self.body(*args, **kwargs)
        return self.op(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.op, name)


def absent(like):
    """The placeholder an op returns for a gradient that does not exist (its input was None)."""
    return like.new_empty(0)


def present(grad, given):
    """A backward op's output as autograd wants it: None for an input that was None."""
    return None if given is None else grad


_PLAIN = (torch.Tensor, torch.nn.Parameter)
try:  # the switch torch's triton_op sets around an eager body; without it the op is always called
    from torch._library.triton import set_wrap_triton_enabled as _direct_wrap_off
except ImportError:
    _direct_wrap_off = None


def _plain_eager_call(args):
    """No compilation, no dispatch mode, only plain tensors, and none that autograd must track."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    grad = torch.is_grad_enabled()
    for a in args:
        if isinstance(a, torch.Tensor) and (type(a) not in _PLAIN or (grad and a.requires_grad)):
            return False
    return True
