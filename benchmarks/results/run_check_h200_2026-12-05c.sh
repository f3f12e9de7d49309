#!/bin/bash
# Twenty-first session (2026-12-05), device call A:
#   1. the GPU tests of the state kernels, the model and the pointwise kernels (not run since EagerBody's
#      wrap_triton fix and the bf16 gather-gradient test change), and tests/test_eager_body.py;
#   2. EagerBody on/off in one process: eager prefill 1 x 2048, decode step, training step 8 x 2048;
#   3. a profiled eager 2k prefill (kernel count after the grouped state reset).
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader; nproc; lscpu | grep "Model name"
timeout 290 python -m pytest -q -p no:cacheprovider --durations=6 tests/test_kernels_state.py \
    tests/test_gpu_model.py tests/test_kernels_pointwise.py tests/test_eager_body.py \
    -k "gpu or selection or body" 2>&1 | tail -14
cd benchmarks
timeout 200 python eager_body_ab.py --model bmojo-matched --rounds 5 --out $OUT/eager_body_ab.json 2>&1 \
    | grep -v deprecated
# 3. the eager 2k prefill's launches and wall after the grouped state reset (was 1,612 kernels, 2026-12-05)
timeout 60 python profile_train.py --prefill --model bmojo-matched --batch 1 --length 2048 --rows 30 \
    > $OUT/prefill_2048.txt 2>&1
sed -n '/total device time/,$p' $OUT/prefill_2048.txt | head -10
