"""Dynamo's per-call cost for 12 x 20 state tensors held separately, as views of one buffer per layer whose
layout is a per-instance dict, and as views whose layout is a class constant (CPU, nineteenth session,
2026-12-05; a backend that computes nothing). Run: python state_packing_guards_cpu_2026-12-05.py"""
import time, torch, statistics
torch.set_num_threads(1)
L, N = 12, 20   # 12 layers x 20 tensors
class Obj: pass
def make_sep():
    layers = []
    for l in range(L):
        o = Obj()
        for i in range(N): setattr(o, f"t{i}", torch.zeros(2, 4))
        layers.append(o)
    return layers
def f_sep(layers):
    for o in layers:
        for i in range(N): getattr(o, f"t{i}").add_(1)
class Arena:
    def __init__(self):
        self.buf = torch.zeros(2, 8 * N)
        self.spec = {f"t{i}": (8 * i, (2, 4)) for i in range(N)}
    def get(self, name):
        off, shape = self.spec[name]
        n = shape[0] * shape[1]
        return self.buf.view(-1)[off:off + n].view(shape)
def make_arena():
    return [Arena() for _ in range(L)]
def f_arena(layers):
    for o in layers:
        for i in range(N): o.get(f"t{i}").add_(1)
class Arena2:  # spec from a class-level tuple
    SPEC = tuple((8 * i, (2, 4)) for i in range(N))
    def __init__(self):
        self.buf = torch.zeros(2, 8 * N)
def f_arena2(layers):
    for o in layers:
        flat = o.buf.view(-1)
        for off, shape in Arena2.SPEC:
            flat[off:off + 8].view(shape).add_(1)
def make_arena2():
    return [Arena2() for _ in range(L)]
def backend(gm, ex):
    print("  inputs", len(ex))
    return lambda *a: None
def per_call_us(mk, fn):
    x = mk()
    torch._dynamo.reset()
    c = torch.compile(fn, backend=backend, fullgraph=True)
    c(x)
    ts = []
    for _ in range(5):
        s = time.perf_counter()
        for _ in range(1000): c(x)
        ts.append((time.perf_counter() - s) / 1000 * 1e6)
    return statistics.median(ts)
for name, mk, fn in [("separate", make_sep, f_sep), ("arena dict spec", make_arena, f_arena),
                     ("arena class spec", make_arena2, f_arena2)]:
    print(f"{name:20s} {per_call_us(mk, fn):7.1f} us per call")
