#!/bin/bash
# Twenty-first session (2026-12-05), device call B: training at 2 x 8192 (issue 11's >= 1.5x target), HF Llama
# SDPA eager and compiled and bmojo-matched eager and compiled in one run; the compiled generate() GPU tests;
# a profiled eager 2k prefill (kernel count after the grouped state reset; 1,612 kernels before).
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader; lscpu | grep "Model name"
cd benchmarks
timeout 60 python profile_train.py --prefill --model bmojo-matched --batch 1 --length 2048 --rows 30 \
    > $OUT/prefill_2048.txt 2>&1
sed -n '/total device time/,$p' $OUT/prefill_2048.txt | head -10
timeout 330 python bench_model.py --models llama-sdpa,bmojo-matched,llama-sdpa+compile,bmojo-matched+compile \
    --measurements train_B2_L8192 --time-budget 320 --row-timeout 220 \
    --out $OUT/bench_model_train8k.json 2>&1 | grep -vE "deprecated|^\s+File|Warning" | cut -c1-300 | tail -24
cd ..
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu_model.py -k "compiles_the_decode" 2>&1 | tail -3
