#!/bin/bash
# Call 3 of the compiled hard-end run: the seeds of the sliding-window and hybrid rows only (run.sh's rows
# without hf-mamba2 and mamba2-hf-like, whose sweeps did not fit the device time), then the conv kernel's
# GPU test and benchmark (issue 11).
set -u
source benchmarks/device_env.sh
export TORCHINDUCTOR_COMPILE_THREADS=2
mkdir -p "$OUT/z"
timeout 420 python -m bmojo.eval.zoology --device cuda --workers 16 --compile inductor \
    --seq-len 256 --pairs 32 --batch-size 256 --num-train 100000 --steps 4000 \
    --rows bmojo,bmojo-f,mamba2,sliding_attention,hybrid --budgets 8192 \
    --unbudgeted-rows full_attention,hf-llama --ablation bmojo-me0 \
    --lrs 3e-4,1e-3,3e-3,1e-2 --seeds 0,1,2 --time-limit 1 \
    --resume eval/results/zoology_hard_compiled_h200/call2.json --out "$OUT/z" > "$OUT/call3.log" 2>&1
echo "zoology exit $?"; tail -n 8 "$OUT/call3.log"
timeout 90 python -m pytest -q -p no:cacheprovider tests/test_kernels_conv.py 2>&1 | tail -n 5
cd benchmarks && timeout 60 python bench_conv.py --out "$OUT/bench_conv.json"
