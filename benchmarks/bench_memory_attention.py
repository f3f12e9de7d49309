"""Forward + backward time of B'MOJO memory attention: the fused Triton kernel against baselines.

    python benchmarks/bench_memory_attention.py [--out results.json] [--lengths 2048 8192]
    python benchmarks/bench_memory_attention.py --decode [--batches 1 16] [--out decode.json]

Shapes (the paper's layer): B=8, H=Hkv=12, D=64, w=512, n_f=512, M=64 eidetic tokens a chunk, bf16.
Baselines, all from the same run:
  - reference   the PyTorch chunked reference the model runs without kernels (memory_attention_chunked)
  - sdpa        scaled_dot_product_attention(is_causal=True) over all T keys (a plain Transformer layer)
  - flex_swa    flex_attention with a 512 sliding window (window band only: a lower bound on the work)
  - flex_2pass  B'MOJO-F as its authors run it: window pass + fading ("hollow window") pass, merged by
                log-sum-exp; compared with the kernel at M = 0
  - flex_3pass  the same plus a third pass over the eidetic set (q_raw), merged likewise; vs kernel at M=64
Times are medians of CUDA-event timings after warm-up, in ms. Writes JSON (date, device, numbers).

--decode: the single-token step's attention (kernels/memory_attention/decode.py) as one decode step reads
it: window ring w=512 (full), fading ring w + n_f = 1024 slots of which n_f = 512 are valid (the band),
eidetic store of 512 (all valid, scored with the raw query), B in --batches, H=Hkv=12, D=64, bf16.
  - reference_compiled  decode_attention_reference under torch.compile (what the compiled step ran before)
  - triton              the bmojo::decode_attention op (launcher's default config), and a split sweep
  with --sweep also every [BLOCK_N, splits, warps, stages, MODE, SKIP_MASKED] of DECODE_SWEEP (MODE 0:
  fp32 broadcasts, 2: tensor-core dots on the bf16 operands; SKIP_MASKED 0: masked keys read anyway), and
  the fastest config of each batch is printed
Each is captured in a CUDA graph (as generate()'s compiled step is) and timed per call on the device, in
us; GB/s counts the bytes that must be read (valid keys and values, queries, masks) and written.
"""

import argparse
import datetime
import json
import statistics
import traceback

import torch

from bmojo.kernels.memory_attention.decode import decode_attention_triton
from bmojo.kernels.memory_attention.naive import decode_attention_reference, memory_attention_chunked
from bmojo.kernels.memory_attention.parallel import memory_attention_triton

B, H, D, W, NF, M = 8, 12, 64, 512, 512, 64


def time_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), (max(times) - min(times))


def make_inputs(T, m, dtype=torch.bfloat16):
    nc = -(-T // W)

    def rnd(*shape):
        return torch.randn(*shape, device="cuda", dtype=dtype).requires_grad_()

    return dict(q_rot=rnd(B, T, H, D), k=rnd(B, T, H, D), v=rnd(B, T, H, D), window=W, q_raw=rnd(B, T, H, D),
                fading_keys=rnd(B, T, H, D), fading_values=rnd(B, T, H, D), fading_tokens=NF,
                eidetic_keys=rnd(B, nc, m, H, D), eidetic_values=rnd(B, nc, m, H, D),
                eidetic_valid=torch.rand(B, nc, m, device="cuda") < 0.9)


def fwd_bwd(fn, args):
    """Returns (forward-only closure, forward+backward closure)."""
    tensors = [x for x in args.values() if torch.is_tensor(x) and x.requires_grad]
    do = torch.randn_like(args["q_rot"])

    def fwd():
        with torch.no_grad():
            fn(**args)

    def both():
        for t in tensors:
            t.grad = None
        fn(**args).backward(do)

    return fwd, both


# ---------------------------------------------------------------- flex_attention baselines

def build_flex(T, args):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    # each length / mask set is a new graph: past dynamo's default limit of 8, flex would fall back to
    # its eager (scores-materialising) path and time that instead
    torch._dynamo.config.recompile_limit = 512
    torch._dynamo.config.accumulated_recompile_limit = 4096
    flex = torch.compile(flex_attention, dynamic=False)
    m = args["eidetic_keys"].shape[2]
    nc = args["eidetic_keys"].shape[1]
    valid = args["eidetic_valid"].reshape(B, nc * max(m, 1)) if m else None

    def window_mask(b, h, q, kv):
        return (kv <= q) & (kv > q - W)

    def fading_mask(b, h, q, kv):
        return (kv <= q - W) & (kv > q - W - NF)

    def eidetic_mask(b, h, q, kv):
        return ((kv // m) == (q // W)) & valid[b, kv]

    bm_win = create_block_mask(window_mask, None, None, T, T, device="cuda")
    bm_fad = create_block_mask(fading_mask, None, None, T, T, device="cuda")
    bm_eid = create_block_mask(eidetic_mask, B, None, T, nc * m, device="cuda") if m else None

    def t(x):  # (B, T, H, D) -> (B, H, T, D)
        return x.transpose(1, 2)

    def swa(q_rot, k, v, **_):
        return t(flex(t(q_rot), t(k), t(v), block_mask=bm_win))

    def multipass(q_rot, k, v, window, q_raw, fading_keys, fading_values, fading_tokens,
                  eidetic_keys, eidetic_values, eidetic_valid):
        outs = [flex(t(q_rot), t(k), t(v), block_mask=bm_win, return_lse=True)]
        # the fading pass: rows t < w have no key; flex returns o = 0, lse = -inf there
        outs.append(flex(t(q_rot), t(fading_keys), t(fading_values), block_mask=bm_fad, return_lse=True))
        if bm_eid is not None:
            ek = eidetic_keys.reshape(B, nc * m, H, D)
            ev = eidetic_values.reshape(B, nc * m, H, D)
            outs.append(flex(t(q_raw), t(ek), t(ev), block_mask=bm_eid, return_lse=True))
        lses = torch.stack([lse for _, lse in outs])  # (P, B, H, T)
        lse = torch.logsumexp(lses, dim=0)
        weights = torch.exp(lses - lse).nan_to_num(0.0)  # -inf - (-inf) cannot happen: window never empty
        o = sum(wt[..., None] * o.float() for wt, (o, _) in zip(weights, outs))
        return t(o.to(q_rot.dtype))

    return swa, multipass


def sdpa(q_rot, k, v, **_):
    o = torch.nn.functional.scaled_dot_product_attention(q_rot.transpose(1, 2), k.transpose(1, 2),
                                                         v.transpose(1, 2), is_causal=True)
    return o.transpose(1, 2)


def useful_flops(T, m):
    """fwd FLOPs over the keys each query really attends (2 matmuls of 2*D per key); bwd is 2.5x."""
    keys = 0
    for t_ in range(T):
        keys += min(t_ + 1, W) + max(0, min(t_ - W + 1, NF)) + m
    return 4 * D * keys * B * H


def run_length(T, results, configs):
    row = {}
    for m in (M, 0):
        args = make_inputs(T, m)
        kern = lambda **a: memory_attention_triton(**a)  # noqa: E731
        f, fb = fwd_bwd(kern, args)
        row[f"fused_M{m}"] = dict(zip(("fwd_ms", "fwd_spread"), time_ms(f)))
        row[f"fused_M{m}"].update(zip(("fwdbwd_ms", "fwdbwd_spread"), time_ms(fb)))
        fl = useful_flops(T, m)
        row[f"fused_M{m}"]["fwd_tflops_useful"] = fl / row[f"fused_M{m}"]["fwd_ms"] / 1e9
        row[f"fused_M{m}"]["fwdbwd_tflops_useful"] = 3.5 * fl / row[f"fused_M{m}"]["fwdbwd_ms"] / 1e9
        try:
            swa, multipass = build_flex(T, args)
            name = "flex_3pass" if m else "flex_2pass"
            f, fb = fwd_bwd(multipass, args)
            row[name] = dict(zip(("fwd_ms", "fwd_spread"), time_ms(f)))
            row[name].update(zip(("fwdbwd_ms", "fwdbwd_spread"), time_ms(fb)))
            # the multi-pass form must be the same function: check it against the kernel once
            with torch.no_grad():
                ref = kern(**args).float()
                row[name]["rel_err_vs_fused"] = ((multipass(**args).float() - ref).norm() / ref.norm()).item()
            if m:
                f, fb = fwd_bwd(swa, args)
                row["flex_swa"] = dict(zip(("fwd_ms", "fwd_spread"), time_ms(f)))
                row["flex_swa"].update(zip(("fwdbwd_ms", "fwdbwd_spread"), time_ms(fb)))
        except Exception as exc:  # record, don't stop the run
            row["flex_error" + ("" if m else "_M0")] = repr(exc)[:2000]
            traceback.print_exc()
        torch.cuda.empty_cache()
        if m:
            f, fb = fwd_bwd(sdpa, args)
            row["sdpa_causal"] = dict(zip(("fwd_ms", "fwd_spread"), time_ms(f)))
            row["sdpa_causal"].update(zip(("fwdbwd_ms", "fwdbwd_spread"), time_ms(fb)))
            try:
                f, fb = fwd_bwd(memory_attention_chunked, args)
                row["reference"] = dict(zip(("fwd_ms", "fwd_spread"), time_ms(f, 1, 3)))
                row["reference"].update(zip(("fwdbwd_ms", "fwdbwd_spread"), time_ms(fb, 1, 3)))
            except torch.cuda.OutOfMemoryError as exc:
                row["reference_error"] = repr(exc)[:300]
            torch.cuda.empty_cache()
        del args
        torch.cuda.empty_cache()
    results[str(T)] = row


def sweep_configs(T):
    """Tile configs of the kernel at one length: forward and backward timed separately."""
    args = make_inputs(T, M)
    out = {}
    fwd_cfgs = [(128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2), (128, 32, 4, 3)]
    bwd_cfgs = [(64, 64, 4, 3), (64, 64, 4, 2), (128, 64, 8, 2), (64, 128, 8, 2)]
    base = dict(fwd=(128, 64, 8, 3), dq=(64, 64, 4, 3), dkv=(64, 64, 4, 3))
    for cfg in fwd_cfgs:
        try:
            f, _ = fwd_bwd(lambda **a: memory_attention_triton(**a, _config={**base, "fwd": cfg}), args)
            out[f"fwd{cfg}"] = time_ms(f)[0]
        except Exception as exc:
            out[f"fwd{cfg}"] = repr(exc)[:200]
    for cfg in bwd_cfgs:
        try:
            conf = {**base, "dq": cfg, "dkv": cfg}
            _, fb = fwd_bwd(lambda **a: memory_attention_triton(**a, _config=conf), args)
            out[f"fwdbwd{cfg}"] = time_ms(fb)[0]
        except Exception as exc:
            out[f"fwdbwd{cfg}"] = repr(exc)[:200]
    return out


# ---------------------------------------------------------------- decoding (one query per row)

DECODE_LENGTHS = (W, W + NF, 512)  # window ring, fading ring (half of it the band), eidetic store
DECODE_SPLITS = (1, 2, 4, 8, 16)
DECODE_SWEEP = [[block_n, splits, warps, 3, mode, skip]
                for mode in (0, 2) for skip in (1, 0) for block_n in (32, 64, 128) for warps in (4, 8)
                for splits in (1, 2, 4, 8, 16)]


def decode_segments(batch, dtype=torch.bfloat16, device="cuda"):
    """The three segments of a B'MOJO decode step, masks as the step builds them (the band: one run of n_f
    consecutive ring slots, starting anywhere)."""
    def rnd(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    segments = []
    for n in DECODE_LENGTHS:
        segments.append((rnd(batch, H, D), rnd(batch, n, H, D), rnd(batch, n, H, D),
                         torch.ones(batch, n, dtype=torch.bool, device=device)))
    band = segments[1][3]
    slots = torch.arange(W + NF, device=device)
    start = torch.randint(0, W + NF, (batch, 1), device=device)
    band.copy_((slots - start) % (W + NF) < NF)
    return segments


def decode_bytes(segments):
    """Bytes a decode step's attention must move: valid keys and values, queries, masks, the output."""
    total = 0
    for q, k, _, mask in segments:
        per_key = 2 * k.shape[2] * k.shape[3] * k.element_size()
        total += int(mask.sum()) * per_key + q.numel() * q.element_size() + mask.numel()
    q = segments[0][0]
    return total + q.numel() * q.element_size()


def graph_time_us(fn, calls=20, reps=7):
    """Device time of one call: `calls` calls captured in one CUDA graph, replayed; median of reps, us."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compiles) outside the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000 / calls)
    return statistics.median(times)


def run_decode(batch, peak_gbs, sweep=False):
    segments = decode_segments(batch)
    scale = D ** -0.5
    nbytes = decode_bytes(segments)
    row = {"bytes": nbytes}
    reference = torch.compile(decode_attention_reference, dynamic=False)
    variants = {"reference_compiled": lambda: reference(segments, scale),
                "triton": lambda: decode_attention_triton(segments, scale)}
    for splits in DECODE_SPLITS:
        variants[f"triton_splits{splits}"] = (
            lambda s=splits: decode_attention_triton(segments, scale, _config=[64, s, 4, 3]))
    for config in DECODE_SWEEP if sweep else ():
        variants["cfg" + "_".join(map(str, config))] = (
            lambda c=config: decode_attention_triton(segments, scale, _config=c))
    with torch.no_grad():
        exact = decode_attention_reference([(q.float(), k.float(), v.float(), m) for q, k, v, m in segments],
                                           scale)
        for name, fn in variants.items():
            try:
                out = fn().float()
                us = graph_time_us(fn)
            except Exception as exc:  # record, don't stop the run
                row[name] = {"error": repr(exc)[:500]}
                traceback.print_exc()
                continue
            row[name] = {"us": us, "GB/s": nbytes / us / 1e3, "of_peak": nbytes / us / 1e3 / peak_gbs,
                         "rel_err_vs_fp32": ((out - exact).norm() / exact.norm()).item()}
    return row


def main_decode(args):
    torch.manual_seed(0)
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": __import__("triton").__version__,
               "shape": dict(H=H, Hkv=H, D=D, segments=list(DECODE_LENGTHS), band_valid=NF, dtype="bfloat16"),
               "timing": "device time per call, in a CUDA graph of 20 calls, median of 7 replays, us"}
    for batch in args.batches:
        results[f"B{batch}"] = run_decode(batch, args.peak_gbs, args.sweep)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)
    print(f"\ndecode attention, us per call (GB/s, fraction of {args.peak_gbs:.0f} GB/s)")
    for batch in args.batches:
        row = results[f"B{batch}"]
        print(f"B={batch:3d}  {row['bytes'] / 1e6:.1f} MB")
        for name, r in row.items():
            if name == "bytes":
                continue
            if "error" in r:
                print(f"   {name:22s} error {r['error'][:100]}")
            elif not name.startswith("cfg"):
                print(f"   {name:22s} {r['us']:8.1f} us  {r['GB/s']:7.0f} GB/s  {r['of_peak']:5.2f}"
                      f"  rel err {r['rel_err_vs_fp32']:.1e}")
        swept = sorted((r["us"], name, r["rel_err_vs_fp32"]) for name, r in row.items()
                       if name.startswith("cfg") and "us" in r)
        for us, name, err in swept[:8]:  # the fastest configs: [BLOCK_N, splits, warps, stages, MODE, SKIP]
            print(f"   {name:22s} {us:8.1f} us  {row['bytes'] / us / 1e3:7.0f} GB/s  rel err {err:.1e}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None,
                        help="JSON results (default bench_memory_attention[_decode].json)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--sweep", action="store_true",
                        help="time tile configs at the last length (--decode: at every batch)")
    parser.add_argument("--decode", action="store_true",
                        help="time the single-token (decode) attention instead")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="--decode: batch sizes")
    parser.add_argument("--peak-gbs", type=float, default=4800.0,
                        help="--decode: the device's memory bandwidth, GB/s (H200: 4800)")
    args = parser.parse_args()
    if any(b < 1 for b in args.batches):
        parser.error(f"--batches must be >= 1; got {args.batches}")
    if args.peak_gbs <= 0:
        parser.error(f"--peak-gbs must be > 0; got {args.peak_gbs}")
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    if args.decode:
        args.out = args.out or "bench_memory_attention_decode.json"
        return main_decode(args)
    args.out = args.out or "bench_memory_attention.json"
    torch.manual_seed(0)
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": __import__("triton").__version__,
               "shape": dict(B=B, H=H, Hkv=H, D=D, w=W, n_f=NF, M=M, dtype="bfloat16"),
               "timing": "median of 10 CUDA-event timings after 3 warm-ups (reference: 3 after 1), ms"}
    for T in args.lengths:
        run_length(T, results, None)
        print(json.dumps(results[str(T)], indent=1), flush=True)
    if args.sweep:
        results["config_sweep"] = sweep_configs(args.lengths[-1])
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)
    print("\nfwd+bwd ms (fwd ms)          " + "  ".join(f"L={T:>5}" for T in args.lengths))
    names = ["fused_M64", "fused_M0", "reference", "sdpa_causal", "flex_swa", "flex_2pass", "flex_3pass"]
    for name in names:
        cells = []
        for T in args.lengths:
            r = results[str(T)].get(name)
            cells.append(f"{r['fwdbwd_ms']:8.2f} ({r['fwd_ms']:6.2f})" if r else f"{'n/a':>17}")
        print(f"{name:28s}" + "  ".join(cells))
    print("\nratios (baseline / fused, fwd+bwd; >1 means the fused kernel is faster)")
    for T in args.lengths:
        r = results[str(T)]
        pairs = [("reference", "fused_M64"), ("sdpa_causal", "fused_M64"), ("flex_swa", "fused_M64"),
                 ("flex_3pass", "fused_M64"), ("flex_2pass", "fused_M0")]
        for base, fused in pairs:
            if base in r and fused in r:
                print(f"L={T:5d} {base:12s}/{fused:10s} {r[base]['fwdbwd_ms'] / r[fused]['fwdbwd_ms']:6.2f}x"
                      f"   fwd {r[base]['fwd_ms'] / r[fused]['fwd_ms']:6.2f}x")
    if "config_sweep" in results:
        print("\nconfig sweep:", json.dumps(results["config_sweep"], indent=1))


if __name__ == "__main__":
    main()
