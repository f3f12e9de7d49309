#!/bin/bash
# Device call (sixteenth session, 2026-12-04): the decode-attention kernel's GPU tests (the new MODE /
# SKIP_MASKED settings included), then the sweep of its launch settings at batch 1 and 16.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
timeout 200 python -m pytest -q -p no:cacheprovider tests/test_kernels_memory_attention.py -k "gpu_decode" -s 2>&1 \
    | grep -E "rel err|passed|failed|Error" | cut -c1-200
cd benchmarks
timeout 330 python bench_memory_attention.py --decode --sweep --batches 1 16 --out $OUT/decode_sweep.json 2>&1 \
    | grep -v -i warn | tail -40
