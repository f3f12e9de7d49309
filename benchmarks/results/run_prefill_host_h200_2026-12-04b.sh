#!/bin/bash
# Device call (seventeenth session, 2026-12-04): an eager 1 x 2048 prefill of the matched model (12 layers):
# its launching ops by source line, the ops that synchronise with the device, and its host time by Python
# function (prefill_ops.py).
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
cd benchmarks
timeout 200 python prefill_ops.py --length 2048 --layers 12 --rows 45 --callees dispatch.py:90 parallel.py:517 2>&1 | grep -v -i warn > $OUT/host_2048.txt
cut -c1-200 $OUT/host_2048.txt | head -45; grep -A12 "^.*dispatch.py:90(memory_attention) *->\|parallel.py:517(memory_attention_triton) *->" $OUT/host_2048.txt | cut -c1-220
