#!/bin/bash
# Device call (ninth session, 2026-12-03): the fused eidetic decoding update on the GPU (its tests, the model's
# decode against its prefill, generate() with CUDA graphs against eager), then where the compiled decode step
# spends its time at batch 16 and batch 1, then generate() at 2k for bmojo-compiled and llama-static.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
timeout 150 python -m pytest -q -rfs -p no:cacheprovider --confcutdir=tests tests/test_kernels_eidetic.py \
    tests/test_gpu_model.py -k "eidetic or gpu_kernel or prefill_then_decode or generate_compiles" > $OUT/gpu_tests.log 2>&1
echo "gpu tests rc=$?"; grep -E "^FAILED|passed|failed|Error" $OUT/gpu_tests.log | tail -8
cd benchmarks
for batch in 16 1; do
    timeout 100 python profile_decode.py --batch $batch --context 2048 --rows 45 > $OUT/profile_decode_B$batch.txt 2>&1
    echo "profile B=$batch rc=$?"; grep -E "compiled step|per-token|inductor_ms" $OUT/profile_decode_B$batch.txt
done
timeout 200 python bench_generate.py --out $OUT/bench_generate.json --reps 1 --models bmojo-compiled,llama-static \
    --points 2048x1,2048x16 2>&1 | grep -v -i warn | tail -20
