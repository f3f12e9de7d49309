"""Dynamo's graph breaks in a compiled prefill on the GPU (twenty-second session, 2026-12-05): the reasons in
full, with the user frames that hit them. bmojo-matched, 1 x LENGTH (default 2048), bf16, no_grad.

    cd benchmarks && python results/explain_compiled_prefill_2026-12-05d.py [LENGTH]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
import torch
from bench_model import Setup, build

length = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
setup = Setup(not torch.cuda.is_available())
model = build("bmojo-matched", setup).to(setup.device, setup.dtype).eval()
ids = torch.randint(0, setup.width["vocab_size"], (1, length), device=setup.device)
with torch.no_grad():
    explained = torch._dynamo.explain(model)(input_ids=ids, use_cache=True, logits_to_keep=1)
print("graphs", explained.graph_count, "breaks", explained.graph_break_count, "ops", explained.op_count)
for n, graph_break in enumerate(explained.break_reasons):
    print(f"--- break {n}: {graph_break.reason[:1500]}")
    for frame in graph_break.user_stack[-6:]:
        print(f"    {frame.filename.split('/')[-2:]}:{frame.lineno} {frame.name}: {frame.line}")
