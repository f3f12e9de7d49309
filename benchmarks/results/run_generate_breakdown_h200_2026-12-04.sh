#!/bin/bash
# Device call (fourteenth session, 2026-12-04): where a compiled generate() step's time goes, per step (host
# inside the compiled call, device, stop-check wait, rest of the loop), for B'MOJO and the compiled Llama,
# and B'MOJO again with dynamo's guards filtered (how much of the host time is guard evaluation).
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
cd benchmarks
run() { timeout 170 python profile_generate.py --rows 30 "$@" 2>&1 | grep -v -i warn; }
run --model bmojo-compiled > $OUT/gen_bmojo.txt; grep -E "per decode|per decoded" $OUT/gen_bmojo.txt
run --model llama-static > $OUT/gen_llama.txt; grep -E "per decode|per decoded" $OUT/gen_llama.txt
run --model bmojo-compiled --guard-filter keep_tensor_guards_unsafe > $OUT/gen_bmojo_tensorguards.txt
grep -E "per decode|per decoded|Error" $OUT/gen_bmojo_tensorguards.txt
run --model bmojo-compiled --guard-filter skip_all_guards_unsafe > $OUT/gen_bmojo_noguards.txt
grep -E "per decode|per decoded|Error" $OUT/gen_bmojo_noguards.txt
