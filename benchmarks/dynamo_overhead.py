"""Dynamo's own host cost per compiled decode step, against the number of graph inputs (issue 10).

A compiled generate() step at batch 1 spends about 1 ms of host time inside the compiled call for B'MOJO
against 0.5 ms for HF Llama with a static cache (benchmarks/results/profile_generate_h200_2026-12-04.md),
and B'MOJO's decode graph has about three times Llama's inputs (its state is ~21 tensors per layer).
Packing the state into fewer tensors would cut the inputs; this measures what that could save before it is
built. Each model's one-token decode step is compiled with a backend that runs the graph once and then
returns its outputs without computing anything, so a call's time is what dynamo adds around a graph:
guard evaluation, argument collection and output handling. It runs once with every guard and once with a
guard filter that drops them all (not safe for use, only a measurement). CUDA graphs' per-replay checks are
not in it: that part needs the GPU (`profile_generate.py`).

Runs on a CPU (tiny widths; the graph is never executed, so only the counts of tensors matter):
    python benchmarks/dynamo_overhead.py [--layers 12] [--calls 500] [--out dynamo_overhead.json]
"""

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

import bmojo

PROMPT = 40


def bmojo_step(layers):
    cfg = bmojo.preset_config("tiny", use_kernels=False, num_hidden_layers=layers,
                              mixer_types=["bmojo"] * layers)
    model = bmojo.BMojoForCausalLM(cfg).eval()
    ids = torch.randint(1, 100, (1, PROMPT))
    cache = model(input_ids=ids, use_cache=True).past_key_values
    state = sum(len(list(s.named_tensors())) for s in cache.states)
    return model, cache, state


def llama_step(layers):
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=256, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    cache = StaticCache(config=cfg, max_cache_len=PROMPT + 1024)
    ids = torch.randint(1, 100, (1, PROMPT))
    model(input_ids=ids, past_key_values=cache, use_cache=True, cache_position=torch.arange(PROMPT))
    state = sum(sum(isinstance(v, torch.Tensor) for v in vars(layer).values()) for layer in cache.layers)
    return model, cache, state


def no_compute_backend(counts):
    """Runs the graph once (the outputs then stand for every call) and records its input / output counts."""
    def backend(gm, example_inputs):
        outputs = gm(*example_inputs)
        output_node = next(n for n in gm.graph.nodes if n.op == "output")
        counts.update(inputs=len(example_inputs), outputs=len(output_node.args[0]))
        return lambda *args: outputs
    return backend


def per_call_ms(fn, calls, repeats=5):
    """Median over `repeats` of the mean time of `calls` calls, after 5 warm-up calls."""
    for i in range(5):
        fn(PROMPT + i)
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            fn(PROMPT + 5 + i % 512)
        means.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(means)


@torch.no_grad()
def measure(name, layers, calls):
    model, cache, state = (bmojo_step if name == "bmojo" else llama_step)(layers)
    token = torch.ones(1, 1, dtype=torch.long)
    row = dict(model=name, layers=layers, state_tensors=state, parameters=len(list(model.parameters())))
    drop_all = {"guard_filter_fn": lambda entries: [False] * len(entries)}
    for label, options in (("all_guards", {}), ("no_guards", drop_all)):
        torch._dynamo.reset()
        counts = {}
        compiled = torch.compile(model, backend=no_compute_backend(counts), fullgraph=True, dynamic=False,
                                 options=options or None)

        def step(pos):
            return compiled(input_ids=token, past_key_values=cache, use_cache=True,
                            cache_position=torch.tensor([pos]), position_ids=torch.tensor([[pos]]))

        row[f"{label}_ms"] = per_call_ms(step, calls)
        row.update(graph_inputs=counts["inputs"], graph_outputs=counts["outputs"])
    row["guards_ms"] = row["all_guards_ms"] - row["no_guards_ms"]
    print(f"{name:>6} x{layers:<2} inputs {row['graph_inputs']:>4} (state {state:>3}, params "
          f"{row['parameters']:>3}): {row['all_guards_ms']:.3f} ms per call, of which guards "
          f"{row['guards_ms']:.3f}; per input {row['all_guards_ms'] / row['graph_inputs'] * 1e3:.2f} us")
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="1,12", help="comma-separated layer counts")
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--out", default="dynamo_overhead.json")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rows = [measure(name, int(layers), args.calls)
            for layers in args.layers.split(",") for name in ("bmojo", "llama")]
    ratios = {}
    for bm, ll in zip(rows[::2], rows[1::2]):  # the two models at one layer count, measured in this run
        ratios[f"bmojo_vs_llama_x{bm['layers']}"] = ratio = bm["all_guards_ms"] / ll["all_guards_ms"]
        print(f"bmojo / llama at {bm['layers']} layers: {ratio:.2f}x dynamo's per-call cost")
    meta = dict(date=time.strftime("%Y-%m-%d"), cpu=platform.processor() or platform.machine(),
                torch=torch.__version__)
    with open(args.out, "w") as f:
        json.dump(dict(meta, rows=rows, ratios=ratios), f, indent=1)


if __name__ == "__main__":
    main()
