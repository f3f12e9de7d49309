#!/bin/bash
# Twenty-second session (2026-12-05), device call C: why compiled prefill at 2k is 4.9x compiled Llama's
# time (call A: 12.1 vs 2.47 ms) while 8k is at par: graphs and breaks, kernels, host launches, wall vs device
# time, for bmojo-matched and HF Llama SDPA under torch.compile(model, dynamic=False), 1 x 2048.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
cd benchmarks
for model in bmojo-matched llama-sdpa; do
    timeout 200 python profile_train.py --prefill --compile --model $model --batch 1 --length 2048 --rows 40 \
        > $OUT/prefill_compiled_${model}_2048.txt 2>&1
    echo "== $model"; sed -n '/graphs compiled/,$p' $OUT/prefill_compiled_${model}_2048.txt | head -30
done
