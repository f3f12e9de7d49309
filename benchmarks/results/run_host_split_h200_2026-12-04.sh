#!/bin/bash
# Device call (sixteenth session, 2026-12-04): the host time inside a compiled generate() step, split by layer
# (dynamo + AOT above Inductor's graph, Inductor's wrapper, the CUDA-graph tree's checks, the replay), for
# B'MOJO and the compiled Llama, each with and without dynamo's guards; then the batch-16 decode step's kernels.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
cd benchmarks
run() { timeout 200 python profile_generate.py --rows 25 "$@" 2>&1 | grep -v -i warn; }
show() { grep -E "per decode|per decoded|host ms|Error|error" "$1" | cut -c1-400; }
run --model bmojo-compiled > $OUT/split_bmojo.txt; show $OUT/split_bmojo.txt
run --model llama-static > $OUT/split_llama.txt; show $OUT/split_llama.txt
run --model bmojo-compiled --guard-filter skip_all_guards_unsafe > $OUT/split_bmojo_noguards.txt
show $OUT/split_bmojo_noguards.txt
run --model llama-static --guard-filter skip_all_guards_unsafe > $OUT/split_llama_noguards.txt
show $OUT/split_llama_noguards.txt
timeout 200 python profile_decode.py --batch 16 --rows 45 2>&1 | grep -v -i warn > $OUT/decode_B16.txt
cut -c1-160 $OUT/decode_B16.txt
