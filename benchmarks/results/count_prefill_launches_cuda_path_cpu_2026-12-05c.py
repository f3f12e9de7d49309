"""Launching ops of an eager prefill on the CUDA code path, counted on a CPU (twenty-first session,
2026-12-05): `use_triton` forced on, every Triton launch counted as one op and not run (outputs are garbage;
only the counts mean anything). bmojo-matched at width 128, LAYERS layers (default 1), 1 x the given length.

    cd benchmarks
    LAYERS=12 TRITON_INTERPRET=1 python results/count_prefill_launches_cuda_path_cpu_2026-12-05c.py 2048
"""
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
import torch
from triton.runtime import interpreter
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
import bmojo
from bench_model import MATCHED
from prefill_ops import CountOps, force_triton_path, site
ACTIVE = {}
def call(self, *args, **kwargs):
    counter = ACTIVE.get("c")
    if counter is not None and counter in _get_current_dispatch_mode_stack():
        key = site(traceback.extract_stack(), True)
        counter.sites[key] += 1
        counter.ops[key]["triton " + self.fn.__name__] += 1
    return None
interpreter.GridExecutor.__call__ = call
force_triton_path()
torch.manual_seed(0)
L = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
layers = int(os.environ.get("LAYERS", "1"))
config = bmojo.preset_config("bmojo-130m", **dict(MATCHED, num_hidden_layers=layers, hidden_size=128,
    intermediate_size=256, num_attention_heads=2, num_key_value_heads=2, vocab_size=512))
model = bmojo.BMojoForCausalLM(config).eval()
ids = torch.randint(5, 512, (1, L))
with torch.no_grad():
    model(ids, use_cache=True, logits_to_keep=1)
    c = CountOps(inner=True); ACTIVE["c"] = c
    with c:
        model(ids, use_cache=True, logits_to_keep=1)
print("total", sum(c.sites.values()))
for key, n in c.sites.most_common(200):
    print(f"  {n:4d}  {key}  {dict(c.ops[key].most_common(5))}")
