"""Host time per call of the eager pointwise pieces on a CPU (nineteenth session, 2026-12-05; no device lent):
the eager reference (one aten call per op), its torch.compile'd copy (what `fused_on_cuda` runs on CUDA
without BMOJO_POINTWISE_KERNELS: guards, runtime wrappers, one Inductor kernel), and the dispatcher's kernel
path of kernels/pointwise/rows.py (its check, then allocation, reshapes, autograd.Function) with the Triton
launch itself stubbed out: Triton's own launcher needs a GPU and is not measured. Tiny tensors, so the work
itself is negligible. Run: python host_cost_pointwise_cpu_2026-12-05.py"""
import statistics
import time

import torch

from bmojo.kernels.pointwise import naive, rows

torch.set_num_threads(1)


class Stub:  # kernel[grid](...) that launches nothing
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


for name in ("_norm_fwd_kernel", "_norm_bwd_kernel", "_swiglu_fwd_kernel", "_swiglu_bwd_kernel",
             "_rotate_kernel"):
    setattr(rows, name, Stub())


def checked(kind, unchecked):
    """What kernels/dispatch.py runs with the switch on: the check, then the kernel path."""
    def run(*args):
        assert rows.unsupported(kind, *args[:-1] if kind == "norm" else args) is None
        return unchecked(*args)
    return run


def per_call_us(fn, args, grad, n=2000):
    def call():
        out = fn(*args)
        if grad:
            out.backward(torch.ones_like(out))
    call()
    call()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            call()
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


x, w = torch.randn(1, 8, 64), torch.ones(64)
q, cos, sin = torch.randn(1, 8, 4, 16), torch.randn(1, 8, 1, 8), torch.randn(1, 8, 1, 8)
cases = {
    "rms_norm": (naive.rms_norm_reference, checked("norm", rows.rms_norm_unchecked),
                 lambda g: (x.clone().requires_grad_(g), w, 1e-5)),
    "swiglu": (naive.swiglu_reference, checked("swiglu", rows.swiglu_unchecked),
               lambda g: (x.clone().requires_grad_(g), x)),
    "rotate": (naive.rotate_reference, checked("rotate", rows.rotate_unchecked),
               lambda g: (q.clone().requires_grad_(g), cos, sin)),
}
header = f"{'eager ref':>10s} {'compiled':>10s} {'kernel path, launch stubbed':>28s}"
print(f"{'':10s} {'':9s} {header}  (us per call)")
for grad in (False, True):
    for name, (reference, kernel, make) in cases.items():
        compiled = torch.compile(reference, dynamic=True)
        with torch.set_grad_enabled(grad):
            args = make(grad)
            row = [per_call_us(f, args, grad) for f in (reference, compiled, kernel)]
        what = "fwd+bwd" if grad else "no grad"
        print(f"{name:10s} {what:9s} {row[0]:10.1f} {row[1]:10.1f} {row[2]:28.1f}")
