"""Host time per call of an 11-argument mutating op (4 tensors written, empty body), registered as a
`torch.library.custom_op` against `Library.define` / `impl` (as kernels/custom_ops.py `_mutating_op` does,
with and without its Python autograd kernel), called directly and from a compiled caller (twenty-second
session, 2026-12-05, CPU sandbox, torch 2.13).

    python benchmarks/results/mutating_op_cost_cpu_2026-12-05d.py
"""
import time

import torch
from torch import Tensor


def body(a: Tensor, b: Tensor, c: Tensor, d: Tensor, e: Tensor, f: Tensor, g: Tensor, h: Tensor,
         i: Tensor, w: int, o: int) -> None:
    pass


MUTATES = ("a", "b", "c", "d")
custom = torch.library.custom_op("probe_custom::fill", body, mutates_args=MUTATES)
schema = torch.library.infer_schema(body, mutates_args=MUTATES)
ops = {"custom_op": custom._opoverload}
for namespace, autograd_kernel in (("probe_plain", False), ("probe_autograd", True)):
    lib = torch.library.Library(namespace, "FRAGMENT")
    lib.define("fill" + schema)
    op = getattr(torch.ops, namespace).fill.default
    lib.impl("fill", body, "CPU")
    if autograd_kernel:
        def below_autograd(keyset, *args, _op=op):
            with torch._C._AutoDispatchBelowAutograd():
                return _op.redispatch(keyset & torch._C._after_autograd_keyset, *args)
        lib.impl("fill", below_autograd, "Autograd", with_keyset=True)
    globals()["_keep_" + namespace] = lib  # a Library unregisters its ops when collected
    ops["Library" + (" + autograd kernel" if autograd_kernel else "")] = op

xs = [torch.zeros(4) for _ in range(9)]
for name, op in ops.items():
    for _ in range(100):
        op(*xs, 3, 4)
    start = time.perf_counter()
    for _ in range(2000):
        op(*xs, 3, 4)
    print(f"{name:30s} direct   {(time.perf_counter() - start) / 2000 * 1e6:6.1f} us/call")

    def caller(ts, _op=op):
        for _ in range(10):
            _op(*ts, 3, 4)
        return ts[0] + 1

    compiled = torch.compile(caller)
    for _ in range(5):
        compiled(xs)
    start = time.perf_counter()
    for _ in range(300):
        compiled(xs)
    print(f"{name:30s} compiled {(time.perf_counter() - start) / 3000 * 1e6:6.1f} us/call (graph call / 10)")
