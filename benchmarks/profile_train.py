"""Where a B'MOJO training step spends its GPU time (torch.profiler, one step after warm-up).

Usage (GPU): python benchmarks/profile_train.py [--model bmojo-matched --batch 8 --length 2048]
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench_model import WIDTH, build


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--model", default="bmojo", help="a name bench_model.build knows")
    args = parser.parse_args()
    model = build(args.model).cuda().to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, WIDTH["vocab_size"], (args.batch, args.length), device="cuda")

    def step():
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("train_step"):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=60)
    print(table)
    # Device time by kind of kernel: matrix products, our Triton kernels, everything else.
    kinds = {}
    for event in prof.key_averages():
        wrapper = event.key == "train_step" or "Function" in event.key or event.key.startswith(("aten::", "autograd::"))
        if wrapper or event.self_device_time_total <= 0:  # ops and annotations: their kernels count already
            continue
        name = event.key.lower()
        if any(s in name for s in ("gemm", "cutlass", "nvjet", "sm90_xmma")):
            kind = "matmul"
        elif name.startswith(("triton_poi", "triton_red", "triton_per")):
            kind = "inductor-fused elementwise (torch.compile)"
        elif name.startswith("_"):
            kind = "bmojo Triton: " + event.key[:40]
        else:
            kind = "other (PyTorch eager kernels)"
        kinds[kind] = kinds.get(kind, 0.0) + event.self_device_time_total / 1000
    total = sum(kinds.values())
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1])[:args.rows]:
        print(f"{kind:60s} {ms:9.2f} ms  {100 * ms / total:5.1f}%")
    print(f"{'total device time':60s} {total:9.2f} ms")


if __name__ == "__main__":
    main()
