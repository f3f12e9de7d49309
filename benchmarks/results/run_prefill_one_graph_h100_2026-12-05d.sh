#!/bin/bash
# Twenty-second session (2026-12-05), device call D, after the states list their tensors by name (FIELDS):
#   1. the GPU test that a compiled prefill on the Triton path is one graph (fullgraph=True) and equals eager;
#   2. the compiled 2k prefill profiled again: graphs, kernels, wall vs device time (call C: 5 graphs, 635
#      kernels, 20.05 ms wall for 3.95 ms of device time on an H200);
#   3. issue 11's prefill columns again, eager and compiled, HF Llama SDPA and bmojo-matched, in one run.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader; lscpu | grep "Model name"
timeout 100 python -m pytest -q -p no:cacheprovider tests/test_gpu_model.py -k "one_graph" 2>&1 | tail -3
cd benchmarks
timeout 120 python profile_train.py --prefill --compile --model bmojo-matched --batch 1 --length 2048 --rows 40 \
    > $OUT/prefill_compiled_bmojo-matched_2048.txt 2>&1
sed -n '/graphs compiled/,$p' $OUT/prefill_compiled_bmojo-matched_2048.txt | head -6
grep -A30 "^by kind" $OUT/prefill_compiled_bmojo-matched_2048.txt | head -24
timeout 300 python bench_model.py --models llama-sdpa,bmojo-matched,llama-sdpa+compile,bmojo-matched+compile \
    --measurements prefill_L2048,prefill_L8192,prefill_L32768 --time-budget 290 --row-timeout 200 \
    --out $OUT/bench_model_prefill.json 2>&1 | grep -vE "deprecated|^\s+File|Warning" | cut -c1-300 | tail -32
