"""Training-step time of the tiny MQAR models, eager against torch.compile, alone and side by side.

    python benchmarks/bench_mqar_step.py --rows bmojo,full_attention --compile ,inductor --procs 1,16

The Zoology sweeps (`bmojo.eval.zoology`) train many 2-layer width-64 models at once, one process each. Such
a model's step is hundreds of kernels of a few microseconds, so the GPU's time goes to launches, not
arithmetic. This times the sweep's own loop (`mqar.train`: bf16 autocast, AdamW, clipping) for every row and
backend: `--warm` steps first (the compile, when there is one), then `--steps` timed steps. With `--procs K`,
K identical processes of one thread run at once, as `--workers K` runs jobs; their mean step time over K is
the aggregate rate of the device. Writes JSON (date, device, per-step ms, steps/s) and prints a table.
"""

import argparse
import datetime
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import torch

from bmojo.eval import mqar, parity


def time_row(row, backend, setting, warm, steps, device="cuda"):
    """(first call s, ms per step) of `warm` then `steps` training steps of `row` (one process)."""
    torch.manual_seed(0)
    task = replace(parity.mqar_task(setting), num_train=max(4096, setting.batch_size), num_test=1)
    train_data = {k: v.to(device) for k, v in mqar.make_splits(task)[0].items()}
    model = parity.build_model(row, setting)[0].to(device)
    args = mqar.TrainArgs(steps=warm, batch_size=setting.batch_size, lr=setting.lr, schedule="onecycle",
                          compile=backend, progress=False, bf16=torch.device(device).type == "cuda")
    start = time.perf_counter()
    mqar.train(model, train_data, args)  # returns the losses as floats: the device is done when it returns
    first = time.perf_counter() - start
    start = time.perf_counter()
    mqar.train(model, train_data, replace(args, steps=steps))  # reuses the first call's compiled graph
    return first, 1000 * (time.perf_counter() - start) / steps


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="bmojo,full_attention,mamba2-hf-like,hf-llama")
    p.add_argument("--compile", default=",inductor", help="comma-separated backends ('' is eager)")
    p.add_argument("--procs", default="1", help="comma-separated process counts run side by side")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--state-budget", type=int, default=8192)
    p.add_argument("--warm", type=int, default=20)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="bench_mqar_step.json")
    ns = p.parse_args()
    setting = replace(parity.ParitySetting(), seq_len=ns.seq_len, num_pairs=ns.pairs,
                      state_budget=ns.state_budget)
    records = []
    for procs in (int(x) for x in ns.procs.split(",")):
        for row in ns.rows.split(","):
            for backend in ns.compile.split(","):
                with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=mqar._worker_init) as pool:
                    futures = [pool.submit(time_row, row, backend, setting, ns.warm, ns.steps, ns.device)
                               for _ in range(procs)]
                    try:
                        timings = [f.result() for f in futures]
                        error = None
                    except Exception as err:  # a failing backend is a result, the next row still runs
                        timings, error = [], f"{type(err).__name__}: {err}"[:500]
                ms = sum(t[1] for t in timings) / len(timings) if timings else None
                rec = dict(row=row, compile=backend or "eager", procs=procs, error=error,
                           first_call_s=max((t[0] for t in timings), default=None), ms_per_step=ms,
                           steps_per_s=procs * 1000 / ms if ms else None)
                records.append(rec)
                what = error or (f"first {rec['first_call_s']:.1f} s, {ms:.2f} ms/step, "
                                 f"{rec['steps_per_s']:.0f} steps/s")
                print(f"{row:>16} {rec['compile']:>9} x{procs:<3}", what, flush=True)
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                torch=torch.__version__, setting=vars(ns), records=records)
    with open(ns.out, "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
