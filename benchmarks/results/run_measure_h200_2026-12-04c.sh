#!/bin/bash
# Prepared on 2026-12-04 (eighteenth session) for the next device call; NOT run that day (no device lent).
# Part A, ~5 min: the opt-in prefill kernels (BMOJO_PREFILL_KERNELS=1) on the GPU: their tests, then the
# eager prefill profiled with them off and on (bmojo-matched, batch 1, 2k and 32k), then issue 11's prefill
# columns with them on. Part B: `bash this.sh B`.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
part=${1:-A}
if [ "$part" = A ]; then
  timeout 150 python -m pytest -q -p no:cacheprovider tests/test_kernels_prefill.py tests/test_gpu_model.py \
      -k "gpu or selection" 2>&1 | tail -3
  cd benchmarks
  for flag in 0 1; do for L in 2048 32768; do
    BMOJO_PREFILL_KERNELS=$flag timeout 80 python profile_train.py --prefill --model bmojo-matched --batch 1 \
        --length $L --rows 30 > $OUT/prefill_kernels${flag}_$L.txt 2>&1
    echo "== BMOJO_PREFILL_KERNELS=$flag, 1 x $L"; sed -n '/total device time/,$p' $OUT/prefill_kernels${flag}_$L.txt
  done; done
  BMOJO_PREFILL_KERNELS=1 timeout 150 python bench_model.py --out $OUT/bench_model_prefill.json \
      --models llama-sdpa,bmojo-matched --measurements prefill_L2048,prefill_L8192,prefill_L32768 \
      --time-budget 140 --row-timeout 60 > $OUT/bench_model_prefill.log 2>&1
  grep -v -i warn $OUT/bench_model_prefill.log | grep "^|" | head -20
else
  # Part B, ~9 min: what the training-side changes would act on: the short convolution's device time
  # forward + backward, the SSD state walk's tiles at a prefill and a training shape, one eager training
  # step profiled with the aten and the Triton conv.
  cd benchmarks
  timeout 60 python bench_conv.py --out $OUT/bench_conv.json 2>&1 | grep -v -i warn | tail -12
  timeout 100 python bench_ssd.py --batch 1 --heads 12 --lengths 32768 --sweep states \
      --out $OUT/bench_ssd_1x32k.json > $OUT/bench_ssd.log 2>&1
  timeout 60 python bench_ssd.py --batch 8 --heads 12 --lengths 2048 --sweep states \
      --out $OUT/bench_ssd_8x2k.json >> $OUT/bench_ssd.log 2>&1
  grep -E '^\{|^ms|triton|Error' $OUT/bench_ssd.log | head -60
  for conv in 0 1; do
    BMOJO_CONV_KERNEL=$conv timeout 90 python profile_train.py --model bmojo-matched --rows 30 \
        > $OUT/profile_train_conv$conv.txt 2>&1
    echo "== train conv kernel=$conv"; sed -n '/by kind/,$p' $OUT/profile_train_conv$conv.txt
  done
fi
