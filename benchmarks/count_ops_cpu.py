"""Launching ops of an eager B'MOJO prefill or decode step, counted on a CPU, with the kernels of one switch
off and forced on (they run under the Triton interpreter, so this machine needs no GPU): BMOJO_STATE_KERNELS
(`--switch state`) or BMOJO_POINTWISE_KERNELS (`--switch pointwise`). For the latter it also counts the calls
of the norms, SwiGLU and RoPE: on CUDA each is one compiled call (`fused_on_cuda`) without the switch, one
Triton launch with it.

Why on a CPU: eager prefills and decode steps are bound by their host, which issues one launch per op, and
the code that issues the ops is the same on either device. Caveats: on a CPU, code that runs as Triton on
CUDA (memory attention, the SSD scan, the decode attention, the fused eidetic update) runs its plain
PyTorch reference instead, and `fused_on_cuda` helpers (norms, RoPE, SwiGLU) run op by op rather than as
one compiled call each; so the totals are not a GPU's, but the rows of the lines these switches touch are.
Views are not counted (they launch nothing).

Usage: TRITON_INTERPRET=1 python benchmarks/count_ops_cpu.py [--switch state] [--length 2048] [--layers 1]
       [--rows 30]
"""

import argparse
import os
import traceback

import torch
from torch.utils._python_dispatch import _disable_current_modes, _get_current_dispatch_mode_stack

import bmojo
from bench_model import MATCHED
from bmojo.kernels import dispatch
from bmojo.modeling_bmojo import innovation
from prefill_ops import CountOps, site


ACTIVE = {}  # the CountOps of the call being counted


def count_launches_as_one():
    """Counts a Triton launch as one op at its call site. The interpreter runs a kernel with torch ops of its
    own (copies of the arguments to and from the host), which a GPU launch does not issue; kernels registered
    as custom ops hide them already (a dispatch mode sees the op, not its body), direct launches do not."""
    from triton.runtime import interpreter
    original = interpreter.GridExecutor.__call__

    def call(self, *args, **kwargs):
        counter = ACTIVE.get("counter")
        if counter is None or counter not in _get_current_dispatch_mode_stack():
            # not counting, or inside a custom op's body (the op itself was counted)
            return original(self, *args, **kwargs)
        key = site(traceback.extract_stack(), True)
        counter.sites[key] += 1
        counter.ops[key]["triton " + self.fn.__name__] += 1
        with _disable_current_modes():
            return original(self, *args, **kwargs)

    interpreter.GridExecutor.__call__ = call


CALLS = {"pointwise": 0}  # calls of the pointwise dispatchers (rms_norm, gated_rms_norm, swiglu, rotate)


def force(switch, on):
    if switch == "state":
        for module in (dispatch, innovation):  # attention asks dispatch
            module.state_kernels_used = (lambda tensor, use_kernels="auto": on)
        return

    def pointwise(tensor, use_kernels="auto"):  # asked once per dispatcher call outside torch.compile
        CALLS["pointwise"] += 1
        return on

    dispatch.pointwise_kernels_used = pointwise


@torch.no_grad()
def count(model, ids, decode):
    """CountOps of one prefill (decode=False) or of one decode step after a prefill and a warm-up step; CALLS
    counts that call's pointwise dispatcher calls."""
    counter = CountOps(inner=True)

    def counted(call):
        CALLS["pointwise"] = 0
        ACTIVE["counter"] = counter
        try:
            with counter:
                call()
        finally:
            del ACTIVE["counter"]
        return counter

    if not decode:
        model(ids, use_cache=True, logits_to_keep=1)  # warm-up
        return counted(lambda: model(ids, use_cache=True, logits_to_keep=1))
    cache = model(ids, use_cache=True).past_key_values
    model(ids[:, -1:], past_key_values=cache)
    return counted(lambda: model(ids[:, -1:], past_key_values=cache))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--switch", choices=("state", "pointwise"), default="state")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("set TRITON_INTERPRET=1: the kernels run under Triton's interpreter here")
    count_launches_as_one()
    torch.manual_seed(0)
    config = bmojo.preset_config("bmojo-130m", **dict(MATCHED, num_hidden_layers=args.layers))
    model = bmojo.BMojoForCausalLM(config).eval()
    ids = torch.randint(5, config.vocab_size, (1, args.length))
    for decode in (False, True):
        what = "decode step" if decode else f"prefill of 1 x {args.length}"
        counts = {}
        for on in (False, True):
            force(args.switch, on)
            counts[on] = count(model, ids, decode)
            calls = CALLS["pointwise"]
        print(f"\n{what}, {args.layers} layer(s): {sum(counts[False].sites.values())} launching ops, "
              f"{sum(counts[True].sites.values())} with the {args.switch} kernels forced on")
        if args.switch == "pointwise":
            print(f"  pointwise dispatcher calls: {calls}")
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
    force(args.switch, False)


if __name__ == "__main__":
    main()
