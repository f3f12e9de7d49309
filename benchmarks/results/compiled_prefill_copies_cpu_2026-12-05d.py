"""Copies and clones in a compiled prefill on the CUDA code path, counted on CPU (twenty-second session,
2026-12-05): every Triton launch through the interpreter, Inductor with fullgraph=True, bmojo-matched at width
64, LAYERS layers (default 2), 1 x 128; EAGER=1 profiles the eager model instead. Prints the compiled-vs-eager
logits difference, the state tensors, and the counts of the copy, clone, fill, foreach and bmojo ops.

    cd benchmarks && TRITON_INTERPRET=1 python results/compiled_prefill_copies_cpu_2026-12-05d.py
"""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
import torch, bmojo
from torch.profiler import profile, ProfilerActivity
from bench_model import MATCHED
from prefill_ops import force_triton_path
force_triton_path()
torch.manual_seed(0)
layers = int(os.environ.get("LAYERS", "2"))
config = bmojo.preset_config("bmojo-130m", **dict(MATCHED, num_hidden_layers=layers, hidden_size=64,
    intermediate_size=128, num_attention_heads=2, num_key_value_heads=2, vocab_size=256))
model = bmojo.BMojoForCausalLM(config).eval()
ids = torch.randint(5, 256, (1, 128))
compiled = model if os.environ.get("EAGER") else torch.compile(model, fullgraph=True)
with torch.no_grad():
    want = model(ids, use_cache=True, logits_to_keep=1).logits
    for _ in range(2):
        got = compiled(ids, use_cache=True, logits_to_keep=1).logits
    print("max diff", (got - want).abs().max().item())
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = compiled(ids, use_cache=True, logits_to_keep=1)
n = sum(1 for _ in out.past_key_values.states for _ in _.named_tensors())
counts = {}
for e in prof.events():
    counts[e.name] = counts.get(e.name, 0) + 1
shown = ("copy", "foreach", "fill", "bmojo", "clone")
print("state tensors", n, {k: v for k, v in counts.items() if any(s in k for s in shown)})
