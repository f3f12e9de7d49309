#!/bin/bash
# Device call (ninth session, 2026-12-03), one lease: issue 12's MQAR parity on Zoology's layout with 3 seeds per
# row, HF rows beside ours in the same run (SWA vs HF Mistral at lr 1e-3; Mamba-2 vs HF Mamba2 at lr 3e-3; the
# B'MOJO rows at lr 1e-3; HF Llama and our full attention have their 3 seeds in ../gpu/llama_3seeds), 18
# one-thread processes side by side, while the GPU tests of the fused eidetic decoding update run (correctness
# only). Then, on the quiet machine, generate() at 2k for bmojo-compiled and llama-static (issue 10).
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
out=$OUT/parity; mkdir -p $out
P="python -m bmojo.eval.parity --device cuda --layout zoology --schedule onecycle --seeds 0,1,2 --time-limit 150"
timeout 290 $P --lr 1e-3 --workers 12 --rows hf-mistral,sliding_attention,bmojo,bmojo-f --out $out/lr1e-3 \
    > $out/lr1e-3.log 2>&1 &
timeout 290 $P --lr 3e-3 --workers 6 --rows hf-mamba2,mamba2 --out $out/lr3e-3 > $out/lr3e-3.log 2>&1 &
timeout 200 python -m pytest -q -rfs -p no:cacheprovider --confcutdir=tests tests/test_kernels_eidetic.py \
    tests/test_gpu_model.py -k "eidetic or gpu_kernel or prefill_then_decode or generate_compiles" > $OUT/gpu_tests.log 2>&1
echo "gpu tests rc=$?"; grep -E "^FAILED|passed|failed|Error" $OUT/gpu_tests.log | tail -8
wait
tail -2 $out/*.log
cat $out/*/parity.md
cd benchmarks
timeout 250 python bench_generate.py --out $OUT/bench_generate.json --reps 1 --models bmojo-compiled,llama-static \
    --points 2048x1,2048x16 2>&1 | grep -v -i warn | tail -14
