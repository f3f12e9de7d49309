#!/bin/bash
# For the next session (written 2026-12-05, twenty-second session; no device time was left to run it).
# After the compiled-prefill fixes (one graph; the reset traced as fills; mutating ops defined in the
# dispatcher, ~8x cheaper per call on CPU) and the no-mask fast path:
#   1. the GPU tests: the model (compiled prefill one graph, compiled generate()), state kernels, EagerBody;
#   2. the compiled 2k prefill profiled (call D of 2026-12-05: 857 kernels, 246 device copies, fill_set and
#      fill_ring 196 / 220 us of host time per call, 35.15 ms wall for 4.42 ms of device time);
#   3. issue 11's prefill columns, eager and compiled, against HF Llama in one run;
#   4. issue 10's generate() rows at 2k x 1, compiled B'MOJO and the static-cache Llama (the decode step's
#      mutating ops changed registration).
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader; lscpu | grep "Model name"
timeout 170 python -m pytest -q -p no:cacheprovider --durations=3 tests/test_gpu_model.py tests/test_eager_body.py \
    tests/test_kernels_state.py -k "gpu or one_graph or compiles_the_decode or body or mutating or redefines" \
    2>&1 | tail -5
cd benchmarks
timeout 120 python profile_train.py --prefill --compile --model bmojo-matched --batch 1 --length 2048 --rows 40 \
    > $OUT/prefill_compiled_bmojo-matched_2048.txt 2>&1
sed -n '/graphs compiled/,$p' $OUT/prefill_compiled_bmojo-matched_2048.txt | grep -v "^  [a-z_]*kernel\|triton_" \
    | head -24
grep -E "bmojo::fill_(set|ring)" $OUT/prefill_compiled_bmojo-matched_2048.txt | head -2
timeout 250 python bench_model.py --models llama-sdpa,bmojo-matched,llama-sdpa+compile,bmojo-matched+compile \
    --measurements prefill_L2048,prefill_L8192,prefill_L32768 --time-budget 240 --row-timeout 160 \
    --out $OUT/bench_model_prefill.json 2>&1 | grep "^|" | tail -24
row() { timeout "$2" python bench_generate.py --reps 2 --points 2048x1 --models "$1" \
        --out "$OUT/gen_$1.json" 2>&1 | grep -v -i warn | grep -E "^$1 |Error|error" | cut -c1-300; }
row bmojo-compiled 120; row llama-static 60
