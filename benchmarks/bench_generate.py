"""Decoding speed the way users decode: `model.generate()`, greedy, in ONE run on one device.

Rows (each model in a process of its own, so one model's compile caches and allocator state never
touch the next one's numbers):
  llama-eager       HF Llama (SDPA), default dynamic cache, eager
  llama-static      HF Llama, `cache_implementation="static"`: generate() compiles the decode step
                    with CUDA graphs (transformers' own auto-compile path)
  mistral-swa512    HF Mistral, sliding window 512, default cache, eager
  bmojo-eager       bmojo, parameter-matched to Llama (~110M), `disable_compile=True`
  bmojo-compiled    the same model, generate()'s default: its fixed-size cache is compileable, so
                    generate() compiles the decode step with CUDA graphs by itself
For each context C and batch B: warm-up calls with the same shapes (eager rows: the same prompt, 8 new
tokens, since they compile nothing and their 128-token calls are the slowest part of the run), then the
median of `--reps` timed calls of generate(C prompt tokens -> 128 new tokens) and of generate(C -> 1
token). Reported:
  tok_s        = B * 128 / time(C -> 128)                       (what a user sees, prefill included)
  decode_tok_s = B * 127 / (time(C -> 128) - time(C -> 1))      (the per-token cost alone)
Usage (GPU): python benchmarks/bench_generate.py --out results.json [--points 2048x1,32768x16]
"""

import argparse
import datetime
import json
import statistics
import time

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

import bmojo
from isolated import row_in_child, save

WIDTH = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
             num_key_value_heads=12, vocab_size=32000)
# B'MOJO narrowed to Llama's ~110M parameters: SSM expand 1, MLP 1024 (benchmarks/bench_model.py).
MATCHED = dict(WIDTH, ssm_expand=1, intermediate_size=1024)
NEW_TOKENS = 128
MODELS = ("llama-eager", "llama-static", "mistral-swa512", "bmojo-eager", "bmojo-compiled")
EAGER = ("llama-eager", "mistral-swa512", "bmojo-eager")
WARMUP_EAGER_TOKENS = 8  # an eager row's warm-up call generates this many tokens (its timed calls: 128)


def build(name):
    if name.startswith("bmojo"):
        return bmojo.BMojoForCausalLM(bmojo.preset_config("bmojo-130m", **MATCHED))
    if name.startswith("llama"):
        return LlamaForCausalLM(LlamaConfig(**WIDTH, attn_implementation="sdpa", tie_word_embeddings=True))
    if name == "mistral-swa512":
        return MistralForCausalLM(MistralConfig(**WIDTH, sliding_window=512, attn_implementation="sdpa",
                                                tie_word_embeddings=True))
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def generation_config(name, new_tokens):
    extra = {}
    if name == "llama-static":
        extra["cache_implementation"] = "static"
    if name == "bmojo-eager":
        extra["disable_compile"] = True
    return GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                            pad_token_id=0, eos_token_id=None, **extra)


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def measure_point(model, name, context, batch, reps):
    ids = torch.randint(3, WIDTH["vocab_size"], (batch, context), device="cuda")
    mask = torch.ones_like(ids)
    row = {}
    for label, new in (("full", NEW_TOKENS), ("prefill", 1)):
        config = generation_config(name, new)

        def call():
            out = model.generate(ids, attention_mask=mask, generation_config=config)
            assert out.shape[1] == context + new, out.shape

        if name in EAGER and new > WARMUP_EAGER_TOKENS:
            # eager rows compile nothing: a short call warms the allocator and cuBLAS for these shapes
            short = generation_config(name, WARMUP_EAGER_TOKENS)
            first = timed(lambda: model.generate(ids, attention_mask=mask, generation_config=short))
        else:
            first = timed(call)  # warm-up: compiles and records CUDA graphs for these shapes
        row[f"{label}_first_call_s"] = round(first, 3)
        row[f"{label}_s"] = statistics.median(timed(call) for _ in range(reps))
    row["tok_s"] = batch * NEW_TOKENS / row["full_s"]
    row["decode_tok_s"] = batch * (NEW_TOKENS - 1) / max(row["full_s"] - row["prefill_s"], 1e-9)
    return row


def guarded(fn, *args):
    try:
        return fn(*args)
    except torch.OutOfMemoryError as err:
        torch.cuda.empty_cache()
        return {"error": f"OOM: {str(err).splitlines()[0][:160]}"}
    except Exception as err:  # reported in the JSON, not hidden
        return {"error": f"{type(err).__name__}: {str(err)[:300]}"}


def measure(name, points, reps):
    torch.manual_seed(0)
    model = build(name).cuda().to(torch.bfloat16).eval()
    row = {"params": sum(p.numel() for p in model.parameters())}
    for context, batch in points:
        t0 = time.time()
        row[f"ctx{context}_B{batch}"] = guarded(measure_point, model, name, context, batch, reps)
        row[f"ctx{context}_B{batch}"]["wall_s"] = round(time.time() - t0, 1)
        print(name, context, batch, json.dumps(row[f"ctx{context}_B{batch}"]), flush=True)
    return row


def ratios(models, points):
    out = {}

    def rate(model, point, key):
        value = models.get(model, {}).get(point, {}).get(key)
        return value if isinstance(value, float) else None

    for context, batch in points:
        point = f"ctx{context}_B{batch}"
        for key in ("tok_s", "decode_tok_s"):
            for ours in ("bmojo-compiled", "bmojo-eager"):
                for base in ("llama-static", "llama-eager", "mistral-swa512"):
                    a, b = rate(ours, point, key), rate(base, point, key)
                    if a and b:
                        out[f"{ours}/{base}:{point}:{key}"] = round(a / b, 3)
    contexts = sorted({c for c, _ in points})
    for model in models:
        for batch in sorted({b for _, b in points}):
            for key in ("tok_s", "decode_tok_s"):
                first = rate(model, f"ctx{contexts[0]}_B{batch}", key)
                last = rate(model, f"ctx{contexts[-1]}_B{batch}", key)
                if first and last:
                    out[f"{model}:ctx{contexts[-1]}/ctx{contexts[0]}_B{batch}:{key}"] = round(last / first, 3)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_generate.json")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--points", default="2048x1,2048x16,8192x1,8192x16,32768x1,32768x16",
                        help="context x batch pairs")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    points = [tuple(int(n) for n in point.split("x")) for point in args.points.split(",")]
    names = args.models.split(",")
    if len(names) == 1:  # the child process: one model's row
        with open(args.out, "w") as f:
            json.dump(measure(names[0], points, args.reps), f)
        return
    results = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
               "torch": torch.__version__, "transformers": __import__("transformers").__version__,
               "sizes": WIDTH, "bmojo_sizes": MATCHED, "new_tokens": NEW_TOKENS, "models": {}}
    for name in names:
        results["models"][name] = row_in_child(__file__, name, args.out,
                                               ["--points", args.points, "--reps", str(args.reps)])
        results["ratios"] = ratios(results["models"], points)
        save(results, args.out)
    print(f"\n{'model':16s} " + " ".join(f"{f'ctx{c}_B{b}':>22s}" for c, b in points))
    for name, row in results["models"].items():
        cells = []
        for c, b in points:
            point = row.get(f"ctx{c}_B{b}", {})
            if "tok_s" in point:
                cells.append(f"{point['tok_s']:10.1f} /{point['decode_tok_s']:10.1f}")
            else:
                cells.append(f"{'error':>22s}")
        print(f"{name:16s} " + " ".join(cells))
    print("(tok/s with prefill / decode-only tok/s)\n")
    for key, value in results["ratios"].items():
        print(f"{key:75s} {value}")


if __name__ == "__main__":
    main()
