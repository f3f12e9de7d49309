#!/bin/bash
# Issue 12, second H200 call: is HF Mamba2's lead over our Mamba-2 family its initial weights? And does a 3x
# longer budget take HF Llama and its twin off the plateau? 16 one-thread processes (run from the repo root).
source benchmarks/device_env.sh
out=/tmp/parity_out2; mkdir -p $out
P="python -m bmojo.eval.parity --device cuda --seeds 0,1,2"
# (D) the first GPU run's recipe (cosine, wd 0.1, batch 64, 3,000 steps): HF Mamba2, HF's initial weights
# converted into our family, our family with HF's initial distribution, and with it minus out_proj's;
# B'MOJO and B'MOJO-F with HF Mamba2's initialisation (second wave)
timeout 520 $P --workers 12 --time-limit 240 --rows hf-mamba2,mamba2-from-hf,mamba2-hf-exact,mamba2-hf-init,bmojo-f-hf-init,bmojo-hf-init \
  --out $out/mamba2_init > $out/mamba2_init.log 2>&1 &
# (E) 9,000 steps of batch 64 on 60k sequences (each still seen ~9.6 times): HF Llama and our twin of it
timeout 520 python -m bmojo.eval.parity --device cuda --seeds 0,1 --workers 4 --steps 9000 --num-train 60000 \
  --rows hf-llama,full_attention-untied --time-limit 60 --out $out/steps9k > $out/steps9k.log 2>&1 &
wait
tail -n 12 $out/*/parity.md
[ -n "$OUT" ] && tar czf $OUT/parity_gpu2b.tgz -C $out .
