#!/bin/bash
# Twenty-first session (2026-12-05), device call B: issue 11's table where it was never measured in one run:
# compiled prefill at 2k / 8k / 32k and training at 2 x 8192, HF Llama SDPA eager and compiled in the same run.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader; lscpu | grep "Model name"
cd benchmarks
timeout 570 python bench_model.py --models llama-sdpa,llama-sdpa+compile,bmojo-matched,bmojo-matched+compile \
    --measurements train_B2_L8192,prefill_L2048,prefill_L8192,prefill_L32768 --time-budget 540 \
    --row-timeout 330 --out $OUT/bench_model.json 2>&1 | grep -vE "deprecated|^\s+File|Warning" | cut -c1-400 | tail -60
