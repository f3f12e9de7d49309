#!/bin/bash
# Issue 12's parity on one H200: which training recipe takes HF Llama off the MQAR plateau, and the rows
# at it. Three runs side by side, 16 one-thread processes in all (run from the repository root on the device).
source benchmarks/device_env.sh
out=/tmp/parity_out; mkdir -p $out
P="python -m bmojo.eval.parity --device cuda --seeds 0,1,2"
# (A) issue 12's first table's recipe: AdamW one-cycle at lr 1e-3 (PyTorch defaults, weight decay 0.01)
timeout 560 $P --workers 12 --schedule onecycle --weight-decay 0.01 --time-limit 330 \
  --rows hf-llama,full_attention,full_attention-untied,hf-mamba2,mamba2,mamba2-hf-init,bmojo-f,bmojo \
  --out $out/onecycle > $out/onecycle.log 2>&1 &
# (B) one-cycle with the parity runner's weight decay 0.1: one change against (A)
timeout 560 $P --workers 2 --schedule onecycle --rows hf-llama --time-limit 300 \
  --out $out/onecycle_wd01 > $out/onecycle_wd01.log 2>&1 &
# (C) the runner's cosine recipe at batch 256 on 100k sequences (DIAGNOSIS.md's proposal)
timeout 560 $P --workers 2 --batch-size 256 --num-train 100000 --rows hf-llama --time-limit 300 \
  --out $out/cosine_b256 > $out/cosine_b256.log 2>&1 &
wait
tail -n 30 $out/*/parity.md
[ -n "$OUT" ] && tar czf $OUT/parity_gpu2.tgz -C $out .
