#!/bin/bash
# Device call (seventeenth session, 2026-12-04): GPU tests of the compiled prefill selection and ring fill;
# the eager prefill profile at 1 x 2048 and 1 x 32768 and its launches by source line; the short convolution's
# no-grad forward (aten against our Triton kernel) at prefill shapes; the SSD state walk's tiles at 1 x 32k.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
timeout 200 python -m pytest -q -p no:cacheprovider tests/test_gpu_model.py \
    -k "selection or prefill_then_decode or unaligned or kernels_match" 2>&1 | tail -3
cd benchmarks
prof() { timeout 100 python profile_train.py --prefill --rows 30 --model bmojo-matched --batch 1 "$@" 2>&1 \
         | grep -v -i warn; }
prof --length 2048 > $OUT/prefill_B1_2048.txt
prof --length 32768 > $OUT/prefill_B1_32768.txt
for f in $OUT/prefill_*.txt; do echo "== $f"; grep "wall\|kernels per\|total device" $f; done
timeout 90 python prefill_ops.py --length 2048 --rows 25 2>&1 | grep -v -i warn > $OUT/ops_2048.txt
head -22 $OUT/ops_2048.txt | cut -c1-160
timeout 60 python bench_conv.py --shapes "" --fwd-shapes 1x2048,1x32768,16x2048 --out $OUT/conv_fwd.json 2>&1 \
    | grep "no-grad\|FAIL"
timeout 150 python bench_ssd.py --batch 1 --heads 12 --lengths 32768 --sweep states --out $OUT/ssd_B1_32k.json \
    2>&1 | grep -v -i warn | grep -E '^\{|ms:|^L=' | cut -c1-160
