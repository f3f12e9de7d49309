"""Multi-query associative recall (MQAR), the synthetic recall task of Arora et al., "Zoology:
Measuring and Improving Recall in Efficient Language Models" (2023, arXiv 2312.04927).

A sequence first lists `num_pairs` key-value pairs, then asks for some keys again; the model
must emit each queried key's value. Only those answers are scored (labels are -100 elsewhere),
so accuracy measures recall alone, and it falls as soon as the model's decoding state cannot
hold the pairs: the property B'MOJO's eidetic store is meant to buy back from a fading SSM state.

Layout of one sequence of `seq_len` tokens (our own realization of the Zoology task):

    k_1 v_1 k_2 v_2 ... k_N v_N | f f k_3 v_3 f f f f k_1 v_1 f f ...
    <------ 2N tokens ------->   <-- query region: slots of two tokens -->

- token 0 is the filler `f`; keys come from ids [1, 1 + K), values from [1 + K, 1 + 2K), with
  K = (vocab_size - 1) // 2, so a key can never be mistaken for a value;
- keys are distinct within a sequence, and so are values;
- `num_queries` distinct pairs (default: all of them) are asked once each, in random slots of the
  query region, which starts `gap` filler tokens after the last pair (default 0: right after it;
  a gap longer than a model's window puts the pairs out of its sight);
- labels follow the Hugging Face convention (the model shifts them): `labels[t] = v` at the
  position of each queried value, -100 elsewhere.

`layout` chooses between two realizations of the query region:
- "shown" (default): slots drawn uniformly, and each queried value is written after its key (as
  drawn above), so later queries see earlier answers. Before it learns the association a model
  can still answer with a value not asked yet, a plateau at accuracy H_N / N (0.340 for 8 pairs).
- "zoology": Zoology's layout: the slot after a queried key holds the filler, never the answer
  (answers are only labels), and slots are drawn without replacement with probability
  proportional to a * x^(a - 1), x = 1, 2, ... the slot index, a = 0.01 (Zoology's `power_a`), so
  queries crowd the start of the query region; the i-th draw places the i-th listed pair (the first
  `num_queries` pairs are asked), so queries mostly come in the listing's order. The plateau is
  1 / N. Zoology also replaces the fillers by random tokens (`random_non_queries`); we keep them 0.
  On issue 12's setting (8 pairs in 64 tokens, vocab 256) HF Llama left the plateau and reached
  1.000 on this layout within 3,000 steps, where it sat at the plateau on "shown"
  (eval/results/parity_zoology/, eval/results/parity_gpu2/).

Train and test sets come from disjoint seeds (2*seed and 2*seed + 1), and any test sequence that
also occurs in the training set is dropped, so test accuracy is always on unseen sequences.
"""

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import torch

FILLER = 0
LAYOUTS = ("shown", "zoology")
ZOOLOGY_POWER_A = 0.01
SEQ_LEN_RANGE = (64, 2048)
PAIRS_RANGE = (1, 256)  # Zoology's generator takes any count; the quickstart demo uses 3
_BLOCK = 2048  # examples generated at once: bounds the (block, K) random matrix used to sample keys


def _check_int(name, value, low, high=None):
    bad = isinstance(value, bool) or not isinstance(value, int) or value < low
    if bad or (high is not None and value > high):
        upper = "" if high is None else f" and <= {high}"
        raise ValueError(f"MQARTask.{name} must be an integer >= {low}{upper}, got {value!r}")


@dataclass(frozen=True)
class MQARTask:
    """One MQAR task. Every field is checked here, so a bad setting fails before any training.

    Args:
        vocab_size: token ids used, 0 (filler) to vocab_size - 1; default 8192 as in Zoology.
        seq_len: tokens per sequence, 64 to 2048; must hold 2 * num_pairs + gap + 2 * num_queries.
        num_pairs: key-value pairs per sequence, 1 to 256.
        num_queries: keys asked per sequence, 1 to num_pairs (None: num_pairs).
        gap: filler tokens between the last pair and the query region, >= 0 (default 0).
        num_train, num_test: sequences per split.
        seed: the split seeds are 2*seed (train) and 2*seed + 1 (test).
        layout: "shown" (answers follow their keys, uniform slots) or "zoology" (answers hidden, power-law
            slots); see the module docstring.
    """

    vocab_size: int = 8192
    seq_len: int = 256
    num_pairs: int = 16
    num_queries: int | None = None
    gap: int = 0
    num_train: int = 20_000
    num_test: int = 1_000
    seed: int = 0
    layout: str = "shown"

    def __post_init__(self):
        _check_int("seq_len", self.seq_len, *SEQ_LEN_RANGE)
        _check_int("num_pairs", self.num_pairs, *PAIRS_RANGE)
        if self.num_queries is None:
            object.__setattr__(self, "num_queries", self.num_pairs)
        _check_int("num_queries", self.num_queries, 1, self.num_pairs)
        _check_int("gap", self.gap, 0)
        needed = 2 * self.num_pairs + self.gap + 2 * self.num_queries
        if self.seq_len < needed:
            raise ValueError(f"MQARTask.seq_len must be >= 2 * num_pairs + gap + 2 * num_queries = {needed} "
                             f"(num_pairs={self.num_pairs}, gap={self.gap}, num_queries={self.num_queries}), "
                             f"got {self.seq_len}")
        _check_int("vocab_size", self.vocab_size, 2 * self.num_pairs + 1)
        _check_int("num_train", self.num_train, 1)
        _check_int("num_test", self.num_test, 1)
        _check_int("seed", self.seed, 0)
        if self.layout not in LAYOUTS:
            raise ValueError(f"MQARTask.layout must be one of {LAYOUTS}, got {self.layout!r}")

    @property
    def key_range(self):
        """Keys are ids [1, 1 + K); values are [1 + K, 1 + 2K)."""
        return (self.vocab_size - 1) // 2

    @property
    def chance(self):
        """Accuracy of guessing a uniformly random value id."""
        return 1.0 / self.key_range


def _distinct(n, k, pick, gen):
    """n rows of `pick` distinct integers from [0, k), uniformly: top-k of i.i.d. uniforms."""
    return torch.rand(n, k, generator=gen).topk(pick, dim=1).indices  # (n, pick)


def _generate_block(task, n, gen):
    """n sequences and their labels, each [n, seq_len] int64."""
    pairs, queries, k = task.num_pairs, task.num_queries, task.key_range
    keys = 1 + _distinct(n, k, pairs, gen)  # (n, N)
    values = 1 + k + _distinct(n, k, pairs, gen)  # (n, N)
    start = 2 * pairs + task.gap  # the query region's first position
    space = (task.seq_len - start) // 2
    if task.layout == "zoology":
        # Zoology's draw: slot x (1-based) with weight a * x^(a - 1), without replacement, the i-th draw for
        # the i-th listed pair; the draws come out roughly in increasing order, so queries mostly follow
        # the order of the listing, as in Zoology's generator
        asked = torch.arange(queries).expand(n, -1)
        weight = ZOOLOGY_POWER_A * torch.arange(1, space + 1, dtype=torch.float64) ** (ZOOLOGY_POWER_A - 1)
        slots = torch.multinomial(weight.expand(n, -1), queries, replacement=False, generator=gen)
    else:
        asked = _distinct(n, pairs, queries, gen)  # (n, Q): which pairs are queried
        slots = _distinct(n, space, queries, gen)  # (n, Q): where
    ids = torch.full((n, task.seq_len), FILLER, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    ids[:, 0:2 * pairs:2], ids[:, 1:2 * pairs:2] = keys, values
    pos = start + 2 * slots  # (n, Q): position of each query key
    asked_values = values.gather(1, asked)
    ids.scatter_(1, pos, keys.gather(1, asked))
    if task.layout == "shown":
        ids.scatter_(1, pos + 1, asked_values)
    labels.scatter_(1, pos + 1, asked_values)
    return ids, labels


def _row_hashes(ids):
    return {hash(row.numpy().tobytes()) for row in ids}


def _generate(task, n, seed, exclude=None):
    """n sequences from a generator seeded `seed`, skipping rows whose hash is in `exclude`."""
    gen = torch.Generator().manual_seed(seed)
    kept_ids, kept_labels, have = [], [], 0
    while have < n:
        ids, labels = _generate_block(task, min(_BLOCK, 2 * (n - have)), gen)
        if exclude:
            keep = torch.tensor([hash(row.numpy().tobytes()) not in exclude for row in ids], dtype=torch.bool)
            ids, labels = ids[keep], labels[keep]
        ids, labels = ids[: n - have], labels[: n - have]
        kept_ids.append(ids)
        kept_labels.append(labels)
        have += ids.shape[0]
    return torch.cat(kept_ids), torch.cat(kept_labels)


def make_splits(task):
    """(train, test): dicts of `input_ids` and `labels` [n, seq_len]; test rows never occur in train."""
    train_ids, train_labels = _generate(task, task.num_train, 2 * task.seed)
    test_ids, test_labels = _generate(task, task.num_test, 2 * task.seed + 1, exclude=_row_hashes(train_ids))
    return dict(input_ids=train_ids, labels=train_labels), dict(input_ids=test_ids, labels=test_labels)


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------


SCHEDULES = ("cosine", "onecycle")
COMPILE_BACKENDS = ("", "inductor", "aot_eager", "eager")


@dataclass
class TrainArgs:
    """A plain AdamW loop: on 2 CPU cores the HF Trainer's per-step overhead is a large share of a
    step of a tiny model, and MQAR needs no feature of it. Clipping 1.0. `schedule`: "cosine" is a linear
    warmup of `warmup` steps then cosine decay to 0; "onecycle" is PyTorch's `OneCycleLR` with its defaults
    (30% of the steps rising from lr/25, cosine down to lr/1e4, beta1 cycled 0.95 -> 0.85 -> 0.95; `warmup` is
    ignored), the schedule of issue 12's first table.
    `compile`: "" trains eagerly; otherwise the torch.compile backend of the forward and backward ("inductor"
    on a GPU fuses a tiny model's hundreds of small kernels; "aot_eager" / "eager" check tracing on a CPU).
    `bf16`: bfloat16 autocast around each forward (only there: autocast caches its casts of the weights
    until its context ends, so a context around the optimizer step would keep using stale copies)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 50
    seed: int = 0
    progress: bool = True
    bf16: bool = False
    schedule: str = "cosine"
    compile: str = ""

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            _check_int(name, getattr(self, name), 1)
        _check_int("warmup", self.warmup, 0)
        if not self.lr > 0:
            raise ValueError(f"TrainArgs.lr must be > 0, got {self.lr!r}")
        if not isinstance(self.bf16, bool):
            raise ValueError(f"TrainArgs.bf16 must be True or False, got {self.bf16!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainArgs.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.compile not in COMPILE_BACKENDS:
            raise ValueError(f"TrainArgs.compile must be one of {COMPILE_BACKENDS} ('' is eager), "
                             f"got {self.compile!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainArgs.weight_decay must be >= 0, got {self.weight_decay!r}")


def _progress(iterable, enabled, desc, total=None):
    """tqdm when it is installed and wanted (`total` gives it a length, so it shows an ETA); the bare
    iterable otherwise."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _lr_factor(step, args):
    if step < args.warmup:
        return (step + 1) / args.warmup
    done = (step - args.warmup) / max(1, args.steps - args.warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))


def _batches(n, args):
    """Batch index tensors for `args.steps` steps: seeded epoch permutations, so a run is reproducible."""
    gen = torch.Generator().manual_seed(args.seed)
    order, at = torch.randperm(n, generator=gen), 0
    for _ in range(args.steps):
        if at + args.batch_size > n:
            order, at = torch.randperm(n, generator=gen), 0
        yield order[at: at + args.batch_size]
        at += args.batch_size


def train(model, data, args=None, desc="mqar"):
    """Trains `model` (a causal LM on the HF contract) on `data` in place; returns the loss history.

    The loss is the model's own (`outputs.loss`: LM loss + B'MOJO's innovation loss). Seeds are
    fixed by `args.seed`, so the same model init, data and args give the same weights."""
    args = args or TrainArgs()
    torch.manual_seed(args.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    if args.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, args))
    model.train()
    device = next(model.parameters()).device
    # Every batch has the same shape, so one graph serves the whole run (dynamic=False: no shape guessing).
    forward = torch.compile(model, backend=args.compile, dynamic=False) if args.compile else model
    losses = []
    bar = _progress(_batches(data["input_ids"].shape[0], args), args.progress, desc, total=args.steps)
    for idx in bar:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            out = forward(input_ids=data["input_ids"][idx].to(device), labels=data["labels"][idx].to(device),
                          use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        # Kept on the device (a float() a step would wait for the GPU), as a copy: HF Llama's detached loss kept
        # about 12 MB per step alive on CPU (its 100th step at 1.9 GB against 1.0 GB with the copy; 256 tokens,
        # batch 64), so a 12,000-step CPU run was killed for memory.
        losses.append(out.loss.detach().clone())
        if hasattr(bar, "set_postfix") and len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{float(torch.stack(losses[-20:]).mean()):.3f}")
    model.eval()
    return torch.stack(losses).float().tolist() if losses else []


@torch.no_grad()
def evaluate(model, data, batch_size=256):
    """Recall accuracy: the share of queried values predicted exactly (argmax at the query key)."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for start in range(0, data["input_ids"].shape[0], batch_size):
        ids = data["input_ids"][start: start + batch_size].to(device)
        labels = data["labels"][start: start + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]  # (B, T-1, V): predicts token t+1
        target = labels[:, 1:]
        scored = target != -100
        correct += int((logits.argmax(-1)[scored] == target[scored]).sum())
        total += int(scored.sum())
    return correct / max(total, 1)


# ---------------------------------------------------------------------------------------------
# Matched memory budgets
# ---------------------------------------------------------------------------------------------


def state_floats(config, seq_len):
    """Decoding-state size in floats per layer (averaged over layers), the unit of every comparison.

    Per layer, with T_kv = 2 * num_key_value_heads * head_dim floats per cached token:
      mamba2            : H * P * N                        (SSM state; H = ssm_expand * d / P heads)
      sliding_attention : w * T_kv
      full_attention    : seq_len * T_kv                   (grows with the context)
      bmojo             : H * P * N + (w + n_f + M_e) * T_kv
    The depthwise-convolution state, the current chunk's eidetic candidates and the innovation
    scores are left out: they are small and do not grow with any budget knob."""
    token = 2 * config.num_key_value_heads * config.head_dim
    ssm = config.ssm_num_heads * config.ssm_head_dim * config.ssm_state_size
    total = 0
    for kind in config.mixer_types:
        if kind == "mamba2":
            total += ssm
        elif kind == "sliding_attention":
            total += config.window_size * token
        elif kind == "full_attention":
            total += seq_len * token
        else:
            tokens = config.window_size + config.fading_tokens + (config.eidetic_capacity or 0)
            total += ssm + tokens * token
    return total / len(config.mixer_types)


FAMILIES = ("bmojo", "bmojo-f", "mamba2", "swa-transformer", "transformer", "hybrid")


def budget_overrides(family, budget, base):
    """Config overrides that give `family` a decoding state of `budget` floats per layer.

    `base` is the preset config. Splits (each part rounded down, at least 1 token / 1 state dim):
      mamba2          : all of it to the SSM state N;
      swa-transformer : all of it to the window w;
      bmojo           : four equal quarters: SSM state, window w, fading band n_f, eidetic store M_e;
      bmojo-f         : half SSM state, a quarter each to w and n_f (M_e = 0);
      hybrid          : the Mamba-2 layers' N as for mamba2; its full-attention layer is unbounded;
      transformer     : nothing to set (its state grows with the context: reported as measured).
    The eidetic chunk length is w, so each chunk proposes n_e = max(1, w // 2) candidates."""
    token = 2 * base.num_key_value_heads * base.head_dim
    per_n = base.ssm_num_heads * base.ssm_head_dim  # floats per unit of ssm_state_size

    def n_state(floats):
        return max(1, int(floats // per_n))

    def tokens(floats):
        return max(1, int(floats // token))

    if family in ("mamba2", "hybrid"):
        return dict(ssm_state_size=n_state(budget))
    if family == "swa-transformer":
        return dict(window_size=tokens(budget))
    if family == "bmojo":
        w = tokens(budget / 4)
        return dict(ssm_state_size=n_state(budget / 4), window_size=w, fading_tokens=w,
                    eidetic_capacity=tokens(budget / 4), eidetic_tokens_per_chunk=max(1, w // 2))
    if family == "bmojo-f":
        w = tokens(budget / 4)
        return dict(ssm_state_size=n_state(budget / 2), window_size=w, fading_tokens=w, eidetic_capacity=0)
    if family == "transformer":
        return {}
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


# ---------------------------------------------------------------------------------------------
# The comparison runner
# ---------------------------------------------------------------------------------------------


@dataclass
class ComparisonArgs:
    """What `run_comparison` trains: every family at every budget and every pair count.

    `model` holds config overrides applied to each family's tiny preset before the budget split.
    `extra_runs` adds (label, family, overrides) runs evaluated on every task (e.g. an ablation)."""

    families: tuple = FAMILIES
    budgets: tuple = (512, 1024, 2048)
    pair_counts: tuple = (4, 8)
    seq_len: int = 128
    vocab_size: int = 128
    num_train: int = 20_000
    num_test: int = 500
    model: dict = field(default_factory=lambda: dict(hidden_size=64, intermediate_size=128))
    train: TrainArgs = field(default_factory=TrainArgs)
    extra_runs: tuple = ()
    seed: int = 0
    device: str = "cpu"


def family_config(family, budget, args, extra=None):
    import bmojo

    name = "tiny" if family == "bmojo" else f"{family}-tiny"
    base = bmojo.preset_config(name, vocab_size=args.vocab_size, **args.model)
    overrides = budget_overrides(family, budget, base) if budget is not None else {}
    overrides.update(extra or {})
    return bmojo.preset_config(name, vocab_size=args.vocab_size, **{**args.model, **overrides})


def _plan(args):
    """(label, family, budget, extra overrides) for each model to train; transformers once, unbudgeted."""
    runs = []
    for family in args.families:
        for budget in ((None,) if family == "transformer" else args.budgets):
            runs.append((family, family, budget, None))
    for label, family, extra in args.extra_runs:
        runs.append((label, family, None, extra))
    return runs


def run_one(task, splits, label, family, budget, extra, args):
    """Trains one model on one task; returns its table row."""
    import bmojo

    config = family_config(family, budget, args, extra)
    torch.manual_seed(args.seed)
    model = bmojo.BMojoForCausalLM(config).to(args.device)
    start = time.time()
    losses = train(model, splits[0], args.train, desc=f"{label} N={task.num_pairs}")
    seconds = time.time() - start
    group = family if label == family else f"{family} ablation"  # one plotted line per group
    return dict(label=label, group=group, family=family, num_pairs=task.num_pairs, seq_len=task.seq_len,
                budget_target=budget, state_floats=state_floats(config, task.seq_len),
                accuracy=evaluate(model, splits[1]), final_loss=sum(losses[-20:]) / len(losses[-20:]),
                train_seconds=round(seconds, 1), params=sum(p.numel() for p in model.parameters()),
                chance=task.chance, config=_config_summary(config))


def _config_summary(config):
    keys = ("mixer_types", "hidden_size", "window_size", "fading_tokens", "eidetic_capacity",
            "eidetic_tokens_per_chunk", "ssm_state_size", "num_key_value_heads", "head_dim")
    return {k: getattr(config, k) for k in keys}


def _task_for(args, pairs):
    return MQARTask(vocab_size=args.vocab_size, seq_len=args.seq_len, num_pairs=pairs,
                    num_train=args.num_train, num_test=args.num_test, seed=args.seed)


_SPLITS = {}  # per-process cache of generated data, so a worker builds each task's splits once


def _job(args, pairs, planned):
    """One (task, model) cell of the comparison; runs in the caller or in a worker process."""
    task = _task_for(args, pairs)
    if task not in _SPLITS:
        _SPLITS.clear()
        _SPLITS[task] = make_splits(task)
    return run_one(task, _SPLITS[task], *planned, args)


def _worker_init():
    # Tiny models gain little from intra-op threads; one thread a process avoids oversubscription.
    torch.set_num_threads(1)


def run_comparison(args=None, out_dir="mqar_results", log=print, workers=1):
    """Trains every planned model on every pair count, evaluates on unseen sequences, and writes
    `results.json`, `results.md` and (with matplotlib) `mqar.png` under `out_dir`. Returns the rows.

    `workers` > 1 trains that many models at once in spawned processes of one thread each: on a
    small CPU this beats one process with several threads for models this small. Every cell seeds
    its own model and data, so the rows do not depend on `workers`."""
    args = args or ComparisonArgs()
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(pairs, planned) for pairs in args.pair_counts for planned in _plan(args)]
    rows = []

    def record(row):
        rows.append(row)
        log(f"{row['label']:>18} pairs={row['num_pairs']:<3} state={row['state_floats']:>7.0f} floats/layer "
            f"acc={row['accuracy']:.3f} loss={row['final_loss']:.3f} ({row['train_seconds']}s)")
        write_results(rows, args, out_dir)

    if workers <= 1:
        for pairs, planned in jobs:
            record(_job(args, pairs, planned))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        quiet = replace(args, train=replace(args.train, progress=False))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init) as pool:
            for row in pool.map(_job, [quiet] * len(jobs), *zip(*jobs)):
                record(row)
    plot_path = plot_results(rows, os.path.join(out_dir, "mqar.png"))
    log(f"plot: {plot_path}" if plot_path else "plot skipped: matplotlib is not installed")
    return rows


def _args_dict(args):
    d = asdict(args)
    d["extra_runs"] = [list(r) for r in args.extra_runs]
    return d


def write_results(rows, args, out_dir):
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(dict(args=_args_dict(args), rows=rows), f, indent=1, default=str)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown_table(rows))


def markdown_table(rows):
    head = ("| model | pairs | state floats/layer | accuracy | chance | final loss | params | train s | "
            "w | n_f | M_e | N |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        c = r["config"]
        kinds = set(c["mixer_types"])
        attn = kinds & {"bmojo", "sliding_attention"}
        ssm = kinds & {"bmojo", "mamba2"}
        lines.append(f"| {r['label']} | {r['num_pairs']} | {r['state_floats']:.0f} | {r['accuracy']:.3f} | "
                     f"{r['chance']:.3f} | {r['final_loss']:.3f} | {r['params']} | {r['train_seconds']} | "
                     f"{c['window_size'] if attn else '-'} | "
                     f"{c['fading_tokens'] if 'bmojo' in kinds else '-'} | "
                     f"{c['eidetic_capacity'] if 'bmojo' in kinds else '-'} | "
                     f"{c['ssm_state_size'] if ssm else '-'} |")
    return head + "\n".join(lines) + "\n"


def plot_results(rows, path):
    """Accuracy vs state size (at the largest pair count) and vs pairs (at each model's largest
    budget), one line per family (an ablation is one line). Returns the path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    most = max(r["num_pairs"] for r in rows)
    for label in dict.fromkeys(r.get("group", r["label"]) for r in rows):
        mine = [r for r in rows if r.get("group", r["label"]) == label]
        at_most = sorted((r["state_floats"], r["accuracy"]) for r in mine if r["num_pairs"] == most)
        left.plot(*zip(*at_most), marker="o", label=label)
        biggest = max(r["budget_target"] or 0 for r in mine)
        by_pairs = sorted((r["num_pairs"], r["accuracy"]) for r in mine
                          if (r["budget_target"] or 0) == biggest)
        right.plot(*zip(*by_pairs), marker="o", label=label)
    left.set(xscale="log", xlabel="decoding state (floats per layer)", ylabel="MQAR accuracy",
             title=f"{most} key-value pairs", ylim=(0, 1.02))
    right.set(xlabel="key-value pairs", ylabel="MQAR accuracy", title="largest budget per model",
              ylim=(0, 1.02))
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _ints(text):
    return tuple(int(x) for x in text.split(","))


def build_parser(parser=None):
    parser = parser or argparse.ArgumentParser(
        prog="python -m bmojo.eval.mqar",
        description="MQAR (Zoology, Arora et al. 2023): train each model family at matched decoding-state "
                    "budgets and write a table (Markdown + JSON) and a plot.")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="comma-separated: " + ",".join(FAMILIES))
    parser.add_argument("--budgets", type=_ints, default=(512, 1024, 2048),
                        help="decoding-state floats per layer, comma-separated")
    parser.add_argument("--pairs", type=_ints, default=(4, 8), help="key-value pair counts, comma-separated")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--num-train", type=int, default=20_000)
    parser.add_argument("--num-test", type=int, default=500)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eidetic-ablation", type=_ints, default=None,
                        help="also train B'MOJO (at the largest budget's split) with these eidetic "
                             "capacities")
    parser.add_argument("--device", default="cpu", help="torch device to train on (default cpu)")
    parser.add_argument("--reference-ops", action="store_true",
                        help="use_kernels=False: the plain-PyTorch ops on every device (as on CPU)")
    parser.add_argument("--out", default="mqar_results")
    parser.add_argument("--workers", type=int, default=1, help="models trained at once, one process each")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def comparison_args(ns):
    """ComparisonArgs from parsed CLI arguments."""
    families = tuple(f for f in ns.families.split(",") if f)
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise ValueError(f"--families must be among {FAMILIES}, got {bad}")
    model = dict(hidden_size=ns.hidden_size, intermediate_size=2 * ns.hidden_size,
                 num_hidden_layers=ns.layers)
    if ns.reference_ops:
        model["use_kernels"] = False
    args = ComparisonArgs(families=families, budgets=ns.budgets, pair_counts=ns.pairs, seq_len=ns.seq_len,
                          vocab_size=ns.vocab_size, num_train=ns.num_train, num_test=ns.num_test, model=model,
                          train=TrainArgs(steps=ns.steps, batch_size=ns.batch_size, lr=ns.lr, seed=ns.seed,
                                          progress=not ns.no_progress), seed=ns.seed,
                          device=ns.device)
    if ns.eidetic_ablation:
        args.extra_runs = tuple(_ablation_runs(args, ns.eidetic_ablation))
    return args


def _ablation_runs(args, capacities):
    """B'MOJO at the largest budget's split with only M_e changed (so the state grows with M_e)."""
    base = family_config("bmojo", max(args.budgets), args)
    split = budget_overrides("bmojo", max(args.budgets), base)
    return [(f"bmojo M_e={m}", "bmojo", {**split, "eidetic_capacity": m}) for m in capacities]


def main(argv=None):
    ns = build_parser().parse_args(argv)
    try:
        args = comparison_args(ns)
        rows = run_comparison(args, ns.out, workers=ns.workers)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
