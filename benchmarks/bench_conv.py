"""The Mamba-2 mixer's causal depthwise conv1d + SiLU, forward and backward: ours (PyTorch's conv1d, eager
and under torch.compile; our Triton kernel, kernels/conv/causal.py) against fla-core's Triton
`causal_conv1d` (issue 11: use a library kernel where it is measured faster). Same inputs, one process;
the relative error of each against ours in float32 is printed beside its time.

Usage (GPU; fla-core optional, rows without it are skipped):
    python benchmarks/bench_conv.py [--shapes 8x2048,2x8192] [--channels 1024] [--out bench_conv.json]
        [--fwd-shapes 1x2048,1x32768]

Forward + backward rows give the wall time of a call and the device time of its kernels (profiler).
--fwd-shapes: also the forward alone without autograd, as a prefill runs it, on the mixer's layout (the
channels a slice of the wider in_proj output, so not contiguous): device time per call from CUDA events.
"""

import argparse
import json
import time

import torch


def ours(x, weight, bias):
    """x [B, T, C], weight [C, 1, W] (nn.Conv1d's) -> silu(causal depthwise conv) [B, T, C]: the mixer's eager
    path, kernels/conv/naive.py."""
    from bmojo.kernels.conv.naive import causal_conv1d_silu_reference
    return causal_conv1d_silu_reference(x, weight[:, 0], bias)


def triton_conv(x, weight, bias):
    from bmojo.kernels.conv.causal import causal_conv1d_silu_triton
    return causal_conv1d_silu_triton(x, weight[:, 0], bias)


def fla_conv(x, weight, bias):
    from fla.modules.causal_conv1d import causal_conv1d
    return causal_conv1d(x, weight[:, 0], bias, activation="silu")[0]


def time_ms(fn, x, w, b, grad, reps=20):
    def once():
        y = fn(x, w, b)
        y.backward(grad)

    for _ in range(3):
        once()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        once()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / reps


def kernel_ms(fn, x, w, b, grad, reps=10):
    """Device time of one forward + backward, ms: the kernels' own durations (torch.profiler), summed over
    `reps` calls after 3 warm-ups, and their count per call. Wall time alone cannot tell kernel time from
    launch and autograd overhead at these sizes (tens of microseconds of memory traffic)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    def once():
        fn(x, w, b).backward(grad)

    for _ in range(3):
        once()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            once()
        torch.cuda.synchronize()
    kernels = {}
    for event in prof.events():
        if event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False):
            kernels[event.name] = kernels.get(event.name, 0.0) + event.device_time_total / 1000 / reps
    count = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA
                and not getattr(e, "is_user_annotation", False)) / reps
    top = {name[:60]: round(ms, 4) for name, ms in sorted(kernels.items(), key=lambda kv: -kv[1])[:6]}
    return sum(kernels.values()), count, top


def fwd_ms(fn, x, w, b, reps=20):
    """Device time of one no-grad forward, ms: CUDA events around `reps` calls after 3 warm-up calls."""
    with torch.no_grad():
        for _ in range(3):
            fn(x, w, b)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn(x, w, b)
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def rel_err(fn, x, w, b, grad):
    """Output and input-gradient errors in float32 against ours."""
    def run(f):
        xs, ws, bs = (t.detach().float().requires_grad_() for t in (x, w, b))
        y = f(xs, ws, bs)
        y.backward(grad.float())
        return [y, xs.grad, ws.grad, bs.grad]

    got, ref = run(fn), run(ours)
    return max(((g - r).norm() / r.norm()).item() for g, r in zip(got, ref))


def failure(shape, name, exc):
    """A row that raised: printed, and its JSON entry."""
    print(f"{shape} {name}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
    return dict(shape=shape, row=name, error=f"{type(exc).__name__}: {exc}"[:500])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="8x2048,2x8192")
    parser.add_argument("--channels", type=int, default=1024)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--out", default="bench_conv.json")
    parser.add_argument("--fwd-shapes", default="", help="e.g. 1x2048,1x32768: no-grad forward timings")
    args = parser.parse_args()
    rows = {"ours (eager)": ours, "ours (torch.compile)": torch.compile(ours),
            "ours (Triton, kernels/conv)": triton_conv}
    try:
        import fla  # noqa: F401
        rows["fla-core causal_conv1d (triton)"] = fla_conv
    except ImportError as exc:
        print(f"fla-core not importable ({exc}): its row is skipped")
    results = []
    for shape in filter(None, args.shapes.split(",")):
        batch, seqlen = (int(n) for n in shape.split("x"))
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(batch, seqlen, args.channels, device="cuda", generator=gen,
                        dtype=torch.bfloat16).requires_grad_()
        w = (torch.randn(args.channels, 1, args.width, device="cuda", generator=gen) * 0.3).requires_grad_()
        b = torch.randn(args.channels, device="cuda", generator=gen).requires_grad_()
        grad = torch.randn(batch, seqlen, args.channels, device="cuda", generator=gen, dtype=torch.bfloat16)
        w16 = w.detach().to(torch.bfloat16).requires_grad_()
        b16 = b.detach().to(torch.bfloat16).requires_grad_()
        for name, fn in rows.items():
            try:
                ms = time_ms(fn, x, w16, b16, grad)
                device, launches, top = kernel_ms(fn, x, w16, b16, grad)
                err = rel_err(fn, x, w, b, grad)
            except Exception as exc:  # a library kernel that fails here is reported, not fatal
                results.append(failure(shape, name, exc))
                continue
            print(f"{shape} C={args.channels} {name:>34}: fwd+bwd {ms:7.3f} ms wall, {device:7.3f} ms device "
                  f"in {launches:.0f} kernels, rel err (fp32) {err:.2e}\n    {top}")
            results.append(dict(shape=shape, channels=args.channels, row=name, fwd_bwd_ms=ms,
                                fwd_bwd_device_ms=device, kernels_per_call=launches, top_kernels_ms=top,
                                rel_err_fp32=err))
    for shape in filter(None, args.fwd_shapes.split(",")):
        batch, seqlen = (int(n) for n in shape.split("x"))
        gen = torch.Generator(device="cuda").manual_seed(0)
        wide = torch.randn(batch, seqlen, 2 * args.channels, device="cuda", generator=gen,
                           dtype=torch.bfloat16)
        x = wide[..., args.channels // 2:args.channels // 2 + args.channels]  # strided, as in the mixer
        w = (torch.randn(args.channels, 1, args.width, device="cuda", generator=gen) * 0.3).to(torch.bfloat16)
        b = torch.randn(args.channels, device="cuda", generator=gen).to(torch.bfloat16)
        want = ours(x, w, b).float()
        for name, fn in rows.items():
            try:
                ms = fwd_ms(fn, x, w, b)
                with torch.no_grad():
                    err = ((fn(x, w, b).float() - want).norm() / want.norm()).item()
            except Exception as exc:
                results.append(failure(shape, name, exc))
                continue
            print(f"{shape} C={args.channels} {name:>34}: no-grad fwd {ms:7.4f} ms, "
                  f"rel err vs eager {err:.2e}")
            results.append(dict(shape=shape, channels=args.channels, row=name, nograd_fwd_ms=ms,
                                rel_err_vs_eager_bf16=err, layout="strided slice"))
    meta = dict(date=time.strftime("%Y-%m-%d"), device=torch.cuda.get_device_name(), torch=torch.__version__)
    with open(args.out, "w") as f:
        json.dump(dict(meta, results=results), f, indent=1)


if __name__ == "__main__":
    main()
