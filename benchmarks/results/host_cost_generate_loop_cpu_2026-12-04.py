"""Host time of generate()'s per-token loop outside the model (eager, tiny widths, CPU; eighteenth session,
2026-12-04): time(generate) minus the time inside model.model.forward, per token, for HF Llama and B'MOJO.
Run: python host_cost_generate_loop_cpu_2026-12-04.py llama|bmojo"""
import cProfile, pstats, time, torch, bmojo, sys
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
torch.set_num_threads(1)
W = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=12, num_attention_heads=4,
         num_key_value_heads=4, vocab_size=512)
def build(name):
    if name == "bmojo":
        return bmojo.BMojoForCausalLM(bmojo.preset_config("bmojo-130m", **dict(W, ssm_expand=1, intermediate_size=64), use_kernels=False))
    return LlamaForCausalLM(LlamaConfig(**W, attn_implementation="sdpa", tie_word_embeddings=True))
name = sys.argv[1]
m = build(name).eval()
ids = torch.randint(5, 500, (1, 64))
inner = m.model
calls = {"t": 0.0}
orig = inner.forward
def timed(*a, **k):
    t = time.perf_counter(); out = orig(*a, **k); calls["t"] += time.perf_counter() - t; return out
inner.forward = timed
g = GenerationConfig(max_new_tokens=65, min_new_tokens=65, do_sample=False, disable_compile=True)
m.generate(ids, generation_config=g)
calls["t"] = 0.0
t = time.perf_counter(); m.generate(ids, generation_config=g); total = time.perf_counter() - t
print(f"{name}: generate {total*1000:.1f} ms, inner model forward {calls['t']*1000:.1f} ms, rest {1000*(total-calls['t'])/65:.3f} ms per token")
pr = cProfile.Profile(); pr.enable(); m.generate(ids, generation_config=g); pr.disable()
st = pstats.Stats(pr); st.sort_stats("cumulative").print_stats(40)
