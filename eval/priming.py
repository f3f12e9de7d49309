"""Priming, measured: a Transformer trained here, primed into B'MOJO, compared at 1x..8x its training length.

Issue 12 asks whether a B'MOJO primed from a trained Transformer (`bmojo.convert.prime`) reaches the
Transformer's perplexity at the training length T after a small budget, and keeps it at 2T..8T where the
Transformer's rises (RoPE angles it never saw). One command runs the whole experiment on a folder of text:

1. trains a Transformer (this package's `transformer` family: full attention, RoPE, SwiGLU) with
   `bmojo.eval.lm.train_lm` at length T; it converts exactly to an HF Llama (`bmojo.convert.to_hf`),
   which is what `prime` and the README's recipe start from;
2. primes a B'MOJO from that Llama, with a window w < T (a window covering T would make the primed model
   the Transformer itself at T, and the test trivial), fading band n_f and eidetic store M_e;
3. stage 1, `PrimingDistillation` for S1 steps: only the new weights (SSM, innovation predictor) learn to
   reproduce the frozen Transformer's final hidden states;
4. stage 2, language-model fine-tuning of every weight for S2 steps;
5. two controls: the Transformer itself trained S2 more steps as in stage 2 (the primed model's LM budget
   is the Transformer's plus S2, so this is the comparison at equal budget), and (`--scratch-steps`,
   default: the Transformer's steps) the same B'MOJO trained from scratch.

Perplexity is `bmojo.eval.lm.length_generalization` on the held-out split at each factor of T, plus one
exactness check at length w, where the window covers the input and the primed model, before any training,
must compute the Transformer (its fading band and store are still empty). Writes results.json, results.md
and lengths.png (with matplotlib) to --out.

    python -m bmojo.eval.corpus --out .corpus/pydoc
    python -m bmojo.eval.priming .corpus/pydoc --out priming_results
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time

import torch

from . import lm

CONTINUED = "transformer, + S2 steps (control)"
TARGET_GAP = 0.05  # the "within 5%" at T, and the flatness allowed from T to the longest length


@dataclasses.dataclass
class PrimingSettings:
    """What the experiment trains and measures; `check()` says what is wrong in terms of these fields."""

    seq_len: int = 128  # T, the training length of every stage
    window_size: int = 32  # w < T
    fading_tokens: int = 32  # n_f
    eidetic_capacity: int = 32  # M_e (0: B'MOJO-F)
    eidetic_tokens_per_chunk: int = 8  # n_e <= w
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 256
    teacher_steps: int = 400
    distill_steps: int = 100  # S1
    finetune_steps: int = 200  # S2
    scratch_steps: int | None = None  # None: teacher_steps; 0: no control
    batch_size: int = 8
    lr: float = 1e-3  # the Transformer's and the scratch control's
    distill_lr: float = 2e-3
    finetune_lr: float = 5e-4
    factors: tuple = (1, 2, 4, 8)
    max_eval_tokens: int = 16384
    eval_batch_size: int = 8
    seed: int = 0

    def check(self):
        ints = dict(seq_len=2, window_size=1, fading_tokens=0, eidetic_capacity=0, eidetic_tokens_per_chunk=0,
                    hidden_size=1, layers=1, heads=1, intermediate_size=1, teacher_steps=1, distill_steps=0,
                    finetune_steps=0, scratch_steps=0, batch_size=1, max_eval_tokens=1, eval_batch_size=1,
                    seed=0)
        for name, low in ints.items():
            value = getattr(self, name)
            if name == "scratch_steps" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.window_size >= self.seq_len:
            raise ValueError(f"window_size must be < seq_len={self.seq_len} (a window covering the training "
                             f"length makes the primed model the Transformer itself there), got "
                             f"{self.window_size}")
        if self.eidetic_tokens_per_chunk > self.window_size:
            raise ValueError(f"eidetic_tokens_per_chunk must be <= window_size={self.window_size}, got "
                             f"{self.eidetic_tokens_per_chunk}")
        if self.hidden_size % self.heads:
            raise ValueError(f"heads must divide hidden_size={self.hidden_size}, got {self.heads}")
        for name in ("lr", "distill_lr", "finetune_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
        factors = tuple(self.factors)
        if not factors or factors[0] != 1 or any(not isinstance(f, int) or isinstance(f, bool)
                                                 for f in factors) or list(factors) != sorted(set(factors)):
            raise ValueError(f"factors must be increasing integers starting at 1 (the target is measured "
                             f"against 1x), got {self.factors!r}")
        return self

    @property
    def control_steps(self):
        return self.teacher_steps if self.scratch_steps is None else self.scratch_steps


def transformer_config(s, vocab_size):
    """Our `transformer` family at the chosen width: it converts exactly to an HF Llama (no GQA, so that
    one SSM head per query head can take its key/value head's weights as they are)."""
    import bmojo

    return bmojo.preset_config("transformer-tiny", vocab_size=vocab_size, hidden_size=s.hidden_size,
                               num_hidden_layers=s.layers, num_attention_heads=s.heads,
                               num_key_value_heads=s.heads, head_dim=s.hidden_size // s.heads,
                               intermediate_size=s.intermediate_size)


def memory_overrides(s):
    """The B'MOJO memory of the primed model (and of the scratch control, which shares its config)."""
    return dict(window_size=s.window_size, fading_tokens=s.fading_tokens, eidetic_capacity=s.eidetic_capacity,
                eidetic_tokens_per_chunk=s.eidetic_tokens_per_chunk, ssm_chunk_size=s.window_size)


def _train(model, stream, s, steps, lr, workdir):
    """`lm.train_lm` with this experiment's batch, seed and device; the last logged loss (None: 0 steps)."""
    if steps == 0:
        return None
    trainer = lm.train_lm(model, stream, s.seq_len, workdir, max_steps=steps, learning_rate=lr,
                          per_device_train_batch_size=s.batch_size, seed=s.seed,
                          warmup_steps=min(10, steps // 10), logging_steps=max(1, min(25, steps // 4)),
                          use_cpu=not torch.cuda.is_available())
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses[-1] if losses else None


def run_priming(s, train, test, vocab_size, log=print):
    """Runs the experiment on token streams `train` / `test` of `vocab_size` ids. Returns {"models": {label:
    {steps, tokens, final_train_loss, rows}}, "exactness_check", "wall_s", "parameters"}; every model gets the
    same evaluation, `lm.length_generalization` at `s.factors` x T."""
    import bmojo
    from bmojo.convert import PrimingDistillation, prime, to_hf

    s.check()
    start = time.time()
    tokens_per_step = s.batch_size * s.seq_len
    models = {}

    def evaluate(label, model, steps, final_loss, **extra):
        rows = lm.length_generalization(model, test, s.seq_len, s.factors, batch_size=s.eval_batch_size,
                                        max_tokens=s.max_eval_tokens)
        models[label] = dict(steps=steps, tokens=steps * tokens_per_step, final_train_loss=final_loss,
                             rows=rows, **extra)
        shown = ", ".join(f"{r['factor']}x {r['ppl']:.3f}" for r in rows)
        log(f"[{time.time() - start:6.0f}s] {label}: ppl {shown}")

    def stage(name):
        log(f"[{time.time() - start:6.0f}s] {name}")

    with tempfile.TemporaryDirectory() as workdir:
        stage(f"training the Transformer for {s.teacher_steps} steps at T = {s.seq_len}")
        torch.manual_seed(s.seed)
        transformer = bmojo.BMojoForCausalLM(transformer_config(s, vocab_size))
        loss = _train(transformer, train, s, s.teacher_steps, s.lr, workdir)
        evaluate("transformer", transformer, s.teacher_steps, loss)

        llama = to_hf(transformer).eval()  # exact: the README's recipe starts from an HF Llama
        torch.manual_seed(s.seed)
        student = prime(llama, **memory_overrides(s))
        check_rows = {}
        for label, model in (("transformer", transformer), ("primed, before training", student)):
            check_rows[label] = lm.perplexity(model, test, s.window_size, s.eval_batch_size,
                                              max(1, s.max_eval_tokens // s.window_size))
        evaluate("primed, before training", student, 0, None)

        stage(f"stage 1: distillation of the new weights for {s.distill_steps} steps")
        distiller = PrimingDistillation(student, teacher=llama)
        loss = _train(distiller, train, s, s.distill_steps, s.distill_lr, workdir)
        evaluate("primed, after stage 1 (distillation)", student, s.distill_steps, loss,
                 trained="new weights only (SSM, innovation predictor)")

        stage(f"stage 2: language-model fine-tuning of every weight for {s.finetune_steps} steps")
        student.requires_grad_(True)
        loss = _train(student, train, s, s.finetune_steps, s.finetune_lr, workdir)
        evaluate("primed, after stage 2 (LM fine-tuning)", student, s.distill_steps + s.finetune_steps, loss,
                 trained="every weight")

        if s.finetune_steps:
            stage(f"control: the Transformer, {s.finetune_steps} more steps as in stage 2")
            loss = _train(transformer, train, s, s.finetune_steps, s.finetune_lr, workdir)
            evaluate(CONTINUED, transformer, s.teacher_steps + s.finetune_steps, loss)

        if s.control_steps:
            stage(f"control: the same B'MOJO from scratch for {s.control_steps} steps")
            torch.manual_seed(s.seed)
            scratch = bmojo.BMojoForCausalLM(student.config)
            loss = _train(scratch, train, s, s.control_steps, s.lr, workdir)
            evaluate("B'MOJO from scratch (control)", scratch, s.control_steps, loss)

    check = dict(length=s.window_size, **{label: row["ppl"] for label, row in check_rows.items()})
    return dict(models=models, exactness_check=check, wall_s=round(time.time() - start, 1),
                parameters=dict(transformer=sum(p.numel() for p in transformer.parameters()),
                                bmojo=sum(p.numel() for p in student.parameters())))


def verdict(results, settings):
    """(met, sentence): is the primed model (after stage 2) within 5% of the Transformer at T, and does it
    stay within 5% of its own value at T up to the longest length measured, which must reach 8x?"""
    transformer, primed = (results["models"][k]["rows"] for k in
                           ("transformer", "primed, after stage 2 (LM fine-tuning)"))
    at_t, ref = primed[0]["ppl"], transformer[0]["ppl"]
    gap = at_t / ref - 1
    longest = primed[-1]
    rise = longest["ppl"] / at_t - 1
    t_rise = transformer[-1]["ppl"] / ref - 1
    budget = f"{settings.distill_steps} + {settings.finetune_steps} steps"
    close = gap <= TARGET_GAP
    flat = rise <= TARGET_GAP and longest["factor"] >= 8
    parts = [f"at T the primed B'MOJO (after {budget}) has perplexity {at_t:.3f} against the Transformer's "
             f"{ref:.3f} ({gap:+.1%}; target <= +{TARGET_GAP:.0%}: {'met' if close else 'not met'})",
             f"from 1x to {longest['factor']}x T it changes by {rise:+.1%} (target: flat within "
             f"{TARGET_GAP:.0%} to 8x: {'met' if flat else 'not met'}) where the Transformer's changes by "
             f"{t_rise:+.1%}"]
    if CONTINUED in results["models"]:
        equal = results["models"][CONTINUED]["rows"][0]["ppl"]
        parts.append(f"against the Transformer trained the same {settings.finetune_steps} extra LM steps "
                     f"({equal:.3f} at T) the primed model is at {at_t / equal - 1:+.1%}")
    if longest["factor"] < 8:
        parts.append(f"the held-out split only holds {longest['factor']}x T, so 8x was not measured")
    met = close and flat
    return met, ("Target met: " if met else "Target not met: ") + "; ".join(parts) + "."


def write_report(results, settings, out, command, machine, data):
    """results.json, results.md and (with matplotlib) lengths.png in `out`."""
    met, sentence = verdict(results, settings)
    date = datetime.date.today().isoformat()
    report = dict(command=command, date=date, machine=machine, data=data,
                  settings=dataclasses.asdict(settings), target=dict(met=met, summary=sentence), **results)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    unit = "bytes" if data["tokenizer"] == "byte" else f"BPE tokens, {data['vocab_size']} ids"
    plot = lm.plot_lengths({label: m["rows"] for label, m in results["models"].items()},
                           os.path.join(out, "lengths.png"), unit)
    s, models = settings, results["models"]
    factors = [r["factor"] for r in models["transformer"]["rows"]]
    ref = models["transformer"]["rows"][0]["ppl"]
    lines = [f"# Priming a trained Transformer into B'MOJO ({date})", "",
             "    " + command, "",
             f"Machine: {machine}. Wall time: {results['wall_s']:.0f} s.", "",
             f"Data: {data['train_tokens']:,} train / {data['test_tokens']:,} held-out tokens "
             f"({data['tokenizer']} tokenizer, {data['vocab_size']} ids). Perplexity over up to "
             f"{s.max_eval_tokens:,} held-out tokens per length, non-overlapping blocks, each from an empty "
             f"state.", "",
             f"Transformer: our `transformer` family (full attention, RoPE), d = {s.hidden_size}, {s.layers} "
             f"layers, {s.heads} heads, SwiGLU {s.intermediate_size}, "
             f"{results['parameters']['transformer']:,} parameters; T = {s.seq_len}. B'MOJO primed from it "
             f"through an HF Llama (`to_hf`, exact): window w = {s.window_size}, fading band n_f = "
             f"{s.fading_tokens}, store M_e = {s.eidetic_capacity} ({s.eidetic_tokens_per_chunk} candidates "
             f"per chunk), SSM initialised from attention, {results['parameters']['bmojo']:,} parameters. "
             f"Batch {s.batch_size} x {s.seq_len} tokens per step; AdamW, cosine schedule; lr {s.lr} "
             f"(Transformer, control), {s.distill_lr} (stage 1), {s.finetune_lr} (stage 2); seed "
             f"{s.seed}.", "",
             "| model | steps | tokens | final train loss | "
             + " | ".join(f"ppl @{f * s.seq_len} ({f}x)" for f in factors) + " | @T vs Transformer |",
             "|---" * (5 + len(factors)) + "|"]
    for label, m in models.items():
        ppl = [f"{r['ppl']:.3f}" for r in m["rows"]] + ["-"] * (len(factors) - len(m["rows"]))
        loss = "-" if m["final_train_loss"] is None else f"{m['final_train_loss']:.3f}"
        lines.append(f"| {label} | {m['steps']} | {m['tokens']:,} | {loss} | " + " | ".join(ppl)
                     + f" | {m['rows'][0]['ppl'] / ref - 1:+.1%} |")
    check = results["exactness_check"]
    lines += ["", "Stage 1's final loss is the distillation loss (hidden-state MSE + innovation loss), "
              "the others' the LM loss (B'MOJO's including its innovation loss).", "",
              f"Exactness check at length w = {check['length']} (the window covers the input, so the primed "
              f"model before training must compute the Transformer): Transformer {check['transformer']:.4f}, "
              f"primed {check['primed, before training']:.4f}.", "",
              "**" + sentence + "**", ""]
    if plot:
        lines += ["Plot: [lengths.png](lengths.png); numbers: [results.json](results.json).", ""]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines))
    return met, sentence


def build_parser():
    p = argparse.ArgumentParser(prog="python -m bmojo.eval.priming",
                                description="Train a Transformer on a folder of .txt/.jsonl, prime it into "
                                            "B'MOJO, distil, fine-tune, and compare perplexity at 1x..8x "
                                            "the training length.")
    p.add_argument("data", help="folder of .txt / .jsonl files (e.g. from python -m bmojo.eval.corpus)")
    p.add_argument("--out", default="priming_results")
    p.add_argument("--tokenizer", choices=("byte", "bpe"), default="byte")
    p.add_argument("--bpe-vocab-size", type=int, default=1024)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--machine", default=None, help="how to describe the machine in the report")
    defaults = PrimingSettings()
    for field in dataclasses.fields(PrimingSettings):
        flag = "--" + field.name.replace("_", "-")
        value = getattr(defaults, field.name)
        if field.name == "factors":
            p.add_argument(flag, default=",".join(map(str, value)), help="comma-separated multiples of T")
        else:
            kind = int if field.name == "scratch_steps" else type(value)
            p.add_argument(flag, type=kind, default=value, help=f"default: {value}")
    return p


def settings_from_args(ns):
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(PrimingSettings)}
    try:
        values["factors"] = tuple(int(x) for x in values["factors"].split(","))
    except ValueError:
        raise ValueError(f"factors must be comma-separated integers, got {values['factors']!r}") from None
    return PrimingSettings(**values).check()


def describe_machine():
    import transformers

    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return (f"{where}, {platform.system()} {platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}")


def main(argv=None):
    ns = build_parser().parse_args(argv)
    command = "python -m bmojo.eval.priming " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        settings = settings_from_args(ns)
        docs = lm.read_folder(ns.data)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(ns.out, exist_ok=True)
    train_docs, test_docs = lm.split_documents(docs, ns.test_fraction)
    tokenizer = lm.make_tokenizer(ns.tokenizer, train_docs, ns.bpe_vocab_size)
    if isinstance(tokenizer, lm.BPETokenizer):
        tokenizer.save(os.path.join(ns.out, "tokenizer.json"))
    train, test = lm.token_stream(train_docs, tokenizer), lm.token_stream(test_docs, tokenizer)
    data = dict(folder=ns.data, documents=len(docs), train_tokens=len(train), test_tokens=len(test),
                tokenizer=tokenizer.kind, vocab_size=tokenizer.vocab_size)
    print(f"data: {len(docs)} documents; {len(train):,} train / {len(test):,} test tokens "
          f"({tokenizer.kind} tokenizer, {tokenizer.vocab_size} ids)", flush=True)
    try:
        results = run_priming(settings, train, test, tokenizer.vocab_size,
                              log=lambda line: print(line, flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    met, sentence = write_report(results, settings, ns.out, command, ns.machine or describe_machine(), data)
    print(sentence)
    print(f"results: {os.path.join(ns.out, 'results.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
