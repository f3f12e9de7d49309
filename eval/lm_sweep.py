"""Language modelling at matched size: a learning-rate sweep per family, HF Llama in the same run (issue 13).

The paper's language-modelling claims are that B'MOJO's perplexity is comparable to a Transformer's of the
same size, and that it stays flat when the evaluated length grows to 4x+ the training length. Comparing one
learning rate for every family measures the learning rate as much as the model, so every row here is swept
(at least 3 values) and reported at its best, chosen on a validation split; test perplexity is then read at
T, 2T, ... 16T on a separate test split. The data are tokenized once (`prepare`) and read by every job, so
the rows see the same tokens in the same blocks; no block is seen twice when `--tokens` fits in the training
split.

    python -m bmojo.eval.corpus --sources all --out .corpus/debian-docs
    python -m bmojo.eval.lm_sweep prepare .corpus/debian-docs --out .lmdata/debian-docs
    python -m bmojo.eval.lm_sweep run .lmdata/debian-docs --device cuda --workers 3 \\
        --rows bmojo,transformer,hf-llama,mamba2-hf-like --lrs 3e-4,1e-3,3e-3 --tokens 10000000 --out lm_sweep

Rows (`ROWS`) at the `130m` width (d = 768, 12 layers, SwiGLU 2048 where a block has an MLP), sized to about
the same parameter count: `bmojo` narrows its SSM (expand 1) and MLP (1024), as `benchmarks/bench_model.py`'s
bmojo-matched does, since a B'MOJO block carries an SSM beside attention and MLP; `mamba2-hf-like` is HF
Mamba2's block (no MLP, untied head, A_h = h + 1) at HF's 130m depth (24 layers). Each job (row, lr, seed)
runs in its own process: HF Trainer, AdamW (betas 0.9 / 0.95, weight decay 0.1, gradient clipping 1.0),
linear warm-up over 5% of the steps then cosine decay to 0, bf16 autocast on CUDA. `results.json` (every
job, the data, the command, device and date), `results.md` and the plots `lengths.png` (test perplexity
against evaluated length, each row at its best lr) and `sweep.png` (validation perplexity against lr) are
rewritten after every finished job; `--resume` keeps the finished jobs of an earlier run of the same setting.
"""

import argparse
import datetime
import functools
import json
import math
import os
import shlex
import sys
import time
import traceback
from dataclasses import asdict, dataclass

import torch

from . import lm, parity

SPLITS = ("train", "valid", "test")
# Per size: the width every row shares. "tiny" is for tests and CPU smoke runs.
WIDTHS = {
    "130m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
}
# row -> (source, preset family, overrides as functions of the width). Our rows start from the family's
# preset at the size; each override says how the row departs from it.
ROWS = {
    # matched to Llama's parameter count: the SSM at expand 1, the MLP at half width
    "bmojo": ("bmojo", "bmojo", lambda w: dict(ssm_expand=1, intermediate_size=w["intermediate_size"] // 2)),
    "bmojo-f": ("bmojo", "bmojo", lambda w: dict(ssm_expand=1, intermediate_size=w["intermediate_size"] // 2,
                                                 eidetic_capacity=0)),
    "transformer": ("bmojo", "transformer", lambda w: {}),
    "swa-transformer": ("bmojo", "swa-transformer", lambda w: {}),
    "mamba2": ("bmojo", "mamba2", lambda w: {}),
    # HF Mamba2's block (no MLP, untied head; the family already starts A_h = h + 1) at twice the depth, as
    # HF's mamba2-130m has 24 layers where a Transformer of its size has 12
    "mamba2-hf-like": ("bmojo", "mamba2", lambda w: dict(intermediate_size=0, tie_word_embeddings=False,
                                                         num_hidden_layers=2 * w["num_hidden_layers"])),
    "hf-llama": ("hf", "llama", lambda w: {}),
}
MIN_LRS = 3


@dataclass(frozen=True)
class LMSetting:
    """What every job of a run shares (the learning rate is the job's)."""

    data: str  # a folder written by `prepare`
    size: str = "130m"
    seq_len: int = 2048
    batch_size: int = 8
    tokens: int = 10_000_000  # training tokens per job: steps = tokens // (batch_size * seq_len)
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    adam_beta2: float = 0.95
    factors: tuple = (1, 2, 4, 8, 16)
    max_eval_tokens: int = 524_288  # per evaluated length, test and validation
    eval_tokens_per_batch: int = 32_768
    # where the evaluated tokens lie: "spread", windows evenly spaced through the split (`eval_windows`);
    # "head", the split's first tokens, as the first run (2026-12-04) read them: one document of validation
    # and, in the test split, 70% one Korean page
    eval_windows: str = "spread"
    # the training step through torch.compile with this backend ("inductor" on a GPU; "" eager). Eager B'MOJO
    # trained at 0.37x the rate of compiled B'MOJO on an H200
    # (benchmarks/results/bench_model_h200_2026-12-03.md)
    compile: str = ""
    lr: float = 1e-3

    @property
    def steps(self):
        return self.tokens // (self.batch_size * self.seq_len)


def check_setting(setting):
    if setting.size not in WIDTHS:
        raise ValueError(f"size must be one of {sorted(WIDTHS)}, got {setting.size!r}")
    for name in ("seq_len", "batch_size", "tokens", "max_eval_tokens", "eval_tokens_per_batch"):
        value = getattr(setting, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if setting.steps < 1:
        raise ValueError(f"tokens must be >= batch_size * seq_len = {setting.batch_size * setting.seq_len} "
                         f"(one step), got {setting.tokens}")
    if not 0 <= setting.warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {setting.warmup_fraction}")
    if setting.compile not in ("", "inductor", "aot_eager", "eager"):
        raise ValueError(f"compile must be '' (eager), 'inductor', 'aot_eager' or 'eager', "
                         f"got {setting.compile!r}")
    if setting.eval_windows not in ("spread", "head"):
        raise ValueError(f"eval_windows must be 'spread' or 'head', got {setting.eval_windows!r}")
    if not setting.factors or any(isinstance(f, bool) or not isinstance(f, int) or f < 1
                                  for f in setting.factors):
        raise ValueError(f"factors must be integers >= 1, got {setting.factors!r}")
    return setting


def check_rows(rows):
    rows = tuple(rows)
    bad = [r for r in rows if r not in ROWS]
    if not rows or bad or len(set(rows)) != len(rows):
        raise ValueError(f"rows must be distinct names among {', '.join(ROWS)}, got {list(rows)}")
    return rows


def check_lrs(lrs):
    lrs = parity.check_lrs(lrs)
    if len(lrs) < MIN_LRS:
        raise ValueError(f"lrs must hold at least {MIN_LRS} learning rates (a sweep per family), got {lrs!r}")
    return lrs


# ---------------------------------------------------------------------------------------------
# Data: tokenized once, read by every job
# ---------------------------------------------------------------------------------------------


def prepare(folder, out_dir, vocab_size=8192, valid_fraction=0.05, test_fraction=0.05, log=print):
    """Splits the documents of `folder` (`lm.read_folder`) into train / valid / test by their order (the last
    `valid_fraction + test_fraction` of the text held out, contiguous: nothing leaks), trains a byte-level BPE
    of `vocab_size` ids on the training split only, and writes `{split}.u16` (the token stream, each document
    followed by EOS, as uint16), `tokenizer.json` and `meta.json` under `out_dir`. Returns the meta dict."""
    import numpy as np

    if not 0 < valid_fraction < 1 or not 0 < test_fraction < 1 or valid_fraction + test_fraction >= 1:
        raise ValueError(f"valid_fraction and test_fraction must be in (0, 1) with a sum < 1, got "
                         f"{valid_fraction} and {test_fraction}")
    if not 259 <= vocab_size <= 2 ** 16:
        raise ValueError(f"vocab_size must be in [259, 65536] (uint16 ids), got {vocab_size}")
    docs = lm.read_folder(folder)
    train, held = lm.split_documents(docs, valid_fraction + test_fraction)
    valid, test = lm.split_documents(held, test_fraction / (valid_fraction + test_fraction))
    log(f"{len(docs)} documents; training a {vocab_size}-id BPE on the training split ...")
    tokenizer = lm.BPETokenizer.train(train, vocab_size)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    counts = {}
    for name, split in zip(SPLITS, (train, valid, test)):
        stream = lm.token_stream(split, tokenizer)
        np.asarray(stream, dtype=np.uint16).tofile(os.path.join(out_dir, f"{name}.u16"))
        counts[name] = len(stream)
        log(f"  {name}: {len(split)} documents, {len(stream):,} tokens")
    meta = dict(source=os.path.abspath(folder), documents=len(docs), vocab_size=tokenizer.vocab_size,
                tokens=counts, bytes=sum(len(d.encode("utf-8")) for d in docs),
                valid_fraction=valid_fraction, test_fraction=test_fraction)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def load_meta(data):
    path = os.path.join(data, "meta.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{data!r} holds no meta.json: write it with `python -m bmojo.eval.lm_sweep "
                                "prepare CORPUS_FOLDER --out DATA`")
    with open(path) as f:
        return json.load(f)


def load_split(data, name):
    """A split's token stream as a 1-D int64 tensor."""
    import numpy as np

    return torch.from_numpy(np.fromfile(os.path.join(data, f"{name}.u16"), dtype=np.uint16).astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def build_model(row, setting, vocab_size):
    """(model, summary) of a row at the setting's size, float32 on CPU; seed the RNG before calling."""
    source, family, overrides = ROWS[row]
    width = WIDTHS[setting.size]
    specials = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # lm.BPETokenizer's ids
    if source == "hf":
        from transformers import LlamaConfig, LlamaForCausalLM

        heads = width["num_attention_heads"]
        config = LlamaConfig(vocab_size=vocab_size, num_key_value_heads=heads, tie_word_embeddings=False,
                             max_position_embeddings=max(setting.factors) * setting.seq_len,
                             attn_implementation="sdpa", **width, **specials)
        model = LlamaForCausalLM(config)
        summary = {"class": "LlamaForCausalLM", "tie_word_embeddings": False, **width}
    else:
        import bmojo

        config = bmojo.preset_config(f"{family}-{setting.size}", **{**width, **overrides(width)},
                                     vocab_size=vocab_size, **specials)
        model = bmojo.BMojoForCausalLM(config)
        fields = ("mixer_types", "hidden_size", "num_hidden_layers", "intermediate_size", "ssm_expand",
                  "window_size", "fading_tokens", "eidetic_capacity", "tie_word_embeddings")
        summary = {k: getattr(config, k) for k in fields}
        summary["mixer_types"] = sorted(set(summary["mixer_types"]))
    return model, summary


# ---------------------------------------------------------------------------------------------
# One job
# ---------------------------------------------------------------------------------------------


def _progress_callback(row, lr, every):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One line every `every` steps: the job is alive, and how far it is."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and state.global_step % every == 0:
                print(f"    {row} lr {lr:g}: step {state.global_step}/{state.max_steps} "
                      f"loss {logs['loss']:.3f}", flush=True)

    return Progress()


def _recording_trainer():
    from transformers import Trainer

    class RecordingTrainer(Trainer):
        """Keeps each step's innovation term (B'MOJO's auxiliary loss, inside the logged loss) as a tensor, so
        the LM part of the training loss can be reported without a device sync per step."""

        innovation = []

        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
            if model.training and getattr(outputs, "innovation_loss", None) is not None:
                self.innovation.append(outputs.innovation_loss.detach())
            return (loss, outputs) if return_outputs else loss

    return RecordingTrainer


def run_job(row, seed, setting, device="cpu"):
    """Trains and evaluates one (row, lr = setting.lr, seed); returns its result. Never raises."""
    result = dict(row=row, lr=setting.lr, seed=seed, params=None, error=None, valid=None, test=None)
    start = time.time()
    try:
        import tempfile

        from transformers import PrinterCallback, TrainingArguments

        meta = load_meta(setting.data)
        train, valid, test = (load_split(setting.data, name) for name in SPLITS)
        dev = torch.device(device)
        cuda = dev.type == "cuda"
        torch.manual_seed(seed)
        model, summary = build_model(row, setting, meta["vocab_size"])
        model = model.to(dev)
        steps = setting.steps
        tokens = steps * setting.batch_size * setting.seq_len
        result.update(params=sum(p.numel() for p in model.parameters()), config=summary, steps=steps,
                      tokens=tokens, epochs=tokens / len(train))
        logging_steps = max(1, steps // 50)
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(
                output_dir=tmp, max_steps=steps, per_device_train_batch_size=setting.batch_size,
                learning_rate=setting.lr, warmup_steps=max(1, round(setting.warmup_fraction * steps)),
                lr_scheduler_type="cosine", weight_decay=setting.weight_decay, adam_beta1=0.9,
                adam_beta2=setting.adam_beta2, max_grad_norm=1.0, logging_steps=logging_steps,
                save_strategy="no", report_to=[], seed=seed, data_seed=seed, disable_tqdm=True, bf16=cuda,
                use_cpu=not cuda, dataloader_num_workers=0, torch_compile=bool(setting.compile),
                torch_compile_backend=setting.compile or None)
            progress = _progress_callback(row, setting.lr, max(1, steps // 10))
            trainer = _recording_trainer()(model=model, args=args, callbacks=[progress],
                                           train_dataset=lm.Blocks(train, setting.seq_len))
            trainer.innovation = []
            trainer.remove_callback(PrinterCallback)  # a dict a logging step: our line every 10% instead
            train_start = time.time()
            trainer.train()
            if cuda:
                torch.cuda.synchronize(dev)
            train_seconds = time.time() - train_start
        losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
        tail = [loss for _, loss in losses[-3:]]
        # the last three logged losses average the last 3 * logging_steps steps; so does this
        innovation = [float(t) for t in trainer.innovation[-3 * logging_steps:]]
        innovation = sum(innovation) / len(innovation) if innovation else 0.0
        result.update(final_innovation_loss=innovation,
                      final_lm_loss=sum(tail) / len(tail) - innovation if tail else None,
                      train_seconds=round(train_seconds, 1),
                      tokens_per_second=round(result["tokens"] / train_seconds),
                      peak_memory_gib=round(torch.cuda.max_memory_allocated(dev) / 2 ** 30, 2)
                      if cuda else None,
                      loss_curve=losses, final_train_loss=sum(tail) / len(tail) if tail else None)
        model.eval()
        evaluate = functools.partial(_perplexity, model, setting, cuda)
        result["valid"] = evaluate(eval_windows(valid, setting.seq_len, setting), setting.seq_len)
        test = eval_windows(test, max(setting.factors) * setting.seq_len, setting)
        result["test"] = [dict(factor=f, **evaluate(test, f * setting.seq_len)) for f in setting.factors]
    except Exception as err:  # one failing job must not end the run: its row says why
        result["error"] = f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exc(limit=-3))
    result["seconds"] = round(time.time() - start, 1)
    return result


def eval_windows(stream, span, setting):
    """The evaluated tokens of a split: up to `max_eval_tokens // span` windows of `span` tokens, evenly
    spaced from the split's start to its end ("spread"), or its first ones ("head"), joined. Every evaluated
    length divides `span`, so each length reads exactly these tokens in blocks that never cross two
    windows."""
    count = max(1, min(len(stream) // span, setting.max_eval_tokens // span))
    if setting.eval_windows == "head":
        return stream[: count * span]
    last = len(stream) - span
    starts = [round(i * last / (count - 1)) if count > 1 else 0 for i in range(count)]
    return torch.cat([stream[s: s + span] for s in starts])


def _perplexity(model, setting, bf16, stream, length):
    batch = max(1, setting.eval_tokens_per_batch // length)
    return lm.perplexity(model, stream, length, batch_size=batch, bf16=bf16)


# ---------------------------------------------------------------------------------------------
# Summary, tables, plots
# ---------------------------------------------------------------------------------------------


def _valid_ppl(job):
    if job is None or job.get("error") or not job.get("valid"):
        return None
    ppl = job["valid"]["ppl"]
    return ppl if math.isfinite(ppl) else None


def best_lr(jobs_by_lr):
    """The learning rate whose job has the lowest validation perplexity (a diverged or failed job never
    wins; on a tie the first given); None if no job of the sweep has finished."""
    scored = [(ppl, i, lr) for i, (lr, job) in enumerate(jobs_by_lr.items())
              if (ppl := _valid_ppl(job)) is not None]
    return min(scored)[2] if scored else None


def summarize(jobs, rows, lrs, seed=0):
    """Per row: the sweep (validation perplexity per lr), the best lr, and that job's test perplexities."""
    by_key = {(j["row"], j["lr"], j["seed"]): j for j in jobs}
    summary = []
    for row in rows:
        by_lr = {lr: by_key.get((row, lr, seed)) for lr in lrs}
        best = best_lr(by_lr)
        job = by_lr.get(best) if best is not None else None
        seed_runs = sorted(
            (dict(seed=j["seed"], valid_ppl=j["valid"]["ppl"], test=j["test"]) for j in jobs
             if j["row"] == row and j["lr"] == best and not j.get("error") and j.get("test")),
            key=lambda run: run["seed"])
        at_t = [run["test"][0]["ppl"] for run in seed_runs]
        summary.append(dict(
            row=row, best_lr=best, complete=all(j is not None and not j.get("error") for j in by_lr.values()),
            seed_runs=seed_runs, seeds_test_ppl_at_T={run["seed"]: p for run, p in zip(seed_runs, at_t)},
            seeds_mean_test_ppl_at_T=sum(at_t) / len(at_t) if at_t else None,
            sweep={format(lr, "g"): _valid_ppl(j) for lr, j in by_lr.items()},
            params=job["params"] if job else None, test=job["test"] if job else None,
            final_train_loss=job["final_train_loss"] if job else None,
            # the LM part of it (B'MOJO's innovation term taken out); not recorded before 2026-12-04's fix
            final_lm_loss=job.get("final_lm_loss") if job else None,
            best_at_edge=best is not None and best in (min(lrs), max(lrs))))
    return summary


def _fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def markdown(summary, meta):
    s = meta["setting"]
    factors = s["factors"]
    lines = [f"# LM sweep: {meta['date']}", "", f"Command: `{meta['command']}`", "",
             f"Device: {meta['environment']['device']}; torch {meta['environment']['torch']}, transformers "
             f"{meta['environment']['transformers']}.", "",
             f"Data: {meta['data']['documents']} documents, {meta['data']['bytes']:,} bytes; BPE of "
             f"{meta['data']['vocab_size']} ids; tokens train / valid / test "
             + " / ".join(f"{meta['data']['tokens'][k]:,}" for k in SPLITS) + ".", "",
             f"Training: T = {s['seq_len']}, batch {s['batch_size']}, {s['tokens']:,} tokens per job "
             f"({meta['steps']} steps), warm-up {s['warmup_fraction']:.0%} then cosine, AdamW (0.9, "
             f"{s['adam_beta2']}), weight decay {s['weight_decay']}, seed {meta['seeds'][0]}.", "",
             "Each row at its best learning rate (lowest validation perplexity at T); test perplexity at "
             "each length (up to " + f"{s['max_eval_tokens']:,} tokens per length, "
             f"{s.get('eval_windows', 'head')}):", "",
             "| row | params (M) | best lr | final train loss | its LM part | " + " | ".join(
                 f"ppl @{f * s['seq_len']}" for f in factors) + " |",
             "|---|---|---|---|---|" + "---|" * len(factors)]
    for r in summary:
        ppl = {t["factor"]: t["ppl"] for t in r["test"] or []}
        edge = " (edge)" if r["best_at_edge"] else ""
        lines.append(f"| {r['row']} | {_fmt(r['params'] and r['params'] / 1e6, '.1f')} | "
                     f"{_fmt(r['best_lr'], 'g')}{edge}{'' if r['complete'] else ' (sweep incomplete)'} | "
                     f"{_fmt(r['final_train_loss'], '.3f')} | {_fmt(r['final_lm_loss'], '.3f')} | "
                     + " | ".join(_fmt(ppl.get(f)) for f in factors) + " |")
    lrs = meta["lrs"]
    lines += ["", "Validation perplexity at T per learning rate (the sweep):", "",
              "| row | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    lines += [f"| {r['row']} | " + " | ".join(_fmt(r["sweep"][format(lr, "g")]) for lr in lrs) + " |"
              for r in summary]
    lines += ["", "(edge): the best learning rate is the smallest or largest swept, so the optimum may lie "
              "outside the sweep."]
    if len(meta["seeds"]) > 1:
        longest = f"{factors[-1]}T"
        lines += ["", "Every seed at the best learning rate (validation perplexity at T; test perplexity "
                  f"at T and at {longest}):", "",
                  f"| row | seed | valid ppl @T | test ppl @T | test ppl @{longest} | @{longest} / @T |",
                  "|---|---|---|---|---|---|"]
        for r in summary:
            for run in r["seed_runs"]:
                ppl = {t["factor"]: t["ppl"] for t in run["test"]}
                far = ppl.get(factors[-1])
                lines.append(f"| {r['row']} | {run['seed']} | {run['valid_ppl']:.2f} | {ppl[1]:.2f} | "
                             f"{_fmt(far)} | {_fmt(far and far / ppl[1], '.3f')} |")
    return "\n".join(lines) + "\n"


def plot(summary, lrs, out_dir, seq_len):
    """`lengths.png` (test perplexity vs evaluated length, each row at its best lr) and `sweep.png`
    (validation perplexity vs lr per row). None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    best = {f"{r['row']} (lr {r['best_lr']:g})": r["test"] for r in summary if r["test"]}
    if best:
        lm.plot_lengths(best, os.path.join(out_dir, "lengths.png"), unit=f"BPE tokens; trained at {seq_len}")
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in summary:
        points = [(lr, r["sweep"][format(lr, "g")]) for lr in lrs if r["sweep"][format(lr, "g")] is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=r["row"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="peak learning rate", ylabel=f"validation perplexity at T = {seq_len}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "sweep.png"), dpi=120)
    plt.close(fig)
    return out_dir


def write_results(out_dir, jobs, meta):
    summary = summarize(jobs, meta["rows"], meta["lrs"], meta["seeds"][0])
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(dict(meta, summary=summary, jobs=jobs), f, indent=1, default=str)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(summary, meta))
    plot(summary, meta["lrs"], out_dir, meta["setting"]["seq_len"])
    return summary


def _comparable(setting_dict):
    # the data folder may move between machines (what it holds is checked through the meta); files written
    # before `eval_windows` existed evaluated the head of each split
    setting_dict = {"eval_windows": "head", "compile": "", **setting_dict}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in setting_dict.items()
            if k not in ("lr", "data")}


def load_finished(paths, setting, data_meta):
    """{(row, lr, seed): job} of the finished jobs of earlier results.json files (comma-separated paths)
    of the same setting and data, e.g. two runs of disjoint rows made side by side on one device."""
    finished = {}
    for path in paths.split(","):
        with open(path) as f:
            earlier = json.load(f)
        if _comparable(earlier["setting"]) != _comparable(asdict(setting)) or earlier["data"] != data_meta:
            raise ValueError(f"resume file {path} was written for another setting or data: only a run of the "
                             "same setting can be resumed")
        finished.update({(j["row"], j["lr"], j["seed"]): j for j in earlier["jobs"] if not j.get("error")})
    return finished


def run_sweep(rows, lrs, setting, seeds=(0,), device="cpu", workers=1, out_dir="lm_sweep", command=None,
              time_limit=None, resume=None, log=None):
    """Every (row, lr, seed) job, the middle learning rates first (a cut-short run then has each row's likely
    best); results rewritten after each. Returns the summary."""
    rows, lrs, setting = check_rows(rows), check_lrs(lrs), check_setting(setting)
    seeds = parity.check_seeds(seeds)
    log = log or functools.partial(print, flush=True)
    data_meta = load_meta(setting.data)
    for name in SPLITS:
        needed = setting.seq_len * (max(setting.factors) if name == "test" else 1)
        if data_meta["tokens"][name] < needed:
            raise ValueError(f"the {name} split holds {data_meta['tokens'][name]:,} tokens, fewer than "
                             f"{needed:,} (seq_len x the largest factor for test)")
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(command=command or "run_sweep(...)",
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                environment=parity._environment(device), setting=asdict(setting), steps=setting.steps,
                data=data_meta, rows=list(rows), lrs=list(lrs), seeds=list(seeds), workers=workers,
                resumed_from=resume, epochs=setting.steps * setting.batch_size * setting.seq_len
                / data_meta["tokens"]["train"])
    finished = load_finished(resume, setting, data_meta) if resume else {}
    middle = sorted(lrs, key=lambda lr: abs(math.log(lr) - sum(map(math.log, lrs)) / len(lrs)))
    # Zoology's protocol: the sweep at the first seed; the other seeds at each row's best lr once it is known
    order = [(row, lr, seeds[0]) for lr in middle for row in rows]
    best = {row: best_lr({lr: finished.get((row, lr, seeds[0])) for lr in lrs}) for row in rows}
    swept = {row for row in rows if all((row, lr, seeds[0]) in finished for lr in lrs)}
    order += [(row, best[row], seed) for seed in seeds[1:] for row in rows if row in swept]
    jobs = [finished[k] for k in order if k in finished]
    todo = [k for k in order if k not in finished]
    if jobs:
        log(f"resumed {len(jobs)} finished job(s) from {resume}; {len(todo)} to run")
    if len(seeds) > 1 and len(swept) < len(rows):
        log(f"seeds {list(seeds[1:])} wait for the sweep of {[r for r in rows if r not in swept]}: run again "
            "with --resume once it has finished")
    log(f"{len(todo)} job(s): {setting.steps} steps of {setting.batch_size} x {setting.seq_len} tokens each "
        f"({meta['epochs']:.2f} epochs of the training split), {workers} at once on {device}")
    start, resumed = time.time(), len(jobs)

    def record(job):
        jobs.append(job)
        done, elapsed = len(jobs) - resumed, time.time() - start
        eta = elapsed / done * (len(todo) - done)
        what = (job["error"] or "").splitlines()[0] if job["error"] else (
            f"valid ppl {job['valid']['ppl']:.2f}, test ppl @T {job['test'][0]['ppl']:.2f}, "
            f"{job['tokens_per_second']:,} tok/s")
        log(f"[{done}/{len(todo)}] {job['row']} lr {job['lr']:g} seed {job['seed']}: {what} "
            f"({job['seconds']:.0f} s) | elapsed {elapsed:.0f} s, ETA {eta:.0f} s")
        write_results(out_dir, jobs, meta)

    def skipped(row, lr, seed, why):
        return dict(row=row, lr=lr, seed=seed, params=None, valid=None, test=None, error=why, seconds=0.0)

    parity.run_jobs(todo, parity.job_devices(device, len(todo)), setting, workers, time_limit, start, record,
                    skipped, job=run_job)
    summary = write_results(out_dir, jobs, meta)
    log(f"done in {time.time() - start:.0f} s: {os.path.join(out_dir, 'results.md')}")
    return summary


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def build_parser():
    p = argparse.ArgumentParser(prog="python -m bmojo.eval.lm_sweep", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="tokenize a corpus folder once: train / valid / test streams")
    prep.add_argument("corpus", help="folder of .txt / .jsonl (e.g. from python -m bmojo.eval.corpus)")
    prep.add_argument("--out", required=True)
    prep.add_argument("--bpe-vocab-size", type=int, default=8192)
    prep.add_argument("--valid-fraction", type=float, default=0.05)
    prep.add_argument("--test-fraction", type=float, default=0.05)
    run = sub.add_parser("run", help="train every row at every lr; perplexity at 1x..16x the training length")
    run.add_argument("data", help="folder written by `prepare`")
    run.add_argument("--rows", default="bmojo,transformer,hf-llama,mamba2-hf-like",
                     help=f"comma-separated among {', '.join(ROWS)}")
    run.add_argument("--lrs", default="3e-4,1e-3,3e-3", help=f"at least {MIN_LRS} peak learning rates")
    run.add_argument("--seeds", default="0")
    run.add_argument("--size", default="130m", choices=sorted(WIDTHS))
    run.add_argument("--seq-len", type=int, default=2048)
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--tokens", type=int, default=10_000_000, help="training tokens per job")
    run.add_argument("--factors", default="1,2,4,8,16", help="evaluated lengths, in multiples of --seq-len")
    run.add_argument("--max-eval-tokens", type=int, default=524_288,
                     help="per evaluated length, in windows spread through the split")
    run.add_argument("--eval-windows", default="spread", choices=("spread", "head"),
                     help="evaluate windows spread evenly through each split (default) or its first tokens")
    run.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    run.add_argument("--workers", type=int, default=1, help="jobs at once, each its own process")
    run.add_argument("--time-limit", type=float, default=None,
                     help="seconds after which no new job starts (running ones finish); continue with "
                          "--resume")
    run.add_argument("--compile", default="", choices=("", "inductor", "aot_eager", "eager"),
                     help="train through torch.compile with this backend (default: eager)")
    run.add_argument("--resume", default=None,
                     help="earlier results.json file(s) of the same setting, comma-separated")
    run.add_argument("--out", default="lm_sweep")
    return p


def main(argv=None):
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command == "prepare":
        try:
            prepare(ns.corpus, ns.out, ns.bpe_vocab_size, ns.valid_fraction, ns.test_fraction,
                    log=functools.partial(print, flush=True))
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        device = str(lm.resolve_device(ns.device))
        setting = LMSetting(data=ns.data, size=ns.size, seq_len=ns.seq_len, batch_size=ns.batch_size,
                            tokens=ns.tokens, factors=parity._ints(ns.factors),
                            max_eval_tokens=ns.max_eval_tokens, eval_windows=ns.eval_windows,
                            compile=ns.compile)
        command = "python -m bmojo.eval.lm_sweep " + shlex.join(sys.argv[1:] if argv is None else argv)
        run_sweep(ns.rows.split(","), parity._floats(ns.lrs), setting, parity._ints(ns.seeds), device,
                  ns.workers, ns.out, command, ns.time_limit, ns.resume)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
