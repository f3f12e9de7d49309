"""Causal language modelling on a folder of text, and perplexity at and beyond the training length.

B'MOJO's memory costs do not grow with the context and nothing in it depends on absolute position
(DESIGN.md §3), so a model trained on T tokens should keep its perplexity at 2T..16T; a
Transformer with RoPE usually does not. This module trains any `BMojoForCausalLM` on a folder of
`.txt` / `.jsonl` files (or a `datasets` data set) through the Hugging Face Trainer and measures
perplexity at 1x..16x the training length. The tokenizer is byte-level by default (no download, no
vocabulary to fit), or a byte-level BPE trained with `tokenizers` on the training split only
(`--tokenizer bpe`, saved as `tokenizer.json` next to the results). For a real English corpus that
needs no network, see `bmojo.eval.corpus` (the Python documentation shipped by Debian).
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


class ByteTokenizer:
    """UTF-8 bytes shifted past pad, bos, eos (`encode` / `decode` above)."""

    kind = "byte"
    vocab_size = VOCAB_SIZE

    def encode(self, text):
        return encode(text)

    def encode_batch(self, texts):
        return [encode(t) for t in texts]

    def decode(self, ids):
        return decode(ids)


BPE_SPECIALS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2, as in BMojoConfig and the byte tokenizer


class BPETokenizer:
    """A byte-level BPE (`tokenizers`): every string encodes, and decodes back exactly. Ids 0, 1, 2
    are pad, bos, eos; the 256 byte symbols follow, then the learned merges."""

    kind = "bpe"

    def __init__(self, tokenizer):
        ids = [tokenizer.token_to_id(t) for t in BPE_SPECIALS]
        if ids != [0, 1, 2]:
            raise ValueError(f"a BPE tokenizer for bmojo.eval.lm must give {BPE_SPECIALS} the ids 0, 1, 2; "
                             f"this one gives {ids}")
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, docs, vocab_size=8192, min_frequency=2):
        """Learns merges from `docs` (pass the training split only) up to `vocab_size` ids in all."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + len(BPE_SPECIALS):
            raise ValueError(f"the BPE vocabulary must hold the {len(alphabet)} bytes and "
                             f"{len(BPE_SPECIALS)} special ids: vocab_size >= "
                             f"{len(alphabet) + len(BPE_SPECIALS)}, got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(BPE_SPECIALS), initial_alphabet=alphabet,
                                      show_progress=False)
        tok.train_from_iterator(docs, trainer, length=len(docs))
        return cls(tok)

    @classmethod
    def load(cls, path):
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(path))

    def save(self, path):
        self.tokenizer.save(path)

    @property
    def vocab_size(self):
        return self.tokenizer.get_vocab_size()

    def encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids):
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


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


def documents_from_dataset(dataset, text_field="text"):
    """The non-blank strings of column `text_field` of a `datasets.Dataset` (or any list of dicts)."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None and text_field not in columns:
        raise ValueError(f"the data set has no column {text_field!r} (its columns: {columns}); "
                         "pick one with --text-field")
    texts = dataset[text_field] if columns is not None else [row[text_field] for row in dataset]
    docs = [t for t in texts if isinstance(t, str) and t.strip()]
    if not docs:
        raise ValueError(f"column {text_field!r} of the data set holds no non-blank text")
    return docs


def load_hf_documents(spec, split="train", text_field="text", load_dataset=None):
    """Documents of a Hugging Face data set, `spec` = "NAME" or "NAME:CONFIG", via `datasets.load_dataset`
    (or the `load_dataset` given). Failing to load (offline, wrong name...) raises a RuntimeError that
    says what was asked for and what to do instead."""
    name, _, config = spec.partition(":")
    if load_dataset is None:
        try:
            from datasets import load_dataset
        except ImportError as e:
            raise RuntimeError("--hf-dataset needs the `datasets` package: pip install 'bmojo[eval]'") from e
    try:
        dataset = load_dataset(name, config or None, split=split)
    except Exception as e:  # the library's errors vary with version and with what is missing
        offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
                   if os.environ.get(v, "0").lower() not in ("", "0", "false", "no")]
        raise RuntimeError(
            f"could not load the Hugging Face data set {name!r} (config {config or None!r}, "
            f"split {split!r}): {type(e).__name__}: {e}\n"
            "Loading it needs the Hugging Face Hub (network) or a copy in the local datasets cache"
            + (f" ({' and '.join(offline)} set)" if offline else "") + "; check the name, config and split. "
            "Offline, pass a folder of .txt/.jsonl instead, e.g. the Python documentation: "
            "`python -m bmojo.eval.corpus --out DIR`.") from e
    return documents_from_dataset(dataset, text_field)


def split_documents(docs, test_fraction=0.1):
    """(train_docs, test_docs): the last `test_fraction` of the text (in characters, each document
    counting one more for its EOS) is held out, contiguous so that nothing leaks; the document the cut
    falls in is split in two. Tokenizers are fitted on `train_docs` only."""
    total = sum(len(d) + 1 for d in docs)
    cut = int(total * (1 - test_fraction))
    train, seen = [], 0
    for i, doc in enumerate(docs):
        if seen + len(doc) + 1 <= cut:
            train.append(doc)
            seen += len(doc) + 1
            continue
        head, tail = doc[: cut - seen], doc[cut - seen:]
        return train + ([head] if head else []), ([tail] if tail else []) + list(docs[i + 1:])
    return train, []


def token_stream(docs, tokenizer=None):
    """One 1-D LongTensor: the documents' tokens (bytes by default), each document followed by EOS."""
    tokenizer = tokenizer or ByteTokenizer()
    ids = []
    for doc_ids in tokenizer.encode_batch(docs):
        ids.extend(doc_ids)
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
def perplexity(model, stream, length, batch_size=8, max_blocks=None, bf16=False):
    """exp(mean next-token NLL) over non-overlapping blocks of `length` tokens, on the model's device
    (under bf16 autocast if `bf16`).

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
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        logits = logits.float()  # (B, L-1, V)
        nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                     reduction="sum"))
        count += ids[:, 1:].numel()
    return dict(length=length, nll=nll / count, ppl=math.exp(nll / count), tokens=count,
                blocks=int(blocks.shape[0]))


def length_generalization(model, stream, train_len, factors=(1, 2, 4, 8, 16), batch_size=8, max_tokens=None,
                          bf16=False):
    """Perplexity at each `factor * train_len`, over the same tokens for every length where it can."""
    rows = []
    for factor in factors:
        length = factor * train_len
        if len(stream) < length:
            break
        max_blocks = None if max_tokens is None else max(1, max_tokens // length)
        rows.append({"factor": factor, **perplexity(model, stream, length, batch_size, max_blocks, bf16)})
    return rows


def plot_lengths(results, path, unit="bytes"):
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
    lengths = sorted({r["length"] for rows in results.values() for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set(xlabel="evaluation length (tokens)", ylabel=f"perplexity ({unit})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def resolve_device(name):
    """torch.device for "cpu", "cuda" or "auto" (CUDA when there is one)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); "
                           "use --device cpu or auto")
    return device


def make_tokenizer(kind, train_docs, vocab_size=8192, path=None):
    """The byte tokenizer, or a BPE loaded from `path` or else trained on `train_docs`."""
    if kind == "byte":
        return ByteTokenizer()
    if kind != "bpe":
        raise ValueError(f"tokenizer must be 'byte' or 'bpe', got {kind!r}")
    return BPETokenizer.load(path) if path else BPETokenizer.train(train_docs, vocab_size)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m bmojo.eval.lm",
                                description="Train causal LMs on a folder of .txt/.jsonl (or a Hugging "
                                            "Face data set) and measure perplexity at 1x..16x the "
                                            "training length.")
    p.add_argument("data", nargs="?", default=None,
                   help="folder of .txt / .jsonl files (e.g. from python -m bmojo.eval.corpus)")
    p.add_argument("--hf-dataset", default=None, metavar="NAME[:CONFIG]",
                   help="instead of a folder: a data set loaded with datasets.load_dataset (needs the Hub "
                        "or a cached copy), e.g. wikitext:wikitext-103-raw-v1")
    p.add_argument("--hf-split", default="train", help="split of --hf-dataset (default: train)")
    p.add_argument("--text-field", default="text", help="column of --hf-dataset holding the text")
    p.add_argument("--test-fraction", type=float, default=0.1, help="held-out tail of the text")
    p.add_argument("--tokenizer", choices=("byte", "bpe"), default="byte",
                   help="byte: UTF-8 bytes (259 ids); bpe: byte-level BPE trained on the training split "
                        "and saved as OUT/tokenizer.json")
    p.add_argument("--bpe-vocab-size", type=int, default=8192)
    p.add_argument("--tokenizer-file", default=None,
                   help="with --tokenizer bpe: load this tokenizer.json instead of training one")
    p.add_argument("--presets", default="tiny,transformer-tiny,mamba2-tiny",
                   help="comma-separated preset names (the vocabulary size follows the tokenizer)")
    p.add_argument("--hidden-size", type=int, default=None, help="override the presets' hidden_size")
    p.add_argument("--layers", type=int, default=None, help="override the presets' num_hidden_layers")
    p.add_argument("--heads", type=int, default=None,
                   help="override the presets' num_attention_heads (and num_key_value_heads: no GQA)")
    p.add_argument("--intermediate-size", type=int, default=None,
                   help="override the presets' intermediate_size")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--factors", default="1,2,4,8,16")
    p.add_argument("--max-eval-tokens", type=int, default=65536)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto (default): CUDA when there is one (pick the GPU with CUDA_VISIBLE_DEVICES)")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 mixed precision: TrainingArguments(bf16=True), bf16 autocast in the evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="lm_results")
    return p


def model_overrides(ns):
    names = dict(hidden_size="hidden_size", layers="num_hidden_layers", heads="num_attention_heads",
                 intermediate_size="intermediate_size")
    out = {field: getattr(ns, arg) for arg, field in names.items() if getattr(ns, arg) is not None}
    if "num_attention_heads" in out:  # keep GQA valid and head_dim derived from the new shape
        out.setdefault("num_key_value_heads", out["num_attention_heads"])
    return out


def main(argv=None):
    import bmojo

    parser = build_parser()
    ns = parser.parse_args(argv)
    if (ns.data is None) == (ns.hf_dataset is None):
        parser.error("give either a data folder or --hf-dataset (exactly one)")
    if ns.tokenizer_file and ns.tokenizer != "bpe":
        parser.error("--tokenizer-file goes with --tokenizer bpe")
    try:
        device = resolve_device(ns.device)
        if ns.data:
            docs = read_folder(ns.data)
        else:
            docs = load_hf_documents(ns.hf_dataset, ns.hf_split, ns.text_field)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(ns.out, exist_ok=True)
    train_docs, test_docs = split_documents(docs, ns.test_fraction)
    tokenizer = make_tokenizer(ns.tokenizer, train_docs, ns.bpe_vocab_size, ns.tokenizer_file)
    if isinstance(tokenizer, BPETokenizer):
        tokenizer.save(os.path.join(ns.out, "tokenizer.json"))
    train, test = token_stream(train_docs, tokenizer), token_stream(test_docs, tokenizer)
    data = dict(documents=len(docs), train_tokens=len(train), test_tokens=len(test), tokenizer=tokenizer.kind,
                vocab_size=tokenizer.vocab_size, device=str(device))
    print(f"data: {len(docs)} documents; {len(train)} train / {len(test)} test tokens "
          f"({tokenizer.kind} tokenizer, {tokenizer.vocab_size} ids); device {device}", flush=True)
    factors = tuple(int(x) for x in ns.factors.split(","))
    overrides = model_overrides(ns)
    results = {}
    for name in ns.presets.split(","):
        torch.manual_seed(ns.seed)
        config = bmojo.preset_config(name, vocab_size=tokenizer.vocab_size, **overrides)
        model = bmojo.BMojoForCausalLM(config).to(device)
        train_lm(model, train, ns.seq_len, os.path.join(ns.out, "trainer"), max_steps=ns.steps,
                 per_device_train_batch_size=ns.batch_size, learning_rate=ns.lr, seed=ns.seed,
                 use_cpu=device.type == "cpu", bf16=ns.bf16)
        results[name] = length_generalization(model, test, ns.seq_len, factors, batch_size=ns.eval_batch_size,
                                              max_tokens=ns.max_eval_tokens, bf16=ns.bf16)
        for r in results[name]:
            print(f"{name:>20} length {r['length']:>6}: ppl {r['ppl']:.3f} ({r['tokens']} tokens)",
                  flush=True)
    with open(os.path.join(ns.out, "results.json"), "w") as f:
        json.dump(dict(args=vars(ns), data=data, results=results), f, indent=1)
    unit = "bytes" if tokenizer.kind == "byte" else f"BPE tokens, {tokenizer.vocab_size} ids"
    path = plot_lengths(results, os.path.join(ns.out, "lengths.png"), unit)
    print(f"plot: {path}" if path else "plot skipped: matplotlib is not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
