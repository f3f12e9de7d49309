#!/bin/bash
# Device calls (sixteenth session, 2026-12-04): issue 10's generate() table, one lease, two calls.
# Call A: the two compiled rows. Call B (argument "eager"): the three eager rows, then profile_decode.py. Each model is its own
# bench_generate.py invocation so that a row finished before a timeout keeps its JSON.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
cd benchmarks
row() { timeout "$2" python bench_generate.py --reps 1 --models "$1" --out "$OUT/gen_$1.json" 2>&1 \
        | grep -v -i warn | grep -E "^$1 |Error|error" | cut -c1-300; }
if [ "$1" = "eager" ]; then
    row llama-eager 100; row mistral-swa512 100; row bmojo-eager 200
    # and the batch-16 decode step's kernels after the decode-attention change
    timeout 170 python profile_decode.py --batch 16 --rows 30 2>&1 | grep -v -i warn > $OUT/decode_B16.txt
    cut -c1-160 $OUT/decode_B16.txt
else
    row bmojo-compiled 340; row llama-static 230
fi
