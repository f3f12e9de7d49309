#!/bin/bash
# Device call (seventeenth session, 2026-12-04): GPU tests of the padded in_proj and prefill + decode; the SSD
# state walk's tiles at a prefill's shape (B = 1, H = 12, 32k) and the default at training's (8 x 2048, H = 12);
# the eager prefill profile at 1 x 2048 and 1 x 32768 with the padded in_proj.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu_model.py -k "unaligned or prefill_then_decode" 2>&1 | tail -3
cd benchmarks
timeout 200 python bench_ssd.py --batch 1 --heads 12 --lengths 32768 --sweep states --out $OUT/ssd_B1_32k.json 2>&1 \
    | grep -v -i warn | grep -E '^\{"|^\{\}|ms:|triton|reference_c64' | cut -c1-200
timeout 60 python bench_ssd.py --batch 8 --heads 12 --lengths 2048 --out $OUT/ssd_B8_2k.json 2>&1 | grep -E "^L=" | head -3
prof() { timeout 100 python profile_train.py --prefill --rows 30 --model bmojo-matched --batch 1 "$@" 2>&1 \
         | grep -v -i warn; }
prof --length 2048 > $OUT/prefill_B1_2048.txt
prof --length 32768 > $OUT/prefill_B1_32768.txt
for f in $OUT/prefill_*.txt; do echo "== $f"; sed -n '/^top kernels/,/^  total/p' $f | head -12 | cut -c1-120; grep "wall\|kernels per" $f; done
