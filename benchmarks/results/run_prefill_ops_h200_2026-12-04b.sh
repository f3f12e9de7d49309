#!/bin/bash
# Device call (seventeenth session, 2026-12-04): an eager prefill's launches by B'MOJO source line and its
# host syncs (prefill_ops.py), then the prefill profile at 1 x 2048 and 1 x 32768 with the vectorised eidetic
# prefill, then the same 32k profile with that change reverted (patch -R), all in one run.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
cd benchmarks
timeout 90 python prefill_ops.py --length 2048 --rows 30 2>&1 | grep -v -i warn > $OUT/ops_2048.txt
timeout 90 python prefill_ops.py --length 2048 --rows 60 --inner 2>&1 | grep -v -i warn > $OUT/ops_2048_inner.txt
prof() { timeout 150 python profile_train.py --prefill --rows 30 --model bmojo-matched --batch 1 "$@" 2>&1 \
         | grep -v -i warn; }
prof --length 2048 > $OUT/prefill_B1_2048.txt
prof --length 32768 > $OUT/prefill_B1_32768.txt
(cd .. && patch -s -R -p1 < benchmarks/results/eidetic_prefill_change.diff) && \
    prof --length 32768 > $OUT/prefill_B1_32768_before.txt
cat $OUT/ops_2048.txt | cut -c1-220
for f in $OUT/prefill_*.txt; do echo "== $f"; sed -n '/^by kind/,$p' $f; done
