"""Which frames a compiled generate() decode step runs in Python on CUDA, its graph breaks, and its guards."""
import cProfile, io, pstats, sys, torch
sys.path.insert(0, "benchmarks")
from bench_generate import build, generation_config
name = sys.argv[1]
model = build(name).cuda().to(torch.bfloat16).eval()
ids = torch.randint(3, 32000, (1, 256), device="cuda"); mask = torch.ones_like(ids)
cfg = generation_config(name, 16)
with torch.no_grad():
    model.generate(ids, attention_mask=mask, generation_config=cfg)
    model.generate(ids, attention_mask=mask, generation_config=cfg)
    pr = cProfile.Profile(); pr.enable(); model.generate(ids, attention_mask=mask, generation_config=cfg); pr.disable()
s = io.StringIO(); pstats.Stats(pr, stream=s).strip_dirs().sort_stats("tottime").print_stats(400)
print("\n".join(l for l in s.getvalue().splitlines() if any(k in l for k in ("generic.py", "eval_frame", "module.py:17", "guard", "function calls", "hooks", "modeling.py", "cache.py")))[:6000])
