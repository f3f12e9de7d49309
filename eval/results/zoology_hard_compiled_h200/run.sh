#!/bin/bash
# The compiled hard-end MQAR run (issue 13), one device call per invocation, from the repository root:
#     bash eval/results/zoology_hard_compiled_h200/run.sh CALL TIME_LIMIT [RESUME_JSON]
# CALL names the log; TIME_LIMIT is the zoology CLI's --time-limit (no job starts after it, running ones
# finish); RESUME_JSON continues a previous call's results.json. Writes $OUT/z/ and $OUT/callCALL.log.
set -u
source benchmarks/device_env.sh
# 16 processes compile at once on 16 cores: two Inductor compile threads each
export TORCHINDUCTOR_COMPILE_THREADS=2
mkdir -p "$OUT/z"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
python -m bmojo.eval.zoology --device cuda --workers 16 --compile inductor \
    --seq-len 256 --pairs 32 --batch-size 256 --num-train 100000 --steps 4000 \
    --rows bmojo,bmojo-f,mamba2,sliding_attention,hybrid,hf-mamba2,mamba2-hf-like --budgets 8192 \
    --unbudgeted-rows full_attention,hf-llama --ablation bmojo-me0 \
    --lrs 3e-4,1e-3,3e-3,1e-2 --seeds 0,1,2 --time-limit "$2" ${3:+--resume "$3"} --out "$OUT/z" \
    > "$OUT/call$1.log" 2>&1
echo "zoology exit $?"
tail -n 25 "$OUT/call$1.log"
