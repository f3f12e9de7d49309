#!/bin/bash
# The A/B of run_compiled_prefill_ab_h100_2026-12-05f.sh again, trimmed to what the session's last device
# time allowed (that call ran out of time before the bmojo rows: the budget was set too small): compiled
# prefill at 2k and 8k, new code, the previous commit's tree (.ab_base), then compiled HF Llama.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
root=$(pwd)
bm() {  # tree, models, file
    (cd "$root/$1" && source benchmarks/device_env.sh && cd benchmarks && timeout 100 python bench_model.py \
        --models "$2" --measurements prefill_L2048,prefill_L8192 --time-budget 95 --row-timeout 95 \
        --out "$OUT/$3.json" > "$OUT/$3.log" 2>&1)
    grep "^| [lb]" "$OUT/$3.log" | head -3
}
bm . bmojo-matched+compile new
bm .ab_base bmojo-matched+compile base
bm . llama-sdpa+compile llama
