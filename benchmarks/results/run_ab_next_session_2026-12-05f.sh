#!/bin/bash
# For the next session (written 2026-12-05, twenty-third session; its device time ran out before this ran).
# Times this session's two prefill changes against the tree before them, in ONE call:
#   - compiled prefill: the ring / set fills traced, the reset limited to what the prefill does not write;
#   - eager prefill and training forward: positions, angles, masks, last-token indices shared across layers
#     (219 of 1,549 counted ops fewer in a 12-layer 2k prefill, CPU count).
# Before running (from the repository root):
#   rm -rf .ab_base && mkdir .ab_base && git archive 0718727 | tar -x -C .ab_base
#   echo ".ab_base/" >> .git/info/exclude        # then run with carry=[".ab_base"]
# Each part writes its log under $OUT and prints a few lines: a killed part loses only itself.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader; lscpu | grep "Model name"
root=$(pwd)
(source benchmarks/device_env.sh && timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu_model.py \
    tests/test_kernels_state.py -k "gpu or one_graph or compiled_model_with_kernels" > $OUT/tests.log 2>&1)
tail -2 $OUT/tests.log
bm() {  # tree, models, measurements, seconds, file
    (cd "$root/$1" && source benchmarks/device_env.sh && cd benchmarks && timeout "$4" python bench_model.py \
        --models "$2" --measurements "$3" --time-budget $(( $4 - 5 )) --row-timeout $(( $4 - 5 )) \
        --out "$OUT/$5.json" > "$OUT/$5.log" 2>&1)
    grep "^| [lb]" "$OUT/$5.log" | head -4
}
# eager: new, base, Llama (each prefill a few seconds)
bm . bmojo-matched,llama-sdpa prefill_L2048,prefill_L8192 60 eager_new
bm .ab_base bmojo-matched prefill_L2048,prefill_L8192 40 eager_base
# compiled at 2k and 8k: new, base (each ~60 s of compilation), then Llama
bm . bmojo-matched+compile prefill_L2048,prefill_L8192 110 compiled_new
bm .ab_base bmojo-matched+compile prefill_L2048,prefill_L8192 110 compiled_base
bm . llama-sdpa+compile prefill_L2048,prefill_L8192 70 compiled_llama
