"""Where a B'MOJO decode step spends its time: one token for every row of a filled cache.

Times the step three ways at one (context, batch): eager; `torch.compile` without CUDA graphs
(Inductor's kernels, one launch each, so the profile names them); and compiled with CUDA graphs
(`mode="reduce-overhead"`, what generate() uses), whose time is what a user gets per token. Prints
the compiled step's kernels by device time and the compile times.

Usage (GPU): python benchmarks/profile_decode.py [--context 2048 --batch 16 --rows 25]
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench_generate import build
from bmojo.modeling_bmojo.cache import BMojoCache


def step_time_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / reps


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--model", default="bmojo-compiled")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build(args.model).cuda().to(torch.bfloat16).eval()
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.context), device="cuda")
    cache = BMojoCache(model.config, max_cache_len=args.context + 64)
    model(ids, cache=cache)
    token = ids[:, -1:].clone()
    one = torch.ones_like(token)
    # Each timed step advances the cache by one token; the context grows by < 100 tokens, which changes
    # nothing for a fixed-size state.
    results = {"eager_ms": step_time_ms(lambda: model(token, attention_mask=one, cache=cache))}
    for label, mode in (("inductor", "default"), ("cudagraphs", "reduce-overhead")):
        torch._dynamo.reset()
        compiled = torch.compile(model, mode=mode)
        start = time.perf_counter()
        compiled(token, attention_mask=one, cache=cache)
        torch.cuda.synchronize()
        results[f"{label}_compile_s"] = time.perf_counter() - start
        results[f"{label}_ms"] = step_time_ms(lambda: compiled(token, attention_mask=one, cache=cache))
        if label == "inductor":
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    compiled(token, attention_mask=one, cache=cache)
                torch.cuda.synchronize()
            events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
            total = sum(e.self_device_time_total for e in events) / 3
            launches = sum(e.count for e in events) / 3
            print(f"compiled step (Inductor, no CUDA graphs): {total / 1000:.3f} ms device time, "
                  f"{launches:.0f} kernel launches per step")
            for e in sorted(events, key=lambda e: -e.self_device_time_total)[:args.rows]:
                print(f"  {e.self_device_time_total / 3 / 1000:8.4f} ms  x{e.count // 3:4d}  {e.key[:90]}")
    print({k: round(v, 3) for k, v in results.items()})
    print(f"per-token throughput with CUDA graphs: {args.batch * 1000 / results['cudagraphs_ms']:.0f} tok/s "
          f"(batch {args.batch}, context {args.context})")


if __name__ == "__main__":
    main()
