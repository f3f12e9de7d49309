"""Dynamo's per-call host cost against the number and the holder of tensor inputs (CPU; eighteenth session,
2026-12-04). A compiled function with fullgraph=True and a backend that computes nothing: a call's time is
guard evaluation and argument handling. Run: python host_cost_guards_cpu_2026-12-04.py"""
import time, torch, statistics
torch.set_num_threads(1)
N = 240
class Obj: pass
def make_obj():
    o = Obj()
    for i in range(N): setattr(o, f"t{i}", torch.zeros(4))
    return o
def make_mod():
    m = torch.nn.Module()
    for i in range(N): m.register_buffer(f"t{i}", torch.zeros(4))
    return m
def make_dict():
    return {f"t{i}": torch.zeros(4) for i in range(N)}
def make_list():
    return [torch.zeros(4) for i in range(N)]
def f_attr(o):
    for i in range(N): getattr(o, f"t{i}").add_(1)
def f_dict(d):
    for i in range(N): d[f"t{i}"].add_(1)
def f_list(l):
    for t in l: t.add_(1)
def backend(gm, ex):
    return lambda *a: None  # never computes: a call's time is dynamo's own
class Holder:  # the cache object holds per-layer states
    pass
def per_call_us(mk, fn, **options):
    """Median of 5 means of 1,000 calls of fn compiled on mk()'s tensors, in us."""
    x = mk()
    torch._dynamo.reset()
    c = torch.compile(fn, backend=backend, fullgraph=True, options=options or None)
    c(x)
    ts = []
    for _ in range(5):
        s = time.perf_counter()
        for _ in range(1000): c(x)
        ts.append((time.perf_counter() - s) / 1000 * 1e6)
    return statistics.median(ts)
for name, mk, fn in [("object attrs", make_obj, f_attr), ("nn.Module buffers", make_mod, f_attr),
                     ("dict", make_dict, f_dict), ("list", make_list, f_list)]:
    print(f"{name:20s} {per_call_us(mk, fn):7.1f} us per call ({N} tensors)")
print("guards dropped:")
for name, mk, fn in [("object attrs", make_obj, f_attr), ("list", make_list, f_list)]:
    us = per_call_us(mk, fn, guard_filter_fn=lambda entries: [False for _ in entries])
    print(f"{name:20s} {us:7.1f} us per call ({N} tensors)")
