"""Where a training step spends its GPU time (torch.profiler, one step after warm-up), eager or compiled.

Usage (GPU): python benchmarks/profile_train.py [--model bmojo-matched --batch 8 --length 2048] [--compile]
`--prefill` profiles a prefill instead (no_grad, use_cache=True, logits_to_keep=1, as bench_model.py times
it) and adds its wall time and the host's launches and synchronisations: an eager prefill that waits on
its host shows wall time far above device time.
`--compile` profiles `torch.compile(model, dynamic=False)` as benchmarks/bench_model.py measures it (the
warm-up steps compile). `--dry-run`: tiny widths on CPU, to check the script (no device kernels there).
"""

import argparse
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from bench_model import Setup, build


def kind_of(kernel):
    name = kernel.lower()
    if any(s in name for s in ("gemm", "cutlass", "nvjet", "sm90_xmma")):
        return "matmul"
    if name.startswith(("triton_poi", "triton_red", "triton_per", "triton_tem")):
        return "inductor-generated Triton (torch.compile)"
    if name.startswith("_"):
        return "bmojo Triton: " + kernel[:40]
    return "other (PyTorch eager kernels, copies)"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--model", default="bmojo", help="a name bench_model.build knows")
    parser.add_argument("--compile", action="store_true", help="profile torch.compile(model)")
    parser.add_argument("--dry-run", action="store_true", help="tiny widths on CPU")
    parser.add_argument("--prefill", action="store_true", help="profile a prefill, not a training step")
    args = parser.parse_args()
    setup = Setup(args.dry_run)
    model = build(args.model, setup).to(setup.device, setup.dtype).train(not args.prefill)
    if args.compile:
        model = torch.compile(model, dynamic=False)
    ids = torch.randint(0, setup.width["vocab_size"], (args.batch, args.length), device=setup.device)
    cuda = setup.device == "cuda"
    step = prefill_step(model, ids) if args.prefill else train_step(model, ids, cuda)

    for _ in range(3):  # the first compiles (compiled model, fused_on_cuda helpers)
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        step()
    if cuda:
        torch.cuda.synchronize()
    wall_ms = 1000 * (time.perf_counter() - start) / 5
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        with record_function("step"):
            step()
        if cuda:
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))
    # Device time of the kernels themselves (device events, not the CPU ops or annotations that launched
    # them, which would count each kernel twice; a compiled graph's kernels have no aten op above them).
    kernels = {}
    for event in events(prof, DeviceType.CUDA):
        kernels[event.name] = kernels.get(event.name, 0.0) + event.device_time_total / 1000
    total = sum(kernels.values())
    if args.compile:
        print_graphs()
    if not total:
        print("no device kernels were profiled (CPU run)")
        return
    kinds = {}
    for kernel, ms in kernels.items():
        kind = kind_of(kernel)
        kinds[kind] = kinds.get(kind, 0.0) + ms
    print(f"top kernels by device time ({'compiled' if args.compile else 'eager'} {args.model}):")
    for kernel, ms in sorted(kernels.items(), key=lambda kv: -kv[1])[:args.rows]:
        print(f"  {kernel[:80]:80s} {ms:9.2f} ms  {100 * ms / total:5.1f}%  {kind_of(kernel)[:20]}")
    print("by kind:")
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:60s} {ms:9.2f} ms  {100 * ms / total:5.1f}%")
    print(f"  {'total device time':60s} {total:9.2f} ms")
    print(f"  {'wall time per call (mean of 5, unprofiled)':60s} {wall_ms:9.2f} ms")
    print(f"  {'device kernels per call':60s} {sum(1 for _ in events(prof, DeviceType.CUDA)):9d}")
    host = {}
    for event in events(prof, DeviceType.CPU):
        host[event.name] = host.get(event.name, 0) + 1
    for name in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaMemcpyAsync",
                 "cudaStreamSynchronize", "aten::_local_scalar_dense", "aten::nonzero"):
        print(f"  {'host calls: ' + name:60s} {host.get(name, 0):9d}")


def print_graphs():
    """How many graphs Dynamo compiled and why it broke between them: a compiled call of N graphs
    pays N guard checks and the eager Python between them."""
    from torch._dynamo.utils import counters
    print(f"  {'graphs compiled (all calls)':60s} {counters['stats'].get('unique_graphs', 0):9d}")
    for reason, n in counters["graph_break"].most_common(10):
        print(f"  graph break x{n}: {str(reason)[:200]}")


def train_step(model, ids, cuda):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)

    def step():
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def prefill_step(model, ids):
    @torch.no_grad()
    def step():
        model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return step


def events(prof, device_type):
    """The profiled events that ran on that side (device kernels, or host calls), annotations left out."""
    return (event for event in prof.events()
            if event.device_type == device_type and not getattr(event, "is_user_annotation", False))


if __name__ == "__main__":
    main()
