#!/bin/bash
# Twenty-third session (2026-12-05): a compiled prefill with the state fills traced (the references, which
# Inductor writes in its own kernels, instead of 60 opaque Triton-op calls) and the reset limited to what the
# prefill does not overwrite (3 fills per full-attention layer instead of ~10 per layer), against the code
# before (the previous commit's tree, carried as .ab_base), in ONE call, with compiled HF Llama as the row
# that shows the host's speed.
#   1. GPU tests of the compiled prefill (one graph, logits and states equal eager kernels) and generate();
#   2. the compiled 2k prefill profiled (earlier call of the day, before: 1 graph, 25.05 ms wall, 4.18 ms
#      device; fill_set / fill_ring ~125 us of host time per call, 60 calls);
#   3. bench_model prefill columns: Llama compiled and the new code at 2k / 8k / 32k, the old code at 2k / 8k.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader; lscpu | grep "Model name"; git log --oneline -1 2>/dev/null
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu_model.py \
    -k "one_graph or compiled_model_with_kernels or compiles_the_decode" 2>&1 | tail -2
cd benchmarks
timeout 100 python profile_train.py --prefill --compile --model bmojo-matched --batch 1 --length 2048 --rows 40 \
    > $OUT/prefill_compiled_new_2048.txt 2>&1
sed -n '/graphs compiled/,$p' $OUT/prefill_compiled_new_2048.txt | grep -E "graphs|total|wall|fill|by kind" | head
grep -cE "^ +triton_|_kernel" $OUT/prefill_compiled_new_2048.txt
bm() { timeout "$1" python bench_model.py --models "$2" --measurements "$3" --time-budget $(( $1 - 10 )) \
       --row-timeout $(( $1 - 20 )) --out "$4" 2>&1 | grep "^| [lb]" | head -6; }
bm 200 llama-sdpa+compile,bmojo-matched+compile prefill_L2048,prefill_L8192,prefill_L32768 \
    $OUT/bench_prefill_new.json
cd ../.ab_base && source benchmarks/device_env.sh && cd benchmarks
bm 110 bmojo-matched+compile prefill_L2048,prefill_L8192 $OUT/bench_prefill_base.json
