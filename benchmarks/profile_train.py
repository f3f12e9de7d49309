"""Where a B'MOJO training step spends its GPU time (torch.profiler, one step after warm-up).

Usage (GPU): python benchmarks/profile_train.py [--batch 8 --length 2048]
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench_model import WIDTH
import bmojo


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    model = bmojo.BMojoForCausalLM(bmojo.preset_config("bmojo-130m", **WIDTH)).cuda().to(torch.bfloat16)
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
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
