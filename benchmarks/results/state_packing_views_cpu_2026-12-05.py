"""Inductor (CPU) on a decode-style ring write into k, v held as views of one packed buffer against k, v as
their own tensors (nineteenth session, 2026-12-05): does the compiled step copy the whole buffer?
Run: python state_packing_views_cpu_2026-12-05.py (TORCH_LOGS=output_code shows the loops)"""
import time, torch, statistics
torch.set_num_threads(1)
B, S, H, D = 4, 4096, 8, 64
NUM = B * S * H * D
def views(buf):
    flat = buf.view(-1)
    k = flat[:NUM].view(B, S, H, D)
    v = flat[NUM:2 * NUM].view(B, S, H, D)
    return k, v
def write_rows(buffer, slot, new, valid):
    rows = torch.arange(buffer.shape[0], device=buffer.device)
    keep = valid.reshape(-1, *([1] * (new.dim() - 1)))
    buffer[rows, slot] = torch.where(keep, new.to(buffer.dtype), buffer[rows, slot])
def step(buf, pos, kn, vn, valid, f_last, f):
    k, v = views(buf)
    slot = pos % S
    write_rows(k, slot, kn, valid)
    write_rows(v, slot, vn, valid)
    f_last.copy_(torch.where(valid[:, None], f, f_last))
    return (k[:, :8].float().sum() + v[:, :8].float().sum())
def sep_step(k, v, pos, kn, vn, valid, f_last, f):
    slot = pos % S
    write_rows(k, slot, kn, valid)
    write_rows(v, slot, vn, valid)
    f_last.copy_(torch.where(valid[:, None], f, f_last))
    return (k[:, :8].float().sum() + v[:, :8].float().sum())
buf = torch.zeros(B, 2 * S * H * D, dtype=torch.bfloat16)
k2, v2 = torch.zeros(B, S, H, D, dtype=torch.bfloat16), torch.zeros(B, S, H, D, dtype=torch.bfloat16)
f_last = torch.zeros(B, 32)
pos = torch.tensor([5, 6, 7, 8]); kn = torch.randn(B, H, D); vn = torch.randn(B, H, D)
valid = torch.tensor([True, False, True, True]); f = torch.randn(B, 32)
ref = buf.clone()
step(ref, pos, kn, vn, valid, f_last.clone(), f)
c = torch.compile(step, fullgraph=True)
c(buf, pos, kn, vn, valid, f_last, f)
assert torch.equal(buf, ref)
cs = torch.compile(sep_step, fullgraph=True)
for name, fn, args in [("views", c, (buf, pos, kn, vn, valid, f_last, f)),
                       ("separate", cs, (k2, v2, pos, kn, vn, valid, f_last, f))]:
    fn(*args)
    ts = []
    for _ in range(5):
        s = time.perf_counter()
        for _ in range(200): fn(*args)
        ts.append((time.perf_counter() - s) / 200 * 1e6)
    print(name, f"{statistics.median(ts):.1f} us per call; buffer {buf.numel()*2/1e6:.0f} MB")
