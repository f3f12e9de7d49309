#!/bin/bash
# Device call (ninth session, 2026-12-03): issue 12's MQAR parity on Zoology's layout with 3 seeds for every
# row in one H200 run, HF rows beside ours; Mamba-2 also at lr 3e-3. 18 one-thread processes side by side.
# Before it, a profile of the compiled B'MOJO decode step (issue 10), which needs the machine to itself.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
(cd benchmarks && timeout 110 python profile_decode.py --batch 16 --context 2048 --rows 45) > $OUT/profile_decode.txt 2>&1
echo "profile rc=$?"; tail -4 $OUT/profile_decode.txt
out=$OUT/parity; mkdir -p $out
P="python -m bmojo.eval.parity --device cuda --layout zoology --schedule onecycle --seeds 0,1,2"
ROWS=hf-llama,full_attention,hf-mistral,sliding_attention,hf-mamba2,mamba2,bmojo,bmojo-f,bmojo-untied,bmojo-f-untied
timeout 465 $P --lr 1e-3 --workers 14 --time-limit 300 --rows $ROWS --out $out/lr1e-3 > $out/lr1e-3.log 2>&1 &
timeout 465 $P --lr 3e-3 --workers 4 --rows hf-mamba2,mamba2 --out $out/lr3e-3 > $out/lr3e-3.log 2>&1 &
wait
tail -3 $out/*.log
cat $out/*/parity.md
