"""Forward and forward+backward time of the Mamba-2 SSD scan: the Triton kernel against baselines.

    python benchmarks/bench_ssd.py [--out results.json] [--lengths 2048] [--batch 8 --heads 24] [--sweep]

Shape: B=8, H=24 heads (--batch / --heads change them: a prefill is B=1 with the matched model's 12), P=64
head dim, N=128 state, G=1 group, bf16 x/B/C, float32 dt/A/D (as the model passes them). Implementations,
all from the same run on the same inputs:
  - triton      kernels/ssd/chunk.py (its own chunk length 64; D and no initial state)
  - reference   kernels/ssd/naive.py ssd_chunked, the PyTorch path the model runs without kernels,
                at chunk 128 (the model's default) and 64
  - fla         fla-core's chunk_simple_gla, the same recurrence with q = C, k = B, v = x * dt, g = dt * A
                per head (B, C expanded to all heads; no D). "fla" times it from the SSD inputs (the
                expand / multiply included), "fla_kernel" on prepared q, k, v, g. fla's backward refuses
                Triton < 3.7.1 on Hopper (its issue #640): the error is recorded instead of a time.
Times are medians of CUDA-event timings after warm-up, in ms. Writes JSON (date, device, numbers).
"""

import argparse
import datetime
import json
import statistics
import traceback

import torch

from bmojo.kernels.ssd.chunk import ssd_chunk_triton
from bmojo.kernels.ssd.naive import ssd_chunked

B, H, P, N, G = 8, 24, 64, 128, 1


def time_ms(fn, warmup=3, reps=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), max(times) - min(times)


def make_inputs(T):
    x = torch.randn(B, T, H, P, device="cuda", dtype=torch.bfloat16)
    dt = torch.nn.functional.softplus(torch.randn(B, T, H, device="cuda") - 1.0)
    A = -torch.exp(torch.rand(H, device="cuda") * 2.0 - 1.0)
    b = (torch.randn(B, T, G, N, device="cuda") * N ** -0.5).to(torch.bfloat16)
    c = (torch.randn(B, T, G, N, device="cuda") * N ** -0.5).to(torch.bfloat16)
    D = torch.randn(H, device="cuda")
    return [t.requires_grad_() for t in (x, dt, A, b, c, D)]


def timed(fn, inputs, out_index=0):
    """{fwd_ms, fwd_spread, fwdbwd_ms, fwdbwd_spread} of fn(*inputs)[out_index]."""
    dy = None

    def fwd():
        with torch.no_grad():
            fn(*inputs)

    def both():
        nonlocal dy
        for t in inputs:
            t.grad = None
        y = fn(*inputs)[out_index]
        dy = torch.randn_like(y) if dy is None else dy
        y.backward(dy)

    row = dict(zip(("fwd_ms", "fwd_spread"), time_ms(fwd)))
    try:
        row.update(zip(("fwdbwd_ms", "fwdbwd_spread"), time_ms(both)))
    except Exception as exc:  # record, don't stop the run
        row["fwdbwd_error"] = repr(exc)[:600]
        traceback.print_exc()
    return row


def rel(a, ref):
    return ((a.double() - ref.double()).norm() / ref.double().norm()).item()


def run_length(T, results):
    row = {}
    x, dt, A, b, c, D = make_inputs(T)

    def kernel(x, dt, A, b, c, D):
        return ssd_chunk_triton(x, dt, A, b, c, 64, D=D)

    row["triton"] = timed(kernel, [x, dt, A, b, c, D])
    for cs in (128, 64):
        try:
            row[f"reference_c{cs}"] = timed(lambda *a: ssd_chunked(*a[:5], cs, D=a[5]), [x, dt, A, b, c, D])
        except torch.cuda.OutOfMemoryError as exc:
            row[f"reference_c{cs}_error"] = repr(exc)[:300]
        torch.cuda.empty_cache()

    # the same function without D, to compare outputs with fla (which has no skip term)
    with torch.no_grad():
        y_ref = ssd_chunked(x, dt, A, b, c, 64)[0]
        row["triton"]["rel_err_vs_reference_fp32"] = rel(ssd_chunk_triton(x, dt, A, b, c)[0], y_ref)
    try:
        from fla.ops.simple_gla import chunk_simple_gla

        def fla_from_ssd(x, dt, A, b, c):
            q = c.expand(B, T, H, N).contiguous()  # (B, T, H, N), G = 1
            k = b.expand(B, T, H, N).contiguous()
            v = (x * dt[..., None]).to(x.dtype)  # (B, T, H, P)
            g = dt * A  # (B, T, H) log decay
            return chunk_simple_gla(q, k, v, g=g, scale=1.0)

        row["fla"] = timed(fla_from_ssd, [x, dt, A, b, c])
        with torch.no_grad():
            q = c.detach().expand(B, T, H, N).contiguous().requires_grad_()
            k = b.detach().expand(B, T, H, N).contiguous().requires_grad_()
            v = (x * dt[..., None]).to(x.dtype).detach().requires_grad_()
            g = (dt * A).detach().requires_grad_()
            row["fla"]["rel_err_vs_reference_fp32"] = rel(fla_from_ssd(x, dt, A, b, c)[0], y_ref)
        row["fla_kernel"] = timed(lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g, scale=1.0), [q, k, v, g])
    except Exception as exc:
        row["fla_error"] = repr(exc)[:600]
        traceback.print_exc()
    results[str(T)] = row


def sweep_configs(T, states_only=False):
    """Kernel chunk length and tiles: time of each stage (states alone, forward, backward) per config;
    `states_only`: the default and the variants of the state walk (tiles, and Q = 128 with them)."""
    from bmojo.kernels.ssd import chunk as ssd_chunk
    x, dt, A, b, c, D = (t.detach() for t in make_inputs(T))
    dy = torch.randn_like(x)
    base = ssd_chunk._default_config(P, N)
    # small tiles: more programs for the sequential walk over chunks when B * H is far below the SM count
    states = [(32, 64, 4), (64, 32, 4), (32, 32, 4), (64, 128, 8), (64, 64, 8), (16, 32, 4), (16, 64, 4),
              (32, 16, 4), (16, 16, 2)]
    variants = [{}] + [{"state": v} for v in states] \
        + [{"fwd": v} for v in [(32, 4), (64, 8), (16, 4)]] \
        + [{"bwd": v} for v in [(64, 8), (32, 4), (16, 4), (16, 8), (64, 4)]] \
        + [{"Q": 128, "bwd": (16, 8), "fwd": (32, 8)}, {"Q": 32}, {"Q": 32, "bwd": (64, 4)},
           {"Q": 128, "bwd": (16, 8), "fwd": (32, 8), "state": (16, 32, 4)},
           {"Q": 128, "bwd": (16, 8), "fwd": (32, 8), "state": (32, 32, 4)},
           {"Q": 128, "bwd": (16, 8), "fwd": (16, 4), "state": (16, 64, 4)}]
    if states_only:
        variants = [v for v in variants if not v or "state" in v]
    out = {}
    for var in variants:
        cfg = {**base, **var}
        flat = ssd_chunk._flat_config(cfg)  # the ops take the flat list
        key = json.dumps(var)
        try:
            row = {"states_fwd": time_ms(lambda: ssd_chunk._states_fwd(x, dt, A, b, None, cfg))[0],
                   "fwd": time_ms(lambda: ssd_chunk._ssd_fwd(x, dt, A, b, c, D, None, flat))[0],
                   "bwd": time_ms(lambda: ssd_chunk._ssd_bwd(dy, None, x, dt, A, b, c, D, None, flat))[0]}
            out[key] = row
            print(f"{key:50s} " + " ".join(f"{k}={v:.3f}" for k, v in row.items()), flush=True)
        except Exception as exc:
            out[key] = repr(exc)[:300]
            print(key, out[key], flush=True)
    return out


def main():
    global B, H  # the shape make_inputs builds
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench_ssd.json")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048])
    parser.add_argument("--sweep", nargs="?", const="all", choices=["all", "states"],
                        help="time kernel configs at the first length (states: the state walk's only)")
    parser.add_argument("--batch", type=int, default=B)
    parser.add_argument("--heads", type=int, default=H)
    args = parser.parse_args()
    B, H = args.batch, args.heads
    torch.manual_seed(0)
    import triton
    try:
        import fla
        fla_version = getattr(fla, "__version__", "?")
    except Exception as exc:
        fla_version = repr(exc)[:200]
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__, "fla": fla_version,
               "shape": dict(B=B, H=H, P=P, N=N, G=G, dtype="bfloat16 x/B/C, float32 dt/A/D"),
               "timing": "median of 20 CUDA-event timings after 3 warm-ups, ms; spread = max - min"}
    for T in args.lengths:
        run_length(T, results)
        print(json.dumps(results[str(T)], indent=1), flush=True)
    if args.sweep:
        results["config_sweep_ms"] = sweep_configs(args.lengths[0], args.sweep == "states")
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)
    names = ["triton", "reference_c128", "reference_c64", "fla", "fla_kernel"]
    print("\nms: fwd | fwd+bwd")
    for T in args.lengths:
        r = results[str(T)]
        for name in names:
            if name in r:
                fb = r[name].get("fwdbwd_ms")
                print(f"L={T:5d} {name:16s} {r[name]['fwd_ms']:8.3f} | " + (f"{fb:8.3f}" if fb else "error"))
        print("ratios (baseline / triton; >1: the Triton kernel is faster)")
        for name in names[1:]:
            if name in r:
                fwd = r[name]["fwd_ms"] / r["triton"]["fwd_ms"]
                fb = r[name].get("fwdbwd_ms")
                ok = fb and "fwdbwd_ms" in r["triton"]
                both = f"{fb / r['triton']['fwdbwd_ms']:6.2f}x" if ok else "n/a"
                print(f"L={T:5d} {name:16s} fwd {fwd:6.2f}x   fwd+bwd {both}")


if __name__ == "__main__":
    main()
