#!/bin/bash
# Prepared on 2026-12-05 (nineteenth session) for the next device calls; NOT run that day (no device lent).
# Supersedes run_measure_h200_2026-12-04c.sh: the same measurements, plus BMOJO_POINTWISE_KERNELS.
# `bash this.sh A|B|C`, one device call each (each part's time-outs sum under 600 s). S/P below: the
# BMOJO_STATE_KERNELS / BMOJO_POINTWISE_KERNELS switches, both opt-in, built under the Triton interpreter.
#   A: the GPU tests of both switches' kernels, then the eager prefill (bmojo-matched, batch 1) profiled with
#      S/P = 0/0, 1/0, 0/1, 1/1 at 2k and 0/0, 1/1 at 32k (wall time, device time, kernels).
#   B: issue 11's prefill columns with S/P = 1/1 (HF Llama in the same run); eager generate() at 2k x 1 and
#      2k x 16 with S/P = 0/0 and 1/1; one eager training step profiled with P = 0 and 1.
#   C: the short convolution in training (aten vs Triton, profiled), its device time per forward + backward,
#      and the SSD state walk's tiles at a prefill (1 x 32k) and a training shape (8 x 2k).
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
part=${1:-A}
if [ "$part" = A ]; then
  timeout 200 python -m pytest -q -p no:cacheprovider tests/test_kernels_state.py tests/test_kernels_pointwise.py \
      tests/test_gpu_model.py -k "gpu or selection" 2>&1 | tail -4
  cd benchmarks
  for sp in "0 0 2048" "1 0 2048" "0 1 2048" "1 1 2048" "0 0 32768" "1 1 32768"; do
    set -- $sp
    BMOJO_STATE_KERNELS=$1 BMOJO_POINTWISE_KERNELS=$2 timeout 62 python profile_train.py --prefill \
        --model bmojo-matched --batch 1 --length $3 --rows 30 > $OUT/prefill_s$1p$2_$3.txt 2>&1
    echo "== S=$1 P=$2, 1 x $3"
    sed -n '/total device time/,$p' $OUT/prefill_s$1p$2_$3.txt | head -8
  done
elif [ "$part" = B ]; then
  cd benchmarks
  BMOJO_STATE_KERNELS=1 BMOJO_POINTWISE_KERNELS=1 timeout 150 python bench_model.py \
      --out $OUT/bench_model_prefill.json --models llama-sdpa,bmojo-matched \
      --measurements prefill_L2048,prefill_L8192,prefill_L32768 --time-budget 140 --row-timeout 60 \
      > $OUT/bench_model_prefill.log 2>&1
  grep -v -i warn $OUT/bench_model_prefill.log | grep "^|" | head -20
  for flag in 0 1; do
    BMOJO_STATE_KERNELS=$flag BMOJO_POINTWISE_KERNELS=$flag timeout 110 python bench_generate.py --reps 1 \
        --points 2048x1,2048x16 --models bmojo-eager --out $OUT/gen_eager_sp$flag.json 2>&1 \
        | grep -E "^bmojo-eager |rror" | cut -c1-200
  done
  for flag in 0 1; do
    BMOJO_POINTWISE_KERNELS=$flag timeout 90 python profile_train.py --model bmojo-matched --rows 30 \
        > $OUT/profile_train_p$flag.txt 2>&1
    echo "== eager train P=$flag"; sed -n '/by kind/,$p' $OUT/profile_train_p$flag.txt | head -10
  done
else
  cd benchmarks
  for conv in 0 1; do
    BMOJO_CONV_KERNEL=$conv timeout 90 python profile_train.py --model bmojo-matched --rows 30 \
        > $OUT/profile_train_conv$conv.txt 2>&1
    echo "== train conv kernel=$conv"; sed -n '/by kind/,$p' $OUT/profile_train_conv$conv.txt | head -10
  done
  timeout 60 python bench_conv.py --out $OUT/bench_conv.json 2>&1 | grep -v -i warn | tail -12
  timeout 100 python bench_ssd.py --batch 1 --heads 12 --lengths 32768 --sweep states \
      --out $OUT/bench_ssd_1x32k.json > $OUT/bench_ssd.log 2>&1
  timeout 60 python bench_ssd.py --batch 8 --heads 12 --lengths 2048 --sweep states \
      --out $OUT/bench_ssd_8x2k.json >> $OUT/bench_ssd.log 2>&1
  grep -E '^\{|^ms|triton|Error' $OUT/bench_ssd.log | head -60
fi
