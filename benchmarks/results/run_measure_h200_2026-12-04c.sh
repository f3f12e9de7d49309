#!/bin/bash
# Prepared on 2026-12-04 (eighteenth session) for the next device calls; NOT run that day (no device lent).
# Superseded by run_measure_h200_2026-12-05.sh (same parts plus BMOJO_POINTWISE_KERNELS); kept as written.
# `bash this.sh A|B|C`, one device call each (each part's time-outs sum under 600 s).
#   A: the BMOJO_STATE_KERNELS=1 kernels on the GPU: their tests, then the eager prefill profiled with the
#      switch off and on (bmojo-matched, batch 1, 2k and 32k).
#   B: issue 11's prefill columns with the switch on (HF Llama in the same run); eager generate() at
#      2k x 16 with the switch off and on; the short convolution's device time forward + backward; the SSD
#      state walk's tiles at a prefill (1 x 32k) and a training shape (8 x 2k).
#   C: one eager training step profiled with the aten and with the Triton short convolution.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
part=${1:-A}
if [ "$part" = A ]; then
  timeout 150 python -m pytest -q -p no:cacheprovider tests/test_kernels_state.py tests/test_gpu_model.py \
      -k "gpu or selection" 2>&1 | tail -3
  cd benchmarks
  for flag in 0 1; do for L in 2048 32768; do
    BMOJO_STATE_KERNELS=$flag timeout 80 python profile_train.py --prefill --model bmojo-matched --batch 1 \
        --length $L --rows 30 > $OUT/prefill_state_kernels${flag}_$L.txt 2>&1
    echo "== BMOJO_STATE_KERNELS=$flag, 1 x $L"
    sed -n '/total device time/,$p' $OUT/prefill_state_kernels${flag}_$L.txt
  done; done
elif [ "$part" = B ]; then
  cd benchmarks
  BMOJO_STATE_KERNELS=1 timeout 150 python bench_model.py --out $OUT/bench_model_prefill.json \
      --models llama-sdpa,bmojo-matched --measurements prefill_L2048,prefill_L8192,prefill_L32768 \
      --time-budget 140 --row-timeout 60 > $OUT/bench_model_prefill.log 2>&1
  grep -v -i warn $OUT/bench_model_prefill.log | grep "^|" | head -20
  for flag in 0 1; do
    BMOJO_STATE_KERNELS=$flag timeout 60 python bench_generate.py --reps 1 --points 2048x16 \
        --models bmojo-eager --out $OUT/gen_eager_state$flag.json 2>&1 | grep -E "^bmojo-eager |rror" | cut -c1-200
  done
  timeout 60 python bench_conv.py --out $OUT/bench_conv.json 2>&1 | grep -v -i warn | tail -12
  timeout 100 python bench_ssd.py --batch 1 --heads 12 --lengths 32768 --sweep states \
      --out $OUT/bench_ssd_1x32k.json > $OUT/bench_ssd.log 2>&1
  timeout 60 python bench_ssd.py --batch 8 --heads 12 --lengths 2048 --sweep states \
      --out $OUT/bench_ssd_8x2k.json >> $OUT/bench_ssd.log 2>&1
  grep -E '^\{|^ms|triton|Error' $OUT/bench_ssd.log | head -60
else
  cd benchmarks
  for conv in 0 1; do
    BMOJO_CONV_KERNEL=$conv timeout 90 python profile_train.py --model bmojo-matched --rows 30 \
        > $OUT/profile_train_conv$conv.txt 2>&1
    echo "== train conv kernel=$conv"; sed -n '/by kind/,$p' $OUT/profile_train_conv$conv.txt
  done
fi
