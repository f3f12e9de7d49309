#!/bin/bash
# Twenty-first session (2026-12-05), device call A (device time was scarce: one call had to do the most):
#   1. the GPU tests of the state kernels, the model and the pointwise kernels (not run since EagerBody's
#      wrap_triton fix and the bf16 gather-gradient test change); the two compiled generate() tests last;
#   2. EagerBody on/off in one process: eager prefill 1 x 2048, decode step, training step 8 x 2048;
#   3. issue 11's prefill columns with compiled rows: HF Llama SDPA and bmojo-matched, eager and compiled,
#      1 x 2048 / 8192 / 32768, in one bench_model run.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader; lscpu | grep "Model name"
timeout 150 python -m pytest -q -p no:cacheprovider --durations=5 tests/test_kernels_state.py \
    tests/test_gpu_model.py tests/test_kernels_pointwise.py tests/test_eager_body.py \
    -k "(gpu or selection or body) and not compiles_the_decode" 2>&1 | tail -9
cd benchmarks
timeout 130 python eager_body_ab.py --model bmojo-matched --rounds 3 --out $OUT/eager_body_ab.json 2>&1 \
    | grep -v deprecated
timeout 290 python bench_model.py --models llama-sdpa,bmojo-matched,llama-sdpa+compile,bmojo-matched+compile \
    --measurements prefill_L2048,prefill_L8192,prefill_L32768 --time-budget 280 --row-timeout 200 \
    --out $OUT/bench_model_prefill.json 2>&1 | grep -vE "deprecated|^\s+File|Warning" | cut -c1-300 | tail -32
