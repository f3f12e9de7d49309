"""Where the host's time goes in a compiled `generate()` call, outside the captured decode step.

profile_decode.py times the model's decode step alone; generate() adds its own per-token work (input
preparation, logits processing, stopping checks, dynamo's guards, the CUDA-graph replay's checks). At batch 1
a CUDA-graph step takes ~1.4 ms of device time, so a fraction of a millisecond of Python per token is a large
share of the rate. This warms generate() up with the shapes it will see, times decode-only per-token cost
(C -> N tokens minus C -> 1 token), then runs one generate() under cProfile and prints the functions with the
most own time and the most cumulative time.

Usage (GPU): python benchmarks/profile_generate.py --model bmojo-compiled [--context 2048 --batch 1]
"""

import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch
import transformers.generation.utils as generation_utils
from transformers import CompileConfig

from bench_generate import build, generation_config, timed


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bmojo-compiled")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--guard-filter", default="",
                        help="a torch.compiler guard filter (e.g. keep_tensor_guards_unsafe) passed to the "
                             "decode step's compile: how much of the host time is dynamo's guards")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build(args.model).cuda().to(torch.bfloat16).eval()
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.context), device="cuda")
    mask = torch.ones_like(ids)
    configs = {new: generation_config(args.model, new) for new in (args.new_tokens, 1)}
    if args.guard_filter:
        for config in configs.values():
            # torch.compile takes a mode or options, not both: CUDA graphs ("reduce-overhead") as an option
            config.compile_config = CompileConfig(mode=None, options={
                "triton.cudagraphs": True, "guard_filter_fn": getattr(torch.compiler, args.guard_filter)})
    calls = {new: (lambda config: lambda: model.generate(ids, attention_mask=mask, generation_config=config))(
        config) for new, config in configs.items()}
    for call in calls.values():  # compiles and records the graphs for these shapes
        call()
        call()
    full = statistics.median(timed(calls[args.new_tokens]) for _ in range(3))
    prefill = statistics.median(timed(calls[1]) for _ in range(3))
    per_token_ms = 1000 * (full - prefill) / (args.new_tokens - 1)
    print(f"{args.model}: {per_token_ms:.3f} ms per decoded token (batch {args.batch}, context "
          f"{args.context}), {args.batch * 1000 / per_token_ms:.0f} tok/s decode-only")
    breakdown(model, calls[args.new_tokens], args.new_tokens)
    split_compiled_call(model, calls[args.new_tokens])
    profiler = cProfile.Profile()
    profiler.enable()
    calls[args.new_tokens]()
    torch.cuda.synchronize()
    profiler.disable()
    for key in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(key).print_stats(args.rows)
        print(f"--- one generate() of {args.new_tokens} tokens under cProfile, by {key} ---")
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:12000])
    text = io.StringIO()  # what the compiled frames call (dynamo's frame for B'MOJO is a decorator's wrapper)
    pstats.Stats(profiler, stream=text).strip_dirs().sort_stats("tottime").print_callees(
        r"generic.py.*\(wrapper\)|_wrapped_call_impl")
    print("--- callees of the compiled frames ---")
    print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:6000])


def breakdown(model, call, new_tokens):
    """Per decode step: host time inside the compiled call (guards, input copies, graph launch), the
    device time from just before that call to just after it (CUDA events), host time waiting in
    generate()'s per-step stop check (the device finishing the step), and the rest of the loop's host
    time (input preparation, logits processing, bookkeeping) during which the device is idle."""
    compiled = getattr(model, "_compiled_call", None)
    stop_check = getattr(generation_utils, "StopCheck", None)
    if compiled is None:
        print("breakdown: generate() made no compiled call; skipped")
        return
    marks, waits = [], []

    def timed_call(*a, **k):
        before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start = time.perf_counter()
        before.record()
        out = compiled(*a, **k)
        after.record()
        marks.append((start, time.perf_counter(), before, after))
        return out

    original = stop_check.__call__ if stop_check is not None else None

    def timed_stop(self, *a, **k):
        start = time.perf_counter()
        result = original(self, *a, **k)
        waits.append(time.perf_counter() - start)
        return result

    model._compiled_call = timed_call
    if stop_check is not None:  # transformers' per-step stop decision (a host read of a device flag)
        stop_check.__call__ = timed_stop
    try:
        call()
        torch.cuda.synchronize()
    finally:
        model._compiled_call = compiled
        if stop_check is not None:
            stop_check.__call__ = original
    steps = len(marks)
    inside = [1000 * (m[1] - m[0]) for m in marks]
    device = [m[2].elapsed_time(m[3]) for m in marks]
    period = [1000 * (b[0] - a[0]) for a, b in zip(marks, marks[1:])]
    wait = [1000 * w for w in waits[-steps:]] or [0.0]  # no StopCheck: its wait is in "rest"

    def med(xs):
        return statistics.median(xs) if xs else float("nan")

    print(f"per decode step over {steps} compiled calls of {new_tokens} tokens (median ms): "
          f"period {med(period):.3f} | host inside the compiled call {med(inside):.3f} | device from "
          f"before to after it {med(device):.3f} | waiting in the stop check {med(wait):.3f} | rest of the "
          f"loop {med(period) - med(inside) - med(wait):.3f}")


def split_compiled_call(model, call):
    """Host time per decode step in each layer under the compiled call, by wrapping them with timers:
    Inductor's compiled graph (`CompiledFxGraph.__call__`), the CUDA-graph tree's run (input checks and
    copies, replay, output reconstruction) and the replay alone. What the compiled call spends above
    Inductor's graph is dynamo's frame (guards, argument collection) and AOT Autograd's runtime wrapper.
    Only calls inside generate()'s compiled decode call count (the eager prefill runs compiled pieces too)."""
    from torch._inductor import cudagraph_trees, output_code
    targets = {"inductor graph": (output_code.CompiledFxGraph, "__call__"),
               "cudagraph tree run": (cudagraph_trees.CUDAGraphTreeManager, "run"),
               "graph replay": (cudagraph_trees.CUDAGraphNode, "run_graph")}
    times = {name: [] for name in ["compiled call", *targets]}
    originals, inside = {}, [False]

    def timer(name, original, outer=False):
        def wrapped(*a, **k):
            if not (inside[0] or outer):
                return original(*a, **k)
            inside[0] = True
            start = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                times[name].append(1000 * (time.perf_counter() - start))
                inside[0] = not outer
        return wrapped

    compiled = getattr(model, "_compiled_call", None)
    if compiled is None:
        print("split: generate() made no compiled call; skipped")
        return
    model._compiled_call = timer("compiled call", compiled, outer=True)

    for name, (cls, attr) in targets.items():
        originals[name] = getattr(cls, attr)
        setattr(cls, attr, timer(name, originals[name]))
    try:
        call()
        torch.cuda.synchronize()
    finally:
        model._compiled_call = compiled
        for name, (cls, attr) in targets.items():
            setattr(cls, attr, originals[name])
    print("host ms per call, median (calls): " + " | ".join(
        f"{name} {statistics.median(ts):.3f} ({len(ts)})" for name, ts in times.items() if ts))


if __name__ == "__main__":
    main()
