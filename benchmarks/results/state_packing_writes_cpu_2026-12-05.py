"""Which in-place writes into a packed buffer Inductor (CPU) keeps in place: index_put_ on the 1-D base with
flat indices, copy_ into a slice, index_put_ on a reshaped view (nineteenth session, 2026-12-05).
Run: python state_packing_writes_cpu_2026-12-05.py"""
import time, torch, statistics
torch.set_num_threads(1)
B, S, H, D = 4, 4096, 8, 64
NUM = B * S * H * D
def v1(buf, pos, kn, vn, valid, f):
    # base 1-D; writes are index_put_ on the base with flat indices
    slot = pos % S
    rows = torch.arange(B)
    inner = torch.arange(H * D)
    idx = ((rows * S + slot) * (H * D))[:, None] + inner  # (B, HD)
    keep = valid[:, None]
    old_k = buf[idx]
    buf.index_put_((idx,), torch.where(keep, kn.reshape(B, -1).to(buf.dtype), old_k))
    idx_v = idx + NUM
    buf.index_put_((idx_v,), torch.where(keep, vn.reshape(B, -1).to(buf.dtype), buf[idx_v]))
    k = buf[:NUM].view(B, S, H, D)
    return k[:, :8].float().sum()
def v2(buf, f):
    # a slice of the base overwritten with copy_
    tail = buf[2 * NUM:2 * NUM + B * 32].view(B, 32)
    tail.copy_(f.to(buf.dtype))
    return tail.float().sum()
def v3(buf, pos, kn, valid):
    # 2-D view, index_put_ in place on the view (no where/read)
    k = buf[:NUM].view(B, S, H, D)
    slot = pos % S
    rows = torch.arange(B)
    k.index_put_((rows, slot), kn.to(buf.dtype))
    return k[:, :8].float().sum()
buf = torch.zeros(2 * NUM + B * 32, dtype=torch.bfloat16)
pos = torch.tensor([5, 6, 7, 8]); kn = torch.randn(B, H, D); vn = torch.randn(B, H, D)
valid = torch.tensor([True, False, True, True]); f = torch.randn(B, 32)
for name, fn, args in [("v1 base index_put_", v1, (buf, pos, kn, vn, valid, f)),
                       ("v2 slice copy_", v2, (buf, f)),
                       ("v3 view index_put_", v3, (buf, pos, kn, valid))]:
    ref = buf.clone()
    fn(ref, *args[1:])
    c = torch.compile(fn, fullgraph=True)
    c(*args)
    assert torch.equal(buf, ref), name
    ts = []
    for _ in range(5):
        s = time.perf_counter()
        for _ in range(100): c(*args)
        ts.append((time.perf_counter() - s) / 100 * 1e6)
    print(name, f"{statistics.median(ts):.1f} us per call; buffer {buf.numel()*2/1e6:.0f} MB")
