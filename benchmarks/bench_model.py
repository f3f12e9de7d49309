"""Model-level benchmark (issue 3): B'MOJO vs HF Llama (SDPA) and Mistral (window 512) of the same size.

Measures, in ONE run on one device (each model in a process of its own): training tokens/s (AdamW,
bf16, B x L), prefill time, and decode tokens/s at several contexts and batch sizes; prints ratios
against the baselines measured in the same run and writes JSON.
Usage (GPU):  python benchmarks/bench_model.py --out results.json [--quick]
"""

import argparse
import datetime
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

import bmojo
from isolated import row_in_child, save
from bmojo.modeling_bmojo.cache import CACHE_NAME

WIDTH = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
             num_key_value_heads=12, vocab_size=32000)


# B'MOJO at the same width carries a Mamba-2 mixer on top of attention and MLP (162M parameters at
# d=768); "bmojo-matched" narrows the SSM (expand 1) and the MLP (1024) to Llama's ~110M parameters.
MATCHED = dict(WIDTH, ssm_expand=1, intermediate_size=1024)


def build(name):
    if name == "bmojo":
        return bmojo.BMojoForCausalLM(bmojo.preset_config("bmojo-130m", **WIDTH))
    if name == "bmojo-matched":
        return bmojo.BMojoForCausalLM(bmojo.preset_config("bmojo-130m", **MATCHED))
    if name == "llama-sdpa":
        return LlamaForCausalLM(LlamaConfig(**WIDTH, attn_implementation="sdpa", tie_word_embeddings=True))
    if name == "mistral-swa512":
        return MistralForCausalLM(MistralConfig(**WIDTH, sliding_window=512, attn_implementation="sdpa",
                                                tie_word_embeddings=True))
    raise ValueError(name)


def cuda_time(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / reps


def train_tokens_per_s(model, batch, length, reps):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, WIDTH["vocab_size"], (batch, length), device="cuda")

    def step():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return batch * length / cuda_time(step, 2, reps)


@torch.no_grad()
def prefill_seconds(model, length):
    ids = torch.randint(0, WIDTH["vocab_size"], (1, length), device="cuda")
    return cuda_time(lambda: model(input_ids=ids, use_cache=True), 1, 3)


@torch.no_grad()
def decode_tokens_per_s(model, context, batch, steps):
    ids = torch.randint(0, WIDTH["vocab_size"], (1, context), device="cuda")
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = getattr(out, CACHE_NAME)  # `cache` since transformers 5.24 (`past_key_values` warns there)
    if batch > 1:
        cache.batch_repeat_interleave(batch)
    tok = out.logits[:, -1:].argmax(-1).repeat(batch, 1)
    mask = torch.ones(batch, context, dtype=torch.long, device="cuda")

    def one():
        nonlocal tok, mask
        mask = torch.cat([mask, mask[:, :1]], 1)
        logits = model(input_ids=tok, attention_mask=mask, use_cache=True, **{CACHE_NAME: cache}).logits
        tok = logits[:, -1:].argmax(-1)

    seconds = cuda_time(one, 2, steps)
    return batch / seconds


def guarded(fn, *args):
    try:
        return fn(*args)
    except torch.OutOfMemoryError as err:
        torch.cuda.empty_cache()
        return f"OOM: {str(err).splitlines()[0][:120]}"
    except Exception as err:  # report, don't hide: the JSON says what failed
        return f"{type(err).__name__}: {str(err)[:200]}"


def measure(name, contexts):
    """One model's row. Runs in a process of its own (see main), so that torch.compile caches and the
    allocator state of one model never slow down or speed up the next."""
    torch.manual_seed(0)
    model = build(name).cuda().to(torch.bfloat16)
    row = {"params": sum(p.numel() for p in model.parameters())}
    t0 = time.time()
    row["train_tokens_per_s_B8_L2048"] = guarded(train_tokens_per_s, model.train(), 8, 2048, 5)
    model.eval()
    row["prefill_s_L2048"] = guarded(prefill_seconds, model, 2048)
    for ctx in contexts:
        for batch in (1, 16):
            row[f"decode_tokens_per_s_ctx{ctx}_B{batch}"] = guarded(decode_tokens_per_s, model, ctx, batch, 32)
    row["wall_s"] = round(time.time() - t0, 1)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench_model.json")
    parser.add_argument("--quick", action="store_true", help="fewer contexts and repetitions")
    parser.add_argument("--models", default="bmojo,bmojo-matched,llama-sdpa,mistral-swa512")
    args = parser.parse_args()
    contexts = [2048, 8192] if args.quick else [2048, 8192, 32768]
    names = args.models.split(",")
    if len(names) == 1:  # the child process: measure and write one row
        with open(args.out, "w") as f:
            json.dump(measure(names[0], contexts), f)
        return
    results = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
               "torch": torch.__version__, "sizes": WIDTH, "matched_sizes": MATCHED, "models": {}}
    for name in names:
        results["models"][name] = row_in_child(__file__, name, args.out, ["--quick"] if args.quick else [])
        print(name, json.dumps(results["models"][name]), flush=True)
        save(results, args.out)
    ratios = {}
    models = results["models"]
    for ours in (m for m in models if m.startswith("bmojo")):
        for base in (m for m in models if not m.startswith("bmojo")):
            for key, value in models[ours].items():
                other = models[base].get(key)
                if key not in ("params", "wall_s") and isinstance(value, float) and isinstance(other, float):
                    better_is_lower = key.startswith("prefill")
                    ratio = other / value if better_is_lower else value / other
                    ratios[f"{ours}/{base}:{key}"] = round(ratio, 3)
        for batch in (1, 16):
            first = f"decode_tokens_per_s_ctx{contexts[0]}_B{batch}"
            last = f"decode_tokens_per_s_ctx{contexts[-1]}_B{batch}"
            if isinstance(models[ours].get(first), float) and isinstance(models[ours].get(last), float):
                ratios[f"{ours}:{last}/{first}"] = round(models[ours][last] / models[ours][first], 3)
    results["ratios"] = ratios
    for key, value in ratios.items():
        print(f"{key:70s} {value}")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
