"""Chooses an implementation for each op: Triton on CUDA when `use_kernels` allows it, else the
plain-PyTorch reference. Every variant shares one signature, so callers never branch."""

import functools
import os

import torch

from .conv.naive import causal_conv1d_silu_reference
from .innovation.naive import decode_sets_step_, take_best
from .memory_attention.naive import decode_attention_reference, memory_attention_chunked
from .pointwise.naive import gated_rms_norm_reference, rms_norm_reference, rotate_reference, swiglu_reference
from .ssd.naive import ssd_chunked
from .ssd.naive import ssd_step as _ssd_step_reference
from .state_fill.naive import fill_ring_reference_


def _triton_importable():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_TRITON = _triton_importable()  # once, at import: not an import statement inside a torch.compile'd region


def triton_available():
    return _TRITON


def use_triton(tensor, use_kernels):
    """`use_kernels`: "auto" (Triton on CUDA if importable), True (require it), False (reference)."""
    if use_kernels is False:
        return False
    ok = tensor.is_cuda and triton_available()
    if use_kernels is True and not ok:
        raise ValueError("use_kernels=True needs a CUDA tensor and an importable triton; "
                         "set use_kernels='auto' or False to use the PyTorch reference")
    return ok


def fused_on_cuda(fn):
    """Runs `fn` through torch.compile on CUDA inputs when `use_kernels` allows Triton, eagerly otherwise.

    For chains of elementwise ops (norms, RoPE, gates): inductor fuses each chain into one Triton
    kernel, so a B'MOJO layer launches far fewer kernels and reads its activations fewer times. The
    function is the same either way; the wrapped one takes `use_kernels` as a keyword.

    Inside a region that torch.compile is already tracing (a compiled model) `fn` is traced inline, never
    a nested compiled call: the outer compilation fuses it with its neighbours."""
    compiled = torch.compile(fn, dynamic=True)  # lazy: nothing is compiled until a CUDA call

    @functools.wraps(fn)
    def run(*args, use_kernels="auto"):
        if torch.compiler.is_compiling() or not use_triton(args[0], use_kernels):
            return fn(*args)
        return compiled(*args)

    return run


# Opt-in (BMOJO_FUSED_PREFILL=1): the eager parallel form's eidetic selection and cache fills as compiled
# graphs too (`fused_on_prefill`). On an H200 they cut an eager 1 x 2048 prefill from 92.6 to 73.6 ms
# (3,868 -> 2,020 kernels), but compiling them made the first prefill of a process take 26.5 s instead of
# a few (benchmarks/results/bench_prefill_h200_2026-12-04b.md): a cost an eager generate() user should not
# meet unasked. Read once, at import.
FUSED_PREFILL = os.environ.get("BMOJO_FUSED_PREFILL", "0") == "1"


def fused_on_prefill(fn):
    """`fused_on_cuda(fn)` when BMOJO_FUSED_PREFILL=1, else `fn` run eagerly; either way the wrapped function
    takes the `use_kernels` keyword."""
    if FUSED_PREFILL:
        return fused_on_cuda(fn)

    @functools.wraps(fn)
    def run(*args, use_kernels="auto"):
        return fn(*args)

    return run


# The norms, SwiGLU and the RoPE rotation as Triton kernels launched directly (pointwise/rows.py), in eager
# calls on CUDA (BMOJO_POINTWISE_KERNELS=1): each replaces a compiled call (`fused_on_cuda`), whose guards and
# wrappers cost ~0.2 ms of host time on an H200 (85 calls in a 12-layer 2k prefill, ~61 per eager decode
# step). The default since the H200 timing of 2026-12-05 (an eager 2k prefill 81.8 -> 60.7 ms alone, an
# eager training step 150.4 -> 134.2 ms: benchmarks/results/kernel_switches_h200_2026-12-05.md);
# BMOJO_POINTWISE_KERNELS=0 turns them off. Under torch.compile the references are traced inline either way.
POINTWISE_KERNELS = os.environ.get("BMOJO_POINTWISE_KERNELS", "1") == "1"


def pointwise_kernels_used(tensor, use_kernels="auto"):
    """Whether `rms_norm`, `gated_rms_norm`, `swiglu` and `rotate` launch the Triton kernels for inputs like
    `tensor` (outside torch.compile)."""
    return POINTWISE_KERNELS and use_triton(tensor, use_kernels)


def _pointwise(reference, kind):
    """`reference` dispatched: traced inline under torch.compile; in eager calls on CUDA, the Triton kernel of
    `pointwise/rows.py` (switch on) or the compiled copy (`fused_on_cuda`); else the reference. The wrapped
    function takes `use_kernels` as a keyword."""
    compiled = fused_on_cuda(reference)

    @functools.wraps(reference)
    def run(*args, use_kernels="auto"):
        if not torch.compiler.is_compiling() and pointwise_kernels_used(args[0], use_kernels):
            # imported here, not at the top: it imports triton, which CPU-only installs may lack
            from .pointwise.rows import (gated_rms_norm_unchecked, rms_norm_unchecked, rotate_unchecked,
                                         swiglu_unchecked, unsupported)
            kernel = {rms_norm_reference: rms_norm_unchecked, swiglu_reference: swiglu_unchecked,
                      gated_rms_norm_reference: gated_rms_norm_unchecked,
                      rotate_reference: rotate_unchecked}[reference]
            if unsupported(kind, *args[:-1] if kind == "norm" else args) is None:
                return kernel(*args)
        return compiled(*args, use_kernels=use_kernels)

    return run


rms_norm = _pointwise(rms_norm_reference, "norm")
gated_rms_norm = _pointwise(gated_rms_norm_reference, "norm")
swiglu = _pointwise(swiglu_reference, "swiglu")
rotate = _pointwise(rotate_reference, "rotate")


def ssd_scan(x, dt, A, B, C, chunk_size, D=None, initial_state=None, output_final_state=False, use_kernels="auto"):
    if use_triton(x, use_kernels):
        # imported here, not at the top: it imports triton, which CPU-only installs may lack
        from .ssd.chunk import ssd_chunk_triton
        return ssd_chunk_triton(x, dt, A, B, C, chunk_size, D=D, initial_state=initial_state,
                                output_final_state=output_final_state)
    return ssd_chunked(x, dt, A, B, C, chunk_size, D=D, initial_state=initial_state,
                       output_final_state=output_final_state)


def needs_grad(*tensors):
    """Whether autograd would record an op on these tensors (None entries allowed): the Triton paths without a
    backward (or not measured with one) run only when it would not."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# The Triton short convolution (conv/causal.py) runs by default where no gradient is needed (a prefill): there
# it reads the mixer's strided [B, T, C] layout directly, and its no-grad forward took 0.10 ms against aten's
# 0.64 ms at 1 x 32k and 16 x 2k (H200, 1,024 channels, bf16; benchmarks/bench_conv.py --fwd-shapes,
# 2026-12-04). With autograd it stays opt-in (BMOJO_CONV_KERNEL=1): forward + backward at the training
# shapes it was 8-12% slower than aten (same bench, same date).
CONV_KERNEL = os.environ.get("BMOJO_CONV_KERNEL", "0") == "1"


def causal_conv1d_silu(x, weight, bias=None, use_kernels="auto"):
    """silu(causal depthwise conv1d(x) + bias): x [B, T, C], weight [C, K], bias [C] -> [B, T, C]."""
    if (CONV_KERNEL or not needs_grad(x, weight, bias)) and use_triton(x, use_kernels):
        # imported here, not at the top: it imports triton, which CPU-only installs may lack
        from .conv.causal import causal_conv1d_silu_triton
        return causal_conv1d_silu_triton(x, weight, bias)
    return causal_conv1d_silu_reference(x, weight, bias)


def ssd_step(x, dt, A, B, C, state, D=None, use_kernels="auto"):
    return _ssd_step_reference(x, dt, A, B, C, state, D=D)


def memory_attention(q_rot, k, v, window, use_kernels="auto", **kwargs):
    # window=None is plain causal attention: the reference's SDPA call serves it.
    if window is not None and use_triton(q_rot, use_kernels):
        # imported here, not at the top: it imports triton, which CPU-only installs may lack
        from .memory_attention.parallel import memory_attention_triton
        return memory_attention_triton(q_rot, k, v, window, **kwargs)
    return memory_attention_chunked(q_rot, k, v, window, **kwargs)


# The fused decode kernel (memory_attention/decode.py) is the CUDA default; BMOJO_DECODE_KERNEL=0 falls
# back to the reference (which the compiler fuses), e.g. to bisect a decoding difference.
DECODE_KERNEL = os.environ.get("BMOJO_DECODE_KERNEL", "1") != "0"


def decode_attention(segments, scale, use_kernels="auto"):
    """One query per row against 1 to 3 key segments [(q [B, H, D], k, v [B, S, Hkv, D], mask [B, S])],
    one softmax -> [B, H, D]. The Triton kernel has no backward: when a gradient is needed, the reference
    runs."""
    queries_keys_values = (t for segment in segments for t in segment[:3])
    if DECODE_KERNEL and use_triton(segments[0][0], use_kernels) and not needs_grad(*queries_keys_values):
        # imported here, not at the top: it imports triton, which CPU-only installs may lack
        from .memory_attention.decode import decode_attention_triton
        return decode_attention_triton(segments, scale)
    return decode_attention_reference(segments, scale)


# The fused eidetic update (innovation/decode.py) is the CUDA default; BMOJO_EIDETIC_KERNEL=0 falls back
# to the reference, in place all the same.
EIDETIC_KERNEL = os.environ.get("BMOJO_EIDETIC_KERNEL", "1") != "0"


def eidetic_kernel_used(tensor, use_kernels="auto"):
    """Whether `eidetic_decode_step_` takes the Triton kernel for inputs like `tensor`."""
    return EIDETIC_KERNEL and use_triton(tensor, use_kernels)


def eidetic_decode_step_(store, prev, cur, token, at_boundary, valid, use_kernels="auto"):
    """One decoding token's update of the eidetic sets, in place (innovation/naive.py `decode_sets_step_`):
    store, prev, cur (s, p, k, v) tuples of fixed size; token (s [B], p [B], k [B, Hkv, D], v)."""
    if eidetic_kernel_used(token[2], use_kernels):
        # imported here, not at the top: it imports triton, which CPU-only installs may lack
        from .innovation.decode import eidetic_decode_step_triton_
        return eidetic_decode_step_triton_(store, prev, cur, token, at_boundary, valid)
    # Only one token in w opens a chunk. Eager decoding skips the rotation when no row's token does (one host
    # read of a flag costs less than the ops); a compiled step always runs it, masked by row.
    rotate = torch.compiler.is_compiling() or bool(at_boundary.any())
    return decode_sets_step_(store, prev, cur, token, at_boundary, valid, rotate=rotate)


# The eidetic selection and the writes of the decoding state, in Triton (BMOJO_STATE_KERNELS=1, on CUDA): the
# parallel form's best-k per row (innovation/select.py, twice per layer, ~50 small ops each), the prefill's
# ring and eidetic-set fills (~20 small ops each) and an eager decode step's two ring pushes (~12 each;
# state_fill/rows.py), one launch apiece. The default since the H200 timing of 2026-12-05 (an eager 2k prefill
# 81.8 -> 53.8 ms alone, 51.0 ms with the pointwise kernels; eager generate() at 2k x 1 16.7 -> 34.9 tok/s
# with both); BMOJO_STATE_KERNELS=0 turns them off.
STATE_KERNELS = os.environ.get("BMOJO_STATE_KERNELS", "1") == "1"

_take_best_reference = fused_on_prefill(take_best)
_fill_ring_reference = fused_on_prefill(fill_ring_reference_)


def state_kernels_used(tensor, use_kernels="auto"):
    """Whether `select_best`, `fill_ring_`, `fill_set_`, `gather_tokens_` and `push_rings_` take the Triton
    kernels for inputs like `tensor`."""
    return STATE_KERNELS and use_triton(tensor, use_kernels)


def state_writes_use_kernels(tensor, use_kernels="auto"):
    """Whether the in-place writes of the decoding state (`fill_ring_`, `fill_set_`, `push_rings_`) take the
    Triton kernels: with the state kernels on, in eager calls only. Compiled code traces the references,
    which Inductor writes in kernels it launches itself; there each op would be an opaque call (~120 us of
    host time per fill, 60 fills in a compiled 12-layer prefill, H100 2026-12-05e)."""
    return state_kernels_used(tensor, use_kernels) and not torch.compiler.is_compiling()


def select_best(scores, pos, k, use_kernels="auto"):
    """innovation/naive.py `take_best`: (scores, pos, index, occupied) of the k best entries of each row. The
    Triton kernel returns the picked scores and positions only (index and occupied None): the prefill's
    selection (`chunk_candidates`, `eidetic_stores`) reads nothing else."""
    if state_kernels_used(scores, use_kernels):
        # imported here, not at the top: it imports triton, which CPU-only installs may lack
        from .innovation.select import take_best_supported, take_best_triton
        if take_best_supported(scores, pos, k):
            return (*take_best_triton(scores, pos, k), None, None)
    return _take_best_reference(scores, pos, k, use_kernels=use_kernels)


def fill_ring_(ring_k, ring_v, ring_pos, k, v, lengths, use_kernels="auto"):
    """A ring's keys, values and positions after a parallel pass over k, v [B, T, Hkv, D], in place
    (state_fill/naive.py `fill_ring_reference_`; the kernel as `state_writes_use_kernels` says)."""
    if state_writes_use_kernels(k, use_kernels):
        from .state_fill.rows import fill_ring_triton_
        return fill_ring_triton_(ring_k, ring_v, ring_pos, k, v, lengths)
    return _fill_ring_reference(ring_k, ring_v, ring_pos, k, v, lengths, use_kernels=use_kernels)


def fill_set_(token_set, chunk_s, chunk_p, chunk_offset, lengths, window, keys, values):
    """One eidetic set (s, p, k, v) from the per-chunk selection, in place, by the Triton kernel
    (state_fill/rows.py `fill_set_triton_`; callers check `state_writes_use_kernels` first: the reference is
    `modeling_bmojo.innovation.sets_after_prefill`, which builds all three sets at once)."""
    from .state_fill.rows import fill_set_triton_
    fill_set_triton_(token_set, chunk_s, chunk_p, chunk_offset, lengths, window, keys, values)


def push_rings_(window, band, k, v, kf, vf, pos, valid):
    """One token per row into the window ring and the fading band's ring, in place, by the Triton kernel
    (state_fill/rows.py `push_rings_triton_`; callers check `state_writes_use_kernels` first: a compiled
    step fuses the reference's writes itself)."""
    from .state_fill.rows import push_rings_triton_
    push_rings_triton_(window, band, k, v, kf, vf, pos, valid)


def gather_tokens_(keys, values, pos):
    """keys and values at positions pos [B, ...] (EMPTY: zeros) by one Triton launch (state_fill/rows.py
    `gather_tokens_triton`; the reference is `modeling_bmojo.innovation.gather_tokens`). Callers check
    `state_kernels_used`, and that nothing is compiling when a gradient is needed: the backward, one more
    launch, is an autograd Function."""
    from .state_fill.rows import gather_tokens_autograd, gather_tokens_triton
    if needs_grad(keys, values):
        return gather_tokens_autograd(keys, values, pos)
    return gather_tokens_triton(keys, values, pos)
