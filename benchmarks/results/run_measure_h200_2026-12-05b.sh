#!/bin/bash
# Twentieth session (2026-12-05), one device call: after the state and pointwise kernels became the default.
#   1. the GPU tests of the state kernels, with the new gather backward (bench sizes, bf16), and the model's
#      GPU tests (op bodies called directly in eager calls without autograd: kernels/custom_ops.py EagerBody);
#   2. one eager training step of bmojo-matched (8 x 2048) profiled with BMOJO_STATE_KERNELS=0 and 1 (the
#      store gather: aten gather + scatter_add against one Triton launch each way);
#   3. eager generate() at 2k x 1 and 2k x 16, HF Llama eager and bmojo eager in the same run;
#   4. the SSD kernel's configs at the training shape (8 x 2048, 12 heads): state walk, forward, backward.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_kernels_state.py tests/test_gpu_model.py \
    -k "gpu or selection" 2>&1 | tail -3
cd benchmarks
timeout 45 python profile_train.py --prefill --model bmojo-matched --batch 1 --length 2048 --rows 30 \
    > $OUT/prefill_2048.txt 2>&1
echo "== prefill 1 x 2048"; sed -n '/total device time/,$p' $OUT/prefill_2048.txt | head -3
for s in 0 1; do
  BMOJO_STATE_KERNELS=$s timeout 80 python profile_train.py --model bmojo-matched --rows 30 \
      > $OUT/profile_train_s$s.txt 2>&1
  echo "== eager train S=$s"; sed -n '/by kind/,$p' $OUT/profile_train_s$s.txt | grep -E "total|wall|other|kernels per"
done
timeout 130 python bench_generate.py --reps 1 --points 2048x1,2048x16 --models llama-eager,bmojo-eager \
    --out $OUT/gen_eager.json 2>&1 | grep -E "^(llama|bmojo)-eager |rror|x " | cut -c1-220
timeout 110 python bench_ssd.py --batch 8 --heads 12 --lengths 2048 --sweep \
    --out $OUT/bench_ssd_8x2k.json > $OUT/bench_ssd.log 2>&1
grep -E '^\{|triton|Error' $OUT/bench_ssd.log | head -40
