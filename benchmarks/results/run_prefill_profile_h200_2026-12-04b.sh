#!/bin/bash
# Device call (seventeenth session, 2026-12-04): the decode kernel's GPU tests after the cast-hoist refactor
# (0e475d7), then where an eager prefill's time goes: B'MOJO (matched) and HF Llama at 1 x 2048, B'MOJO at
# 16 x 2048 (generate()'s prefill in issue 10's batch-16 rows).
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_kernels_memory_attention.py -k decode 2>&1 | tail -3
cd benchmarks
prof() { timeout 120 python profile_train.py --prefill --rows 40 "$@" 2>&1 | grep -v -i warn; }
prof --model bmojo-matched --batch 1 --length 2048 > $OUT/prefill_bmojo_B1.txt
prof --model llama-sdpa --batch 1 --length 2048 > $OUT/prefill_llama_B1.txt
prof --model bmojo-matched --batch 16 --length 2048 > $OUT/prefill_bmojo_B16.txt
for f in $OUT/*.txt; do echo "== $f"; sed -n '/^top kernels/,$p' $f | cut -c1-150; done
