"""Model-level benchmark (issue 11): B'MOJO against HF Llama (SDPA) and Mistral (window 512) of the same
width, eager and under `torch.compile(model)`, in ONE run on one device.

Rows, each in a process of its own (benchmarks/isolated.py), in this order so that what the issue's
targets need runs first and the 162M `bmojo` last:
  llama-sdpa, llama-sdpa+compile, mistral-swa512, bmojo-matched, bmojo-matched+compile,
  mistral-swa512+compile, bmojo, bmojo+compile
`+compile` is `torch.compile(model, dynamic=False)`: the default backend (Inductor), no fullgraph, no
CUDA graphs; HF Trainer's `torch_compile=True` compiles the model module the same way, and a training
run with fixed-length batches sees one shape, so static shapes are what it compiles too. Each
measurement starts from `torch._dynamo.reset()`, so its first call is its whole compile time.
B'MOJO uses its default `use_kernels="auto"`: the Triton kernels on CUDA, the PyTorch reference on CPU.

Measurements per row (bf16 weights on CUDA):
  train_B8_L2048, train_B2_L8192  training steps (loss, backward, fused AdamW): tokens/s over timed steps
                                  (CUDA events) after warm-up steps; the first step's seconds (compile);
                                  peak memory (max_memory_allocated since a reset, GiB)
  prefill_L2048/8192/32768        batch 1, no_grad, use_cache=True, logits_to_keep=1: seconds per call
Decoding speed: benchmarks/bench_generate.py.

Failures are per measurement (the JSON says what failed); a row that runs past its time-out is killed
and keeps the measurements it finished; rows that cannot start within --time-budget are skipped.
Usage (GPU): python benchmarks/bench_model.py --out $OUT/bench_model.json [--time-budget 480]
Check every code path on CPU (tiny widths, a couple of steps): python benchmarks/bench_model.py --dry-run
"""

import argparse
import datetime
import gc
import json
import os
import sys
import time
import traceback

import torch
import transformers
from torch._dynamo.utils import counters
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

import bmojo
from isolated import row_in_child, save

WIDTH = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
             num_key_value_heads=12, vocab_size=32000)
# B'MOJO at the same width carries a Mamba-2 mixer on top of attention and MLP (162M parameters at
# d=768); "bmojo-matched" narrows the SSM (expand 1) and the MLP (1024) to Llama's ~110M parameters.
MATCHED = dict(WIDTH, ssm_expand=1, intermediate_size=1024)
ROWS = ("llama-sdpa", "llama-sdpa+compile", "mistral-swa512", "bmojo-matched", "bmojo-matched+compile",
        "mistral-swa512+compile", "bmojo", "bmojo+compile")


class Setup:
    """Sizes and step counts: the real benchmark, or --dry-run's tiny CPU version of every path."""

    def __init__(self, dry_run, measurements=None):
        self.dry_run = dry_run
        self.device = "cpu" if dry_run else "cuda"
        self.dtype = torch.float32 if dry_run else torch.bfloat16
        if dry_run:  # windows shorter than the sequences, so that every mixer path runs
            self.width = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4, vocab_size=256)
            self.matched = dict(self.width, ssm_expand=1, intermediate_size=64)
            self.bmojo_extra = dict(window_size=16, eidetic_tokens_per_chunk=4, eidetic_capacity=16,
                                    ssm_chunk_size=16)
            self.mistral_window = 32
            self.train_shapes, self.prefill_lengths = ((2, 64), (1, 128)), (64, 128, 256)
            self.warmup_steps, self.timed_steps, self.prefill_warmup, self.prefill_reps = 2, 1, 1, 1
        else:
            self.width, self.matched, self.bmojo_extra, self.mistral_window = WIDTH, MATCHED, {}, 512
            self.train_shapes, self.prefill_lengths = ((8, 2048), (2, 8192)), (2048, 8192, 32768)
            self.warmup_steps, self.timed_steps, self.prefill_warmup, self.prefill_reps = 3, 5, 2, 3
        if measurements:  # a subset: keep the shapes whose measurement is named
            known = self.measurement_names()
            wanted = measurements.split(",")
            if any(m not in known for m in wanted):
                raise ValueError(f"--measurements must name among {known}, got {wanted}")
            self.train_shapes = tuple(s for s in self.train_shapes if f"train_B{s[0]}_L{s[1]}" in wanted)
            self.prefill_lengths = tuple(n for n in self.prefill_lengths if f"prefill_L{n}" in wanted)

    def measurement_names(self):
        return ([f"train_B{b}_L{length}" for b, length in self.train_shapes]
                + [f"prefill_L{length}" for length in self.prefill_lengths])

    def describe(self):
        return {"width": self.width, "matched_width": self.matched, "bmojo_overrides": self.bmojo_extra,
                "mistral_window": self.mistral_window, "dtype": str(self.dtype), "device": self.device,
                "train_shapes": self.train_shapes, "prefill_lengths": self.prefill_lengths,
                "warmup_steps": self.warmup_steps, "timed_steps": self.timed_steps,
                "prefill_warmup": self.prefill_warmup, "prefill_reps": self.prefill_reps}


def build(name, setup=None):
    """The model of a row name (`+compile` is ignored here: compiling is the caller's business)."""
    setup = setup or Setup(dry_run=False)
    base = name.removesuffix("+compile")
    if base == "bmojo":
        return bmojo.BMojoForCausalLM(bmojo.preset_config("bmojo-130m", **setup.width, **setup.bmojo_extra))
    if base == "bmojo-matched":
        return bmojo.BMojoForCausalLM(bmojo.preset_config("bmojo-130m", **setup.matched, **setup.bmojo_extra))
    if base == "llama-sdpa":
        return LlamaForCausalLM(LlamaConfig(**setup.width, attn_implementation="sdpa",
                                            tie_word_embeddings=True))
    if base == "mistral-swa512":
        return MistralForCausalLM(MistralConfig(**setup.width, sliding_window=setup.mistral_window,
                                                attn_implementation="sdpa", tie_word_embeddings=True))
    raise ValueError(f"model must be one of {ROWS}, got {name!r}")


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, warmup, reps, device):
    """(seconds of the first call, which compiles under torch.compile; mean seconds per call of `reps`
    calls after `warmup` calls in all, timed with CUDA events on CUDA)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    sync(device)
    if device != "cuda":
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return first, (time.perf_counter() - start) / reps
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return first, begin.elapsed_time(end) / 1000 / reps


def reset_memory(device):
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device):
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else None


def train(model, setup, batch, length):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=setup.device == "cuda")
    ids = torch.randint(0, setup.width["vocab_size"], (batch, length), device=setup.device)

    losses = []

    def step():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not losses:
            losses.append(loss.detach())

    reset_memory(setup.device)
    try:
        first, seconds = timed(step, setup.warmup_steps, setup.timed_steps, setup.device)
        # same seed, weights and batch in a row and its +compile twin: their first losses must agree
        return {"tokens_per_s": batch * length / seconds, "peak_gib": peak_gib(setup.device),
                "first_step_s": round(first, 2), "step_s": seconds, "first_loss": float(losses[0])}
    finally:
        opt.zero_grad(set_to_none=True)  # gradients go before the next measurement (the state with `opt`)


@torch.no_grad()
def prefill(model, setup, length):
    model.eval()
    ids = torch.randint(0, setup.width["vocab_size"], (1, length), device=setup.device)
    reset_memory(setup.device)
    first, seconds = timed(lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1),
                           setup.prefill_warmup, setup.prefill_reps, setup.device)
    return {"seconds": seconds, "first_call_s": round(first, 2), "peak_gib": peak_gib(setup.device)}


def guarded(fn, *args):
    """The measurement, or a string saying why it failed (the run goes on)."""
    try:
        return fn(*args)
    except torch.OutOfMemoryError as err:
        return f"OOM: {str(err).splitlines()[0][:160]}"
    except Exception as err:  # report, don't hide: the JSON says what failed, stderr has the traceback
        traceback.print_exc()
        return f"{type(err).__name__}: {str(err)[:300]}"
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def write_atomically(obj, path):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)  # a child killed mid-write leaves the previous row intact


def measure(name, setup, row_file):
    """One row, in a process of its own (see main). The row file is rewritten after each measurement, so
    that a row killed at its time-out still reports what it finished."""
    torch.manual_seed(0)
    model = build(name, setup).to(setup.device, setup.dtype)
    row = {"params": sum(p.numel() for p in model.parameters())}
    compiled = name.endswith("+compile")
    if compiled:
        for limit in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, 64)
        model = torch.compile(model, dynamic=False)
    t0 = time.time()
    jobs = [(f"train_B{b}_L{length}", train, (b, length)) for b, length in setup.train_shapes]
    jobs += [(f"prefill_L{length}", prefill, (length,)) for length in setup.prefill_lengths]
    for key, fn, args in jobs:
        if compiled:
            torch._dynamo.reset()  # the first call of every measurement is its whole compile
            counters.clear()
        row[key] = guarded(fn, model, setup, *args)
        if compiled and isinstance(row[key], dict):  # graph breaks cost speed: say how many, and why
            breaks = counters["graph_break"]
            row[key].update(graphs=counters["stats"]["unique_graphs"], graph_breaks=sum(breaks.values()),
                            graph_break_reasons=[reason[:160] for reason in list(breaks)[:3]])
        row["wall_s"] = round(time.time() - t0, 1)
        print(f"  {name} {key}: {json.dumps(row[key])}", flush=True)
        write_atomically(row, row_file)
    return row


# --- the parent: rows, ratios, targets, tables ---------------------------------------------------------

def number(row, key, field):
    value = row.get(key) if isinstance(row, dict) else None
    value = value.get(field) if isinstance(value, dict) else None
    return value if isinstance(value, (int, float)) else None


FIELDS = (("tokens_per_s", max), ("peak_gib", min), ("seconds", min))  # what "better" means for each field


def best_row(rows, names):
    """Per measurement and field, the better of the named rows' values (and which row it came from)."""
    best = {}
    for key in {k for n in names for k, v in rows.get(n, {}).items() if isinstance(v, dict)}:
        best[key] = {}
        for field, better in FIELDS:
            found = [(number(rows.get(n, {}), key, field), n) for n in names]
            found = [(v, n) for v, n in found if v is not None]
            if found:
                value, source = better(found, key=lambda vn: vn[0])
                best[key][field], best[key][field + "_from"] = value, source
    return best


def ratio_columns(setup):
    """(column, measurement key, field): training tokens/s (ours / theirs: higher is better), peak memory
    and prefill time (ours / theirs: lower is better)."""
    cols = [(f"train tok/s {b}x{n}", f"train_B{b}_L{n}", "tokens_per_s") for b, n in setup.train_shapes]
    cols += [(f"train peak mem {b}x{n}", f"train_B{b}_L{n}", "peak_gib") for b, n in setup.train_shapes]
    cols += [(f"prefill time {n}", f"prefill_L{n}", "seconds") for n in setup.prefill_lengths]
    return cols


def ratios(ours, theirs, setup):
    out = {}
    for column, key, field in ratio_columns(setup):
        a, b = number(ours, key, field), number(theirs, key, field)
        out[column] = round(a / b, 3) if a is not None and b else None
    return out


def comparisons(rows):
    """The pairs the ratios are reported for: every bmojo row against Llama eager and compiled, and the
    best of bmojo-matched's two rows against the best of Llama's two."""
    pairs = {f"{ours} vs {base}": (rows[ours], rows[base])
             for ours in rows if ours.startswith("bmojo") for base in ("llama-sdpa", "llama-sdpa+compile")
             if base in rows}
    pairs["bmojo-matched (best) vs llama-sdpa (best)"] = (
        best_row(rows, ("bmojo-matched", "bmojo-matched+compile")),
        best_row(rows, ("llama-sdpa", "llama-sdpa+compile")))
    return pairs


COMPARE = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__}


def targets(all_ratios, setup):
    """Issue 11's targets for bmojo-matched: eager vs eager, compiled vs compiled, best vs best."""
    # by length, not by position in the measured list (a run of 2 x 8192 alone still needs 1.5x):
    # training 1.0x Llama's tokens/s up to 2k and 1.5x beyond; prefill 1.2x Llama's time up to 2k, and
    # faster than Llama beyond
    checks = [(f"train tok/s {b}x{n}", ">=", 1.0 if n <= 2048 else 1.5) for b, n in setup.train_shapes]
    checks += [(f"prefill time {n}", "<=" if n <= 2048 else "<", 1.2 if n <= 2048 else 1.0)
               for n in setup.prefill_lengths]
    checks += [(f"train peak mem {b}x{length}", "<=", 1.0) for b, length in setup.train_shapes]
    out = []
    for pair in ("bmojo-matched vs llama-sdpa", "bmojo-matched+compile vs llama-sdpa+compile",
                 "bmojo-matched (best) vs llama-sdpa (best)"):
        for column, op, bound in checks:
            value = all_ratios.get(pair, {}).get(column)
            met = None if value is None else COMPARE[op](value, bound)
            out.append({"comparison": pair, "target": f"{column} ratio {op} {bound}", "ratio": value,
                        "status": "unknown (not measured)" if met is None else "met" if met else "missed"})
    return out


def fmt(value, digits=3):
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.{digits}g}"


def markdown(results, setup):
    rows, lines = results["rows"], []
    cols = [(f"train tok/s {b}x{n}", f"train_B{b}_L{n}", "tokens_per_s") for b, n in setup.train_shapes]
    cols += [(f"peak GiB {b}x{n}", f"train_B{b}_L{n}", "peak_gib") for b, n in setup.train_shapes]
    cols += [(f"1st step s {b}x{n}", f"train_B{b}_L{n}", "first_step_s") for b, n in setup.train_shapes]
    cols += [(f"prefill s {n}", f"prefill_L{n}", "seconds") for n in setup.prefill_lengths]
    cols += [(f"prefill 1st call s {n}", f"prefill_L{n}", "first_call_s") for n in setup.prefill_lengths]
    lines += ["| row | params (M) | " + " | ".join(c for c, _, _ in cols) + " |",
              "|---" * (len(cols) + 2) + "|"]
    for name, row in rows.items():
        cells = [fmt(number(row, k, f)) if number(row, k, f) is not None
                 else ("fail" if isinstance(row.get(k), str) else "-") for _, k, f in cols]
        params = f"{row['params'] / 1e6:.1f}" if "params" in row else "-"
        lines.append(f"| {name} | {params} | " + " | ".join(cells) + " |")
    # what failed, each once: a row's own error, its measurements' errors, skipped rows
    failures = [(n, k, v) for n, r in rows.items() for k, v in r.items() if isinstance(v, str)]
    lines += [""] + [f"- {n} {k}: {v}" for n, k, v in failures]
    ratio_cols = [c for c, _, _ in ratio_columns(setup)]
    lines += ["", "Ratios ours / theirs (training tok/s: higher is better; memory, prefill time: lower is "
              "better)", "", "| comparison | " + " | ".join(ratio_cols) + " |",
              "|---" * (len(ratio_cols) + 1) + "|"]
    for pair, values in results["ratios"].items():
        lines.append(f"| {pair} | " + " | ".join(fmt(values.get(c)) for c in ratio_cols) + " |")
    lines += ["", "Targets of issue 11 (bmojo-matched)", "",
              "| comparison | target | ratio | |", "|---|---|---|---|"]
    lines += [f"| {t['comparison']} | {t['target']} | {fmt(t['ratio'])} | {t['status']} |"
              for t in results["targets"]]
    return "\n".join(lines)


def versions():
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version, "transformers": transformers.__version__}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_model.json")
    parser.add_argument("--models", default=",".join(ROWS), help="rows to run, in this order")
    parser.add_argument("--time-budget", type=float, default=480.0,
                        help="seconds for the whole run: rows that cannot start in time are skipped")
    parser.add_argument("--row-timeout", type=float, default=240.0, help="seconds one row may take at most")
    parser.add_argument("--dry-run", action="store_true", help="tiny widths on CPU: checks every code path")
    parser.add_argument("--measurements", default=None,
                        help="comma-separated subset of the measurements (e.g. train_B8_L2048,prefill_L2048)")
    args = parser.parse_args()
    setup = Setup(args.dry_run, args.measurements)
    names = args.models.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise ValueError(f"--models must name rows among {ROWS}, got {unknown}")
    if len(names) == 1 and args.out.endswith(".row"):  # the child process: measure and write one row
        measure(names[0], setup, args.out)
        return
    start = time.time()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    device = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name()
    results = {"date": datetime.date.today().isoformat(), "device": device, **versions(),
               "setup": setup.describe(), "time_budget_s": args.time_budget, "rows": {}}
    for name in names:
        left = args.time_budget - (time.time() - start)
        if left < 30:  # too little time for even an eager row
            results["rows"][name] = {"skipped": f"time budget: {left:.0f} s of {args.time_budget:.0f} s left"}
        else:
            print(f"{name}: starting, {left:.0f} s of the budget left", flush=True)
            t0 = time.time()
            extra = (["--dry-run"] if args.dry_run else []) + (
                ["--measurements", args.measurements] if args.measurements else [])
            row = row_in_child(__file__, name, args.out, extra, timeout=min(args.row_timeout, left))
            for key in setup.measurement_names():  # killed or crashed rows: say what is missing, and why
                if key not in row:
                    row[key] = f"not measured: {row.get('error', 'missing')}"
            row["row_s"] = round(time.time() - t0, 1)
            results["rows"][name] = row
        print(name, json.dumps(results["rows"][name]), flush=True)
        save(results, args.out)
    results["ratios"] = {pair: ratios(ours, theirs, setup)
                         for pair, (ours, theirs) in comparisons(results["rows"]).items()}
    results["targets"] = targets(results["ratios"], setup)
    results["total_s"] = round(time.time() - start, 1)
    table = markdown(results, setup)
    print("\n" + table + f"\n\ntotal {results['total_s']} s", flush=True)
    save(results, args.out)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
