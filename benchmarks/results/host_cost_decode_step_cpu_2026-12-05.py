"""Host cost of one compiled decode step on CPU (nineteenth session, 2026-12-05): the whole call against
Inductor's graph inside it (CompiledFxGraph.__call__), 12 layers of width 64, B'MOJO and HF Llama (static
cache).
Run: python host_cost_decode_step_cpu_2026-12-05.py bmojo|llama [guards]   (guards: all dropped, unsafe)"""
import sys, time, statistics, torch, bmojo
from transformers import LlamaConfig, LlamaForCausalLM, StaticCache
from torch._inductor import output_code
torch.set_num_threads(1)
W = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=12, num_attention_heads=4,
         num_key_value_heads=4, vocab_size=512)
name = sys.argv[1]
opts = {}
if len(sys.argv) > 2:
    opts["guard_filter_fn"] = torch.compiler.skip_all_guards_unsafe
torch.manual_seed(0)
ids = torch.randint(5, 500, (1, 64))
if name == "bmojo":
    cfg = dict(W, ssm_expand=1, intermediate_size=64)
    m = bmojo.BMojoForCausalLM(bmojo.preset_config("bmojo-130m", **cfg,
                                                   use_kernels=False)).eval()
    from bmojo.modeling_bmojo.cache import BMojoCache
    cache = BMojoCache(m.config, max_cache_len=4096)
    with torch.no_grad():
        m(ids, cache=cache)
    pos = None
else:
    m = LlamaForCausalLM(LlamaConfig(**W, attn_implementation="sdpa", tie_word_embeddings=True)).eval()
    cache = StaticCache(config=m.config, max_cache_len=4096)
    with torch.no_grad():
        m(ids, past_key_values=cache, use_cache=True)
c = torch.compile(m, fullgraph=True, options=opts or None)
tok = torch.tensor([[7]])
n = [64]
def step():
    p = torch.tensor([n[0]])
    if name == "bmojo":
        out = c(tok, cache=cache)
    else:
        out = c(tok, past_key_values=cache, cache_position=p, position_ids=p[None], use_cache=True)
    n[0] += 1
    return out
inner = []
orig = output_code.CompiledFxGraph.__call__
def timed(self, *a, **k):
    t = time.perf_counter(); r = orig(self, *a, **k); inner.append(time.perf_counter() - t); return r
output_code.CompiledFxGraph.__call__ = timed
with torch.no_grad():
    for _ in range(5): step()
    totals = []
    inner.clear()
    for _ in range(300):
        t = time.perf_counter(); step(); totals.append(time.perf_counter() - t)
ng = len(inner) // 300
call_ms, graph_ms = 1e3 * statistics.median(totals), 1e3 * statistics.median(inner)
print(f"{name}{' guards dropped' if opts else ''}: call {call_ms:.3f} ms, inductor graph {graph_ms:.3f} ms "
      f"(x{ng} per call), above {call_ms - ng * graph_ms:.3f} ms")
