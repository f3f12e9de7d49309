"""The `bmojo` command. `bmojo demo` shows the whole contract on a laptop CPU in a few minutes:
train the tiny B'MOJO preset on multi-query associative recall (MQAR; Arora et al., "Zoology",
2023), save it, reload it through `AutoModelForCausalLM`, check the reload is exact, generate,
and report recall on unseen sequences. `bmojo demo --compare` runs the CPU-scale MQAR comparison
of every model family at matched decoding-state budgets (bmojo.eval.mqar). `bmojo convert` converts
checkpoints between HF Llama / Mistral / Mamba2 and bmojo exactly, or primes a B'MOJO from a Llama
(bmojo.convert)."""

import argparse
import os
import sys
import tempfile
import time

# The demo task: small enough for the tiny preset's vocabulary (128) and a few minutes on 2 cores.
DEMO_TASK = dict(vocab_size=128, seq_len=64, num_pairs=4, num_train=20_000, num_test=500)
DEMO_STEPS = 1000
DEMO_BATCH = 64


def _demo_parser(sub):
    p = sub.add_parser("demo", help="train, save, reload and generate with a tiny B'MOJO on MQAR",
                       description=__doc__)
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps per model (default {DEMO_STEPS}; "
                        f"with --compare {COMPARE_TRAIN['steps']})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="output folder for the model (or the comparison's results); default: a new folder "
                        "bmojo-demo-* in the system's temporary directory. The path is printed.")
    p.add_argument("--compare", action="store_true",
                   help="run the CPU-scale MQAR comparison of all families instead (about 10 minutes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _convert_parser(sub):
    p = sub.add_parser(
        "convert", help="convert between HF Llama/Mistral/Mamba2 and bmojo, or prime a B'MOJO from a Llama",
        description="Exact conversion of a checkpoint (folder or Hub id): HF LlamaForCausalLM, "
                    "MistralForCausalLM or Mamba2ForCausalLM -> its bmojo family, or a bmojo "
                    "full_attention / sliding_attention / mamba2 model -> the HF model. With --prime, a "
                    "Llama or Mistral checkpoint becomes a primed B'MOJO (README: priming).")
    p.add_argument("source", help="checkpoint folder or Hub id")
    p.add_argument("out", help="output folder")
    p.add_argument("--prime", action="store_true", help="build a primed B'MOJO from a Llama/Mistral")
    p.add_argument("--mixer-types", default=None,
                   help="with --prime: comma-separated mixer per layer (default all bmojo)")
    p.add_argument("--fading-init", choices=("attention", "fresh"), default="attention",
                   help="with --prime: the SSM from the attention weights (default) or fresh")
    p.add_argument("--window-size", type=int, default=None, help="with --prime: w")
    p.add_argument("--fading-tokens", type=int, default=None, help="with --prime: n_f")
    p.add_argument("--eidetic-capacity", default=None,
                   help="with --prime: M_e (0 for B'MOJO-F, 'none' for unbounded)")
    p.add_argument("--dtype", default="auto", help="dtype to load the source in (default: its own)")
    return p


def build_parser():
    parser = argparse.ArgumentParser(prog="bmojo", description="B'MOJO hybrid SSM/attention language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    _convert_parser(sub)
    return parser


def convert(ns):
    from bmojo.convert.checkpoints import convert_checkpoint

    overrides = {name: getattr(ns, name) for name in ("window_size", "fading_tokens")
                 if getattr(ns, name) is not None}
    if ns.eidetic_capacity is not None:
        capacity = ns.eidetic_capacity
        overrides["eidetic_capacity"] = None if capacity.lower() == "none" else int(capacity)
    mixer_types = ns.mixer_types.split(",") if ns.mixer_types else None
    try:
        model = convert_checkpoint(ns.source, ns.out, primed=ns.prime, mixer_types=mixer_types,
                                   fading_init=ns.fading_init, dtype=ns.dtype, **overrides)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _say(f"{ns.source} -> {type(model).__name__} saved to {ns.out}/")
    return 0


def _say(msg):
    print(msg, flush=True)


def demo(steps, seed, out, progress=True):
    """The single-model demo; returns a dict of what it measured."""
    import torch
    from transformers import AutoModelForCausalLM

    import bmojo
    from bmojo.eval import mqar

    task = mqar.MQARTask(seed=seed, **DEMO_TASK)
    train, test = mqar.make_splits(task)
    config = bmojo.preset_config("tiny", hidden_size=64, intermediate_size=128)
    torch.manual_seed(seed)
    model = bmojo.BMojoForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    _say(f"MQAR: {task.num_pairs} key-value pairs in {task.seq_len} tokens, vocab {task.vocab_size} "
         f"(chance {task.chance:.3f}); tiny B'MOJO, {n_params} parameters; {steps} steps")
    start = time.time()
    args = mqar.TrainArgs(steps=steps, batch_size=DEMO_BATCH, seed=seed, progress=progress)
    losses = mqar.train(model, train, args, desc="demo")
    _say(f"trained in {time.time() - start:.0f}s, final loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")

    model.save_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    probe = test["input_ids"][:8]
    with torch.no_grad():
        same = torch.allclose(model(probe).logits, reloaded(probe).logits, atol=1e-5, rtol=0)
    if not same:
        raise RuntimeError("the reloaded model's logits differ from the trained model's")
    _say(f"saved to {out} and reloaded with AutoModelForCausalLM: logits identical")

    prompt, answer = _prompt(test)
    # The explicit mask matters: the filler id 0 may equal the pad id, and every token here is real.
    generated = reloaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=1,
                                  do_sample=False)
    _say(f"generate(): prompt ends with query key {int(prompt[0, -1])}, expected value {answer}, "
         f"generated {int(generated[0, -1])}")
    accuracy = mqar.evaluate(reloaded, test)
    _say(f"recall accuracy on {test['input_ids'].shape[0]} unseen sequences: {accuracy:.3f} "
         f"(chance {task.chance:.3f})")
    return dict(accuracy=accuracy, chance=task.chance, reload_exact=same, out=out)


def _prompt(test):
    """The first test sequence cut just after its first queried key: (prompt [1, t], its value)."""
    labels = test["labels"][0]
    answer_pos = int((labels != -100).nonzero()[0])
    return test["input_ids"][:1, :answer_pos], int(labels[answer_pos])


def compare(seed, out, progress=True, steps=None):
    """The CPU-scale comparison: 2-layer models of every family at two budgets, 4 and 8 pairs,
    two models trained at once (one thread each: faster than one model on two threads)."""
    from bmojo.eval import mqar

    train = {**COMPARE_TRAIN, **({"steps": steps} if steps else {})}
    args = mqar.ComparisonArgs(seed=seed, train=mqar.TrainArgs(seed=seed, progress=progress, **train),
                               **COMPARE_TASK)
    _say(f"MQAR comparison: {len(args.families)} families, budgets {args.budgets} floats/layer, "
         f"pairs {args.pair_counts}, seq_len {args.seq_len}, {args.train.steps} steps each; "
         f"writing to {out}/")
    rows = mqar.run_comparison(args, out, log=_say, workers=COMPARE_WORKERS)
    _say(mqar.markdown_table(rows))
    return rows


COMPARE_TASK = dict(budgets=(512, 2048), pair_counts=(4, 8), seq_len=64, vocab_size=128,
                    num_train=20_000, num_test=500)
COMPARE_TRAIN = dict(steps=500, batch_size=32, lr=3e-3)
COMPARE_WORKERS = 2


def demo_folder(out, compare):
    """The absolute output folder, created: `out`, or a fresh one under the temporary directory."""
    if out is None:
        return tempfile.mkdtemp(prefix="bmojo-demo-compare-" if compare else "bmojo-demo-")
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    return out


def main(argv=None):
    ns = build_parser().parse_args(argv)
    if ns.command == "convert":
        return convert(ns)
    if ns.command == "demo":
        if ns.steps is not None and ns.steps < 1:
            print("error: --steps must be >= 1", file=sys.stderr)
            return 2
        out = demo_folder(ns.out, ns.compare)
        if ns.compare:
            compare(ns.seed, out, not ns.no_progress, steps=ns.steps)
        else:
            demo(ns.steps or DEMO_STEPS, ns.seed, out, not ns.no_progress)
        _say(f"done; the {'results are' if ns.compare else 'model is'} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
