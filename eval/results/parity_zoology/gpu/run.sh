#!/bin/bash
# device call C (session 8): the GPU tests (compiled model, compiled decode op) with the test fixture that no
# longer poisons tensors under tracing, then issue 12's MQAR parity on Zoology's layout, 16 one-thread
# processes side by side.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
timeout 170 python -m pytest -q -rf -p no:cacheprovider --confcutdir=tests tests/test_gpu_model.py tests/test_kernels_memory_attention.py -k "gpu_model or gpu_decode_compiles or compiled" -s > $OUT/gpu_tests.log 2>&1
echo "gpu tests rc=$?"; grep -E "^FAILED|passed|failed|rel err" $OUT/gpu_tests.log | tail -12
out=$OUT/parity_zoology; mkdir -p $out
P="python -m bmojo.eval.parity --device cuda --layout zoology --schedule onecycle --lr 1e-3"
timeout 370 $P --seeds 0,1,2 --workers 6 --rows hf-llama,full_attention-untied --out $out/llama_3seeds > $out/llama_3seeds.log 2>&1 &
timeout 370 $P --seeds 0,1 --workers 10 --rows full_attention,bmojo,bmojo-f,hf-mamba2,mamba2 --out $out/rest_2seeds > $out/rest_2seeds.log 2>&1 &
wait
cat $out/*/parity.md
