"""EagerBody on and off in ONE process (kernels/custom_ops.py): an eager B'MOJO prefill, decode step and
training step, timed with the registered ops' bodies called directly (EAGER_BODY on, the default) and through
the dispatcher (off, as BMOJO_EAGER_BODY=0 would set it at import), alternating rounds so that drift of the
host hits both alike.

Why in one process: the lent machines' hosts differ by up to 1.4x between leases (2026-12-05), and the
switch is read at call time, so one model and one set of compiled helpers serve both.

Usage (GPU): python benchmarks/eager_body_ab.py [--model bmojo-matched --rounds 5 --out ab.json]
`--dry-run`: tiny widths on CPU (no Triton paths there: the two modes then run the same code).
"""

import argparse
import json
import statistics
import time

import torch

from bench_model import Setup, build, sync
from bmojo.kernels import custom_ops
from bmojo.modeling_bmojo.cache import CACHE_NAME


def wall_ms(fn, reps, device):
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return 1000 * (time.perf_counter() - start) / reps


def calls(model, setup, prefill_length, train_shape):
    """name -> (function, calls per timing) for the three eager paths."""
    vocab, device = setup.width["vocab_size"], setup.device
    prompt = torch.randint(0, vocab, (1, prefill_length), device=device)
    batch = torch.randint(0, vocab, train_shape, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")

    @torch.no_grad()
    def prefill():
        model.eval()
        return model(input_ids=prompt, use_cache=True, logits_to_keep=1)

    cache = getattr(prefill(), CACHE_NAME)
    token = prompt[:, -1:]

    @torch.no_grad()
    def decode():  # one eager step on a fixed-size cache; the context grows by one token per call
        return model(input_ids=token, use_cache=True, **{CACHE_NAME: cache})

    def train():
        model.train()
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"prefill_ms": (prefill, 5), "decode_step_ms": (decode, 30), "train_step_ms": (train, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bmojo-matched")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    setup = Setup(args.dry_run)
    torch.manual_seed(0)
    model = build(args.model, setup).to(setup.device, setup.dtype)
    shape = setup.train_shapes[0]
    paths = calls(model, setup, setup.prefill_lengths[0], shape)
    times = {(name, on): [] for name in paths for on in (True, False)}
    for name, (fn, reps) in paths.items():  # warm-up: compiled helpers, autotuning, allocator
        for on in (True, False):
            custom_ops.EAGER_BODY = on
            wall_ms(fn, 2, setup.device)
    for round_ in range(args.rounds):
        for name, (fn, reps) in paths.items():
            for on in ((True, False) if round_ % 2 == 0 else (False, True)):
                custom_ops.EAGER_BODY = on
                times[name, on].append(wall_ms(fn, reps, setup.device))
    custom_ops.EAGER_BODY = True
    device = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name()
    result = {"model": args.model, "device": device, "torch": torch.__version__, "rounds": args.rounds,
              "prefill_length": setup.prefill_lengths[0], "train_shape": shape, "rows": {}}
    for name in paths:
        on, off = (statistics.median(times[name, flag]) for flag in (True, False))
        result["rows"][name] = {"eager_body": on, "dispatcher": off, "off_over_on": off / on,
                                "all_on": times[name, True], "all_off": times[name, False]}
        print(f"{name:16s} EagerBody {on:8.2f}  dispatcher {off:8.2f}  ratio {off / on:.3f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
