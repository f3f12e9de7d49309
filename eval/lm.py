"""Causal language modelling on a folder of text, and perplexity at and beyond the training length.

B'MOJO's memory costs do not grow with the context and nothing in it depends on absolute position
(DESIGN.md §3), so a model trained on T tokens should keep its perplexity at 2T..16T; a
Transformer with RoPE usually does not. This module trains any `BMojoForCausalLM` on a folder of
`.txt` / `.jsonl` files through the Hugging Face Trainer with a byte-level tokenizer (no download,
no vocabulary to fit) and measures perplexity at 1x..16x the training length.
"""

import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

SPECIAL = 3  # ids 0, 1, 2 are pad, bos, eos (BMojoConfig's defaults); byte b is id b + 3
VOCAB_SIZE = 256 + SPECIAL
EOS = 2


def encode(text):
    """Byte-level ids of `text` (UTF-8), shifted past the special ids."""
    return [b + SPECIAL for b in text.encode("utf-8")]


def decode(ids):
    return bytes(i - SPECIAL for i in ids if i >= SPECIAL).decode("utf-8", errors="replace")


def read_folder(folder):
    """Documents of a folder, in sorted file order: each `.txt` whole, each `.jsonl` line's "text"."""
    docs = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".txt"):
            with open(path, encoding="utf-8") as f:
                docs.append(f.read())
        elif name.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                docs.extend(json.loads(line)["text"] for line in f if line.strip())
    if not docs:
        raise ValueError(f"folder {folder!r} holds no .txt or .jsonl documents")
    return docs


def token_stream(docs):
    """One 1-D LongTensor: the documents' bytes, each followed by EOS."""
    ids = []
    for doc in docs:
        ids.extend(encode(doc))
        ids.append(EOS)
    return torch.tensor(ids, dtype=torch.long)


def split_stream(stream, test_fraction=0.1):
    """(train, test): the last `test_fraction` of the stream is held out (contiguous, so no leak)."""
    cut = int(len(stream) * (1 - test_fraction))
    return stream[:cut], stream[cut:]


class Blocks(torch.utils.data.Dataset):
    """Non-overlapping blocks of `length` tokens, as HF Trainer examples (labels = input_ids)."""

    def __init__(self, stream, length):
        if len(stream) < length:
            raise ValueError(f"the token stream ({len(stream)} tokens) is shorter than one block ({length})")
        self.blocks = stream[: len(stream) // length * length].view(-1, length)  # (n, length)

    def __len__(self):
        return self.blocks.shape[0]

    def __getitem__(self, i):
        return dict(input_ids=self.blocks[i], labels=self.blocks[i])


def train_lm(model, stream, seq_len, output_dir, **training_args):
    """Trains `model` on blocks of `stream` with the HF Trainer; `training_args` go to TrainingArguments."""
    from transformers import Trainer, TrainingArguments

    defaults = dict(per_device_train_batch_size=8, learning_rate=1e-3, max_steps=100, warmup_steps=10,
                    lr_scheduler_type="cosine", weight_decay=0.1, logging_steps=10, save_strategy="no",
                    report_to=[], seed=0, disable_tqdm=True)
    args = TrainingArguments(output_dir=output_dir, **{**defaults, **training_args})
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(stream, seq_len))
    trainer.train()
    return trainer


@torch.no_grad()
def perplexity(model, stream, length, batch_size=8, max_blocks=None):
    """exp(mean next-token NLL) over non-overlapping blocks of `length` tokens.

    Computed from the logits, not from `outputs.loss`, which for B'MOJO also carries the
    innovation loss. Every block starts from an empty state: this measures a model reading
    `length` tokens, the quantity length generalisation is about."""
    model.eval()
    device = next(model.parameters()).device
    blocks = Blocks(stream, length).blocks
    if max_blocks is not None:
        blocks = blocks[:max_blocks]
    nll, count = 0.0, 0
    for start in range(0, blocks.shape[0], batch_size):
        ids = blocks[start: start + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()  # (B, L-1, V)
        nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                     reduction="sum"))
        count += ids[:, 1:].numel()
    return dict(length=length, nll=nll / count, ppl=math.exp(nll / count), tokens=count,
                blocks=int(blocks.shape[0]))


def length_generalization(model, stream, train_len, factors=(1, 2, 4, 8, 16), batch_size=8, max_tokens=None):
    """Perplexity at each `factor * train_len`, over the same tokens for every length where it can."""
    rows = []
    for factor in factors:
        length = factor * train_len
        if len(stream) < length:
            break
        max_blocks = None if max_tokens is None else max(1, max_tokens // length)
        rows.append({"factor": factor, **perplexity(model, stream, length, batch_size, max_blocks)})
    return rows


def plot_lengths(results, path):
    """Perplexity vs evaluation length, one line per model. `results`: {label: rows}."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in results.items():
        ax.plot([r["length"] for r in rows], [r["ppl"] for r in rows], marker="o", label=label)
    ax.set(xscale="log", xlabel="evaluation length (tokens)", ylabel="perplexity (bytes)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build_parser():
    p = argparse.ArgumentParser(prog="python -m bmojo.eval.lm",
                                description="Train byte-level causal LMs on a folder of .txt/.jsonl and "
                                            "measure perplexity at 1x..16x the training length.")
    p.add_argument("data", help="folder of .txt / .jsonl files")
    p.add_argument("--presets", default="tiny,transformer-tiny,mamba2-tiny",
                   help="comma-separated preset names (vocab is set to 259 bytes + specials)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--factors", default="1,2,4,8,16")
    p.add_argument("--max-eval-tokens", type=int, default=65536)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="lm_results")
    return p


def main(argv=None):
    import bmojo

    ns = build_parser().parse_args(argv)
    os.makedirs(ns.out, exist_ok=True)
    train, test = split_stream(token_stream(read_folder(ns.data)))
    factors = tuple(int(x) for x in ns.factors.split(","))
    results = {}
    for name in ns.presets.split(","):
        torch.manual_seed(ns.seed)
        model = bmojo.BMojoForCausalLM(bmojo.preset_config(name, vocab_size=VOCAB_SIZE))
        train_lm(model, train, ns.seq_len, os.path.join(ns.out, "trainer"), max_steps=ns.steps,
                 per_device_train_batch_size=ns.batch_size, learning_rate=ns.lr, seed=ns.seed)
        results[name] = length_generalization(model, test, ns.seq_len, factors,
                                              max_tokens=ns.max_eval_tokens)
        for r in results[name]:
            print(f"{name:>20} length {r['length']:>6}: ppl {r['ppl']:.3f} ({r['tokens']} tokens)",
                  flush=True)
    with open(os.path.join(ns.out, "results.json"), "w") as f:
        json.dump(dict(args=vars(ns), results=results), f, indent=1)
    path = plot_lengths(results, os.path.join(ns.out, "lengths.png"))
    print(f"plot: {path}" if path else "plot skipped: matplotlib is not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
