#!/bin/bash
# Device call (ninth session, 2026-12-03): issue 12's MQAR parity on Zoology's layout with 3 seeds per row in one
# H200 run, HF rows beside ours: SWA vs HF Mistral, Mamba-2 vs HF Mamba2 (lr 1e-3 and 3e-3), and the B'MOJO rows
# tied and untied. (HF Llama and our full attention have their 3 seeds in ../gpu/llama_3seeds.) 16 one-thread
# processes side by side.
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
out=$OUT/parity; mkdir -p $out
P="python -m bmojo.eval.parity --device cuda --layout zoology --schedule onecycle --seeds 0,1,2"
ROWS=hf-mistral,sliding_attention,hf-mamba2,mamba2,bmojo,bmojo-f,bmojo-untied,bmojo-f-untied
timeout 470 $P --lr 1e-3 --workers 12 --time-limit 300 --rows $ROWS --out $out/lr1e-3 > $out/lr1e-3.log 2>&1 &
timeout 470 $P --lr 3e-3 --workers 4 --rows hf-mamba2,mamba2 --out $out/lr3e-3 > $out/lr3e-3.log 2>&1 &
wait
tail -3 $out/*.log
cat $out/*/parity.md
