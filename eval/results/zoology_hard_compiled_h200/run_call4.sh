#!/bin/bash
# Call 4: HF Mamba2's learning-rate sweep alone (4 jobs), resuming call 3.
set -u
source benchmarks/device_env.sh
export TORCHINDUCTOR_COMPILE_THREADS=2
mkdir -p "$OUT/z"
timeout 330 python -m bmojo.eval.zoology --device cuda --workers 16 --compile inductor \
    --seq-len 256 --pairs 32 --batch-size 256 --num-train 100000 --steps 4000 \
    --rows bmojo,bmojo-f,mamba2,sliding_attention,hybrid,hf-mamba2 --budgets 8192 \
    --unbudgeted-rows full_attention,hf-llama --ablation bmojo-me0 \
    --lrs 3e-4,1e-3,3e-3,1e-2 --seeds 0,1,2 --time-limit 1 \
    --resume eval/results/zoology_hard_compiled_h200/call3.json --out "$OUT/z" > "$OUT/call4.log" 2>&1
echo "zoology exit $?"; tail -n 8 "$OUT/call4.log"
