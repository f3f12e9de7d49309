#!/bin/bash
# Device call (seventeenth session, 2026-12-04): GPU tests of the short-convolution kernel (now the no-grad
# default) and of prefill + decode; issue 11's prefill columns (eager rows: HF Llama, HF Mistral SWA-512,
# bmojo-matched) at 2k / 8k / 32k; issue 10's generate() rows compiled at 2k and 32k, batch 1.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_kernels_conv.py tests/test_gpu_model.py \
    -k "gpu_bf16 or prefill_then_decode_bf16 or selection" 2>&1 | tail -2
cd benchmarks
timeout 170 python bench_model.py --out $OUT/bench_model_prefill.json --models llama-sdpa,mistral-swa512,bmojo-matched \
    --measurements prefill_L2048,prefill_L8192,prefill_L32768 --time-budget 160 --row-timeout 70 \
    > $OUT/bench_model_prefill.log 2>&1
grep -v -i warn $OUT/bench_model_prefill.log | grep "^|" | head -20
row() { timeout "$2" python bench_generate.py --reps 2 --points 2048x1,32768x1 --models "$1" \
        --out "$OUT/gen_$1.json" 2>&1 | grep -v -i warn | grep -E "^$1 |Error|error" | cut -c1-300; }
row bmojo-compiled 170; row llama-static 120
