"""Where an eager prefill's kernel launches come from: the aten ops that launch work (views left out),
counted per line of the B'MOJO code that issued them, and the ops that make the host wait for the device.

An eager prefill is bound by its host when it issues thousands of tiny ops (benchmarks/profile_train.py
--prefill shows wall time far above device time); this says which lines to fuse or vectorise.

Usage: python benchmarks/prefill_ops.py [--length 2048 --batch 1 --layers 1 --rows 40] (CUDA if present,
else CPU, where the Triton kernels' plain-PyTorch references run instead and count their own ops).
"""

import argparse
import collections
import cProfile
import os
import pstats
import sys
import traceback
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bmojo
from bench_model import MATCHED

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
# ops that only make views (no launch)
VIEWS = {"view", "unsqueeze", "permute", "expand", "select", "slice", "t", "_unsafe_view", "alias", "detach",
         "split", "transpose", "split_with_sizes", "squeeze", "unbind", "as_strided", "lift_fresh"}


def force_triton_path():
    """Every bmojo module takes its Triton path on any device (`use_triton` answers by `use_kernels` alone):
    under TRITON_INTERPRET=1 a CPU then runs, counts or times what a GPU would launch. Call it once bmojo is
    imported: it rebinds the name in every module that imported the dispatcher's function."""
    from bmojo.kernels import dispatch
    original = dispatch.use_triton

    def use_triton(tensor, use_kernels):
        return use_kernels is not False

    for module in list(sys.modules.values()):
        ours = getattr(module, "__name__", "").startswith("bmojo")
        if ours and getattr(module, "use_triton", None) is original:
            module.use_triton = use_triton


def site(stack, inner):
    """The innermost frame of this repository (inner) or the line of a mixer's forward that led to the op."""
    frames = [f for f in stack if os.path.realpath(f.filename).startswith(ROOT) and not any(
        part in f.filename for part in ("/benchmarks/", "/.venv/", "site-packages"))]
    if not inner:
        for frame in reversed(frames):
            if frame.filename.endswith(("attention.py", "mamba2.py")) and frame.name == "forward":
                return f"{os.path.basename(frame.filename)}:{frame.lineno} {frame.line[:70]}"
    if not frames:
        return "?"
    path = os.path.relpath(os.path.realpath(frames[-1].filename), ROOT)
    return f"{path}:{frames[-1].name}:{frames[-1].lineno}"


class CountOps(TorchDispatchMode):
    def __init__(self, inner, caught=None, waits=None):
        super().__init__()
        self.inner = inner
        self.caught, self.waits = caught, waits  # warnings list and counter: record the ops that warned
        self.sites = collections.Counter()
        self.ops = collections.defaultdict(collections.Counter)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket).removeprefix("aten.")
        if name not in VIEWS:
            key = site(traceback.extract_stack(), self.inner)
            self.sites[key] += 1
            self.ops[key][name] += 1
        before = len(self.caught) if self.caught is not None else 0
        out = func(*args, **(kwargs or {}))
        if self.caught is not None and len(self.caught) > before:
            self.waits[f"{name} at {site(traceback.extract_stack(), True)}"] += 1
        return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--callees", nargs="*", default=[], help="functions whose callees cProfile lists")
    parser.add_argument("--inner", action="store_true", help="count by innermost line, not by mixer line")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    config = bmojo.preset_config("bmojo-130m", **dict(MATCHED, num_hidden_layers=args.layers))
    model = bmojo.BMojoForCausalLM(config).to(device, dtype).eval()
    ids = torch.randint(0, config.vocab_size, (args.batch, args.length), device=device)
    with torch.no_grad():
        model(ids, use_cache=True, logits_to_keep=1)  # warm-up (compiles the fused helpers on CUDA)
        counter = CountOps(args.inner)
        with counter:
            model(ids, use_cache=True, logits_to_keep=1)
        waits = collections.Counter()
        if cuda:  # which ops wait for the device: CUDA's sync debug mode warns at each
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with CountOps(True, caught, waits):
                    model(ids, use_cache=True, logits_to_keep=1)
            torch.cuda.set_sync_debug_mode(0)
        if cuda:
            torch.cuda.synchronize()  # the profiled call starts with an idle device
        # The host's time by Python function. Caveat: across dynamo-compiled calls cProfile's attribution is
        # unreliable (on an H200 it charged 84 ms to a function whose callees took 7); the op counts are not.
        profiler = cProfile.Profile()
        profiler.enable()
        model(ids, use_cache=True, logits_to_keep=1)
        if cuda:
            torch.cuda.synchronize()
        profiler.disable()
    total = sum(counter.sites.values())
    print(f"{total} launching ops in a prefill of {args.batch} x {args.length} tokens, "
          f"{args.layers} layer(s), "
          f"{device}")
    for key, n in counter.sites.most_common(args.rows):
        print(f"{n:6d}  {key}  {dict(counter.ops[key].most_common(5))}")
    if cuda:
        print(f"\nops that synchronise with the device: {sum(waits.values())}")
        for key, n in waits.most_common(args.rows):
            print(f"{n:6d}  {key}")
    print("\nhost time of one prefill by function (cProfile, cumulative):")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(args.rows)
    stats.sort_stats("tottime").print_stats(args.rows)
    for name in args.callees:
        stats.print_callees(name)


if __name__ == "__main__":
    main()
