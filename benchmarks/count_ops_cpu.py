"""Launching ops of an eager B'MOJO prefill or decode step, counted on a CPU, with the BMOJO_STATE_KERNELS
kernels off and forced on (they run under the Triton interpreter, so this machine needs no GPU).

Why on a CPU: eager prefills and decode steps are bound by their host, which issues one launch per op, and
the code that issues the ops is the same on either device. Caveats: on a CPU, code that runs as Triton on
CUDA (memory attention, the SSD scan, the decode attention, the fused eidetic update) runs its plain
PyTorch reference instead, and `fused_on_cuda` helpers (norms, RoPE, SwiGLU) run op by op rather than as
one compiled call each; so the totals are not a GPU's, but the rows of the lines these switches touch are.
Views are not counted (they launch nothing).

Usage: TRITON_INTERPRET=1 python benchmarks/count_ops_cpu.py [--length 2048] [--layers 1] [--rows 30]
"""

import argparse
import os

import torch

import bmojo
from bench_model import MATCHED
from bmojo.kernels import dispatch
from bmojo.modeling_bmojo import attention, innovation
from prefill_ops import CountOps


def force_state_kernels(on):
    switch = (lambda tensor, use_kernels="auto": on)
    for module in (dispatch, innovation, attention):
        module.state_kernels_used = switch


@torch.no_grad()
def count(model, ids, decode):
    """CountOps of one prefill (decode=False) or of one decode step after a prefill and a warm-up step."""
    counter = CountOps(inner=True)
    if not decode:
        model(ids, use_cache=True, logits_to_keep=1)  # warm-up
        with counter:
            model(ids, use_cache=True, logits_to_keep=1)
        return counter
    cache = model(ids, use_cache=True).past_key_values
    model(ids[:, -1:], past_key_values=cache)
    with counter:
        model(ids[:, -1:], past_key_values=cache)
    return counter


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--rows", type=int, default=30)
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("set TRITON_INTERPRET=1: the state kernels run under Triton's interpreter here")
    torch.manual_seed(0)
    config = bmojo.preset_config("bmojo-130m", **dict(MATCHED, num_hidden_layers=args.layers))
    model = bmojo.BMojoForCausalLM(config).eval()
    ids = torch.randint(5, config.vocab_size, (1, args.length))
    for decode in (False, True):
        what = "decode step" if decode else f"prefill of 1 x {args.length}"
        counts = {}
        for on in (False, True):
            force_state_kernels(on)
            counts[on] = count(model, ids, decode)
        print(f"\n{what}, {args.layers} layer(s): {sum(counts[False].sites.values())} launching ops, "
              f"{sum(counts[True].sites.values())} with the state kernels forced on")
        lines = set(counts[False].sites) | set(counts[True].sites)
        changed = sorted(lines, key=lambda k: counts[True].sites[k] - counts[False].sites[k])
        print("  lines whose count the switch changes (off -> on):")
        for key in changed:
            off, on = counts[False].sites[key], counts[True].sites[key]
            if off != on:
                print(f"    {off:5d} -> {on:4d}  {key}")
        print(f"  the {args.rows} busiest lines, switch off:")
        for key, n in counts[False].sites.most_common(args.rows):
            print(f"    {n:5d}  {key}  {dict(counts[False].ops[key].most_common(4))}")
    force_state_kernels(False)


if __name__ == "__main__":
    main()
