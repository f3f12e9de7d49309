"""Host time of an eager B'MOJO decode step or prefill on a CPU with every Triton path taken and the launches
stubbed out (twentieth session, 2026-12-05): what the code around the kernels costs the host, without the
device. `use_triton` is forced on for CPU tensors and Triton's interpreter launches nothing, so the outputs
are garbage; only the time means anything. Narrow layers (width 128) keep the CPU's matmuls small.

    cd benchmarks && TRITON_INTERPRET=1 python results/host_cost_eager_op_bodies_cpu_2026-12-05.py 12 decode

Caveat found on the H200 the same day: under the interpreter `wrap_triton` is never used, so this cannot show
costs of the compiled-Triton launch path (kernels/custom_ops.py `EagerBody`).
"""

import cProfile
import os
import pstats
import sys
import time

import torch
from triton.runtime import interpreter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
import bmojo  # noqa: E402
from bench_model import MATCHED  # noqa: E402
from prefill_ops import force_triton_path  # noqa: E402

interpreter.GridExecutor.__call__ = lambda self, *args, **kwargs: None  # launch nothing
force_triton_path()

layers, what = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
config = bmojo.preset_config("bmojo-130m", **dict(MATCHED, num_hidden_layers=layers, hidden_size=128,
                                                   intermediate_size=256, num_attention_heads=2,
                                                   num_key_value_heads=2, vocab_size=512))
model = bmojo.BMojoForCausalLM(config).eval()
ids = torch.randint(5, config.vocab_size, (1, 256))
with torch.no_grad():
    cache = model(ids, use_cache=True).past_key_values
    if what == "decode":
        def call():
            return model(ids[:, -1:], past_key_values=cache)
    else:
        def call():
            return model(ids, use_cache=True, logits_to_keep=1)
    for _ in range(3):
        call()
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        call()
    print(what, "per call ms", (time.perf_counter() - start) / reps * 1e3)
    profiler = cProfile.Profile()
    profiler.enable()
    call()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
