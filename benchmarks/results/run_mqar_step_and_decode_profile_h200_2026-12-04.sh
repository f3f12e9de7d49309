#!/bin/bash
# Device call 1 (fourteenth session, 2026-12-04): how fast the tiny MQAR models train eagerly and through
# Inductor, alone and 16 side by side (does compiling make the hard-end sweep affordable?), then where the
# compiled decode step spends its time after the fused eidetic update (issue 10), at batch 1 and 16.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
cd benchmarks
timeout 240 python bench_mqar_step.py --rows bmojo,full_attention,mamba2-hf-like,hf-llama --compile ,inductor \
    --procs 1 --out $OUT/mqar_step_1.json 2>&1 | grep -v -i warn
timeout 120 python bench_mqar_step.py --rows bmojo,full_attention --compile ,inductor --procs 16 \
    --out $OUT/mqar_step_16.json 2>&1 | grep -v -i warn
for batch in 1 16; do
    timeout 100 python profile_decode.py --batch $batch --context 2048 --rows 45 > $OUT/profile_decode_B$batch.txt 2>&1
    echo "profile B=$batch rc=$?"; grep -E "compiled step|per-token|inductor_ms" $OUT/profile_decode_B$batch.txt
done
