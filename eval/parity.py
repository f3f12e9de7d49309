"""Parity on MQAR: our model families against the Hugging Face models they reimplement, over seeds.

Issue 12: on one small multi-query associative recall (MQAR) setting, HF Llama learns the task at every
seed while our full-attention and Mamba-2 families learn it only at some seeds or not at all. Each row
here is one model; rows that differ from a family's defaults in one thing (tied embeddings, the Mamba-2
decay init A, the MLP in every block) say which default costs the recall. Every (row, seed) job trains
a fresh model in its own process with its own seed for the model's initialisation, the data and the
batch order, so the rows do not depend on how many run at once, and a job that fails is recorded with
its error instead of ending the run.

The setting (`ParitySetting`; the issue's): 2 layers, width 64, 2 attention heads of 32, SSM state 16
with heads of 32 (expand 2: 4 SSM heads), window 16, sequences of 64 tokens holding 8 key-value pairs,
256 token ids in Zoology's layout (`mqar.MQARTask.layout="zoology"`: answers hidden, query slots from
its power law); AdamW with PyTorch's OneCycleLR (`mqar.train`) at lr 1e-3, batch 64, 3,000 steps, bf16
autocast on CUDA (float32 on CPU); accuracy on unseen test sequences (`mqar.evaluate`).
`--lrs` sweeps the learning rate as Zoology does (one job per (row, lr, seed); each row is reported at
the lr of its best mean accuracy); `--batch-size` / `--num-train` / `--steps` change the training budget;
`--layout shown` / `--schedule cosine` give the earlier runs' task and recipe.

The plateau: before MQAR's key-value association is learned, training sits at the accuracy of a model
that answers with one of the listed values (`plateau_accuracy`: 1/n = 0.125 for 8 pairs in Zoology's
layout; H_n / n = 0.340 in the "shown" layout, where earlier answers let it skip values). The markdown
marks every row whose mean accuracy is within 0.03 of it. On the "shown" layout every row sat there at
issue 12's budget on an H200, HF Llama included (eval/results/parity_gpu/DIAGNOSIS.md); on Zoology's
layout HF Llama reached 1.000 in 3 seeds of 3 on an H200 (and on CPU), which is how the issue's first table
must have been made, and our full-attention family, untied as it now is, equalled it; tied, as it was until
2026-12-03, it failed (eval/results/parity_zoology/RESULTS.md).

The HF rows keep transformers' own defaults for everything but size (Llama: untied embeddings, RMSNorm
eps 1e-6; Mamba2: untied, initializer_range 0.1, out_proj Kaiming-uniform, A_h = h + 1, no MLP), since
those defaults are what the comparison is about; `pad_token_id` is None so that MQAR's filler id 0 is
an ordinary token for every model (Llama would otherwise freeze its embedding as padding).

    python -m bmojo.eval.parity --device cuda --workers 16 --lrs 1e-3,3e-3 --out parity_results
writes `parity.json` (every job with its lr, the setting, the command, device and date) and `parity.md`
(per row: the best lr, mean, min and max accuracy over the seeds at it, each seed's value, the plateau
flag; with a sweep, a table of every lr), rewritten after every finished job.
"""

import argparse
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace

import torch

from . import mqar, sweep

# row name -> (source, family or HF model, overrides of our config). Our families start from the tiny
# preset of the family resized to the setting (`our_config`); each override is one departure from it.
_HF_LIKE = dict(tie_word_embeddings=False, ssm_a_init="arange", intermediate_size=0)
# HF Mamba2's initial distribution of every weight: untied, A_h = h + 1, N(0, 0.1), out_proj U(+-1/sqrt(in))
_HF_INIT = dict(tie_word_embeddings=False, ssm_a_init="arange", initializer_range=0.1,
                ssm_proj_init="out_fan_in")
ROWS = {
    "hf-llama": ("hf", "llama", {}),
    "hf-mamba2": ("hf", "mamba2", {}),
    # sliding-window attention (window = the setting's window_size) against HF Mistral of that window
    "hf-mistral": ("hf", "mistral", {}),
    "sliding_attention": ("bmojo", "swa-transformer", {}),
    "sliding_attention-tied": ("bmojo", "swa-transformer", dict(tie_word_embeddings=True)),
    "full_attention": ("bmojo", "transformer", {}),
    # the preset before 2026-12-03 (tied embeddings); runs of that time name the untied preset
    # "full_attention-untied" and this one "full_attention"
    "full_attention-tied": ("bmojo", "transformer", dict(tie_word_embeddings=True)),
    "mamba2": ("bmojo", "mamba2", {}),
    "mamba2-untied": ("bmojo", "mamba2", dict(tie_word_embeddings=False)),
    "mamba2-arange": ("bmojo", "mamba2", dict(ssm_a_init="arange")),
    "mamba2-nomlp": ("bmojo", "mamba2", dict(intermediate_size=0)),
    "mamba2-hf-like": ("bmojo", "mamba2", _HF_LIKE),
    # HF Mamba2's initializer_range (0.1 for embeddings, in_proj and head; ours 0.02) on top of hf-like.
    "mamba2-hf-init": ("bmojo", "mamba2", dict(_HF_LIKE, initializer_range=0.1)),
    # mamba_ssm's fan-in initialisation of in_proj / out_proj (ssm_proj_init), tied and untied.
    "mamba2-fanin": ("bmojo", "mamba2", dict(ssm_proj_init="fan_in")),
    "mamba2-untied-fanin": ("bmojo", "mamba2", dict(tie_word_embeddings=False, ssm_proj_init="fan_in")),
    # untied with HF Mamba2's initializer_range (0.1 for every linear and embedding weight) and nothing else
    "mamba2-untied-range0.1": ("bmojo", "mamba2", dict(tie_word_embeddings=False, initializer_range=0.1)),
    # untied with HF Mamba2's decay init A_h = h + 1 and nothing else (the untied rows that learn have it)
    "mamba2-untied-arange": ("bmojo", "mamba2", dict(tie_word_embeddings=False, ssm_a_init="arange")),
    "mamba2-untied-nomlp": ("bmojo", "mamba2", dict(tie_word_embeddings=False, intermediate_size=0)),
    # HF Mamba2's out_proj init (U(+-1/sqrt(fan_in)); ssm_proj_init="out_fan_in") on top of hf-init: every
    # parameter then starts from HF Mamba2's distribution
    "mamba2-hf-exact": ("bmojo", "mamba2", dict(_HF_INIT, intermediate_size=0)),
    # HF Mamba2 as HF initialises it, converted weight for weight into our family (bmojo.convert.from_hf):
    # the same function and the same initial weights, so only the training numerics can differ
    "mamba2-from-hf": ("converted", "mamba2", {}),
    "bmojo": ("bmojo", "bmojo", {}),
    "bmojo-f": ("bmojo", "bmojo", dict(eidetic_capacity=0)),
    # Jamba-style: Mamba-2 layers with one full-attention layer in four (with 2 layers: Mamba-2, attention)
    "hybrid": ("bmojo", "hybrid", {}),
    # the B'MOJO presets tie the embeddings; untied, as the attention presets are since 2026-12-03
    "bmojo-untied": ("bmojo", "bmojo", dict(tie_word_embeddings=False)),
    "bmojo-f-untied": ("bmojo", "bmojo", dict(eidetic_capacity=0, tie_word_embeddings=False)),
    # B'MOJO with HF Mamba2's initialisation for the whole model (its blocks keep their MLP)
    "bmojo-hf-init": ("bmojo", "bmojo", _HF_INIT),
    "bmojo-f-hf-init": ("bmojo", "bmojo", dict(_HF_INIT, eidetic_capacity=0)),
    "bmojo-f-untied-arange": ("bmojo", "bmojo", dict(eidetic_capacity=0, tie_word_embeddings=False,
                                                     ssm_a_init="arange")),
}
# Rows named "bmojo-me<M>" are B'MOJO with its store M_e set to M after any budget split (the eidetic
# ablation of issue 13): `row_definition` makes them, so any capacity can be asked for by name.
ABLATION_PREFIX = "bmojo-me"
# How a row's decoding state follows `ParitySetting.state_budget` (`mqar.budget_overrides`' split of that
# family); rows not listed keep the setting's sizes. A full-attention row's state is the whole sequence.
BUDGET_SPLIT = {"bmojo": "bmojo", "bmojo-untied": "bmojo", "bmojo-f": "bmojo-f",
                "bmojo-f-untied": "bmojo-f", "mamba2": "mamba2", "hf-mamba2": "mamba2",
                "mamba2-untied": "mamba2", "mamba2-hf-like": "mamba2",
                "sliding_attention": "swa-transformer", "hf-mistral": "swa-transformer", "hybrid": "hybrid"}
# The SSD chunk length of HF Mamba2's torch path. It changes no value, only the cost: HF's default 256
# pads our 64-token sequences to 256 and its (b, c, l, l, h, n) intermediate made a CPU step 13x slower.
HF_MAMBA2_CHUNK = 64


@dataclass(frozen=True)
class ParitySetting:
    """The MQAR task, model size and training of every row (defaults: issue 12's setting)."""

    num_layers: int = 2
    hidden_size: int = 64
    intermediate_size: int = 128  # SwiGLU width of the blocks that have an MLP (Llama and our families)
    num_heads: int = 2
    head_dim: int = 32
    ssm_state_size: int = 16
    ssm_head_dim: int = 32
    ssm_expand: int = 2
    window_size: int = 16  # B'MOJO's sliding window and eidetic chunk; fading band n_f = w
    eidetic_capacity: int = 32  # B'MOJO's store M_e (B'MOJO-F rows set 0)
    seq_len: int = 64
    num_pairs: int = 8
    vocab_size: int = 256
    num_train: int = 20_000
    num_test: int = 1_000
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.1
    schedule: str = "onecycle"  # mqar.TrainArgs.schedule: the issue's one-cycle
    layout: str = "zoology"  # mqar.MQARTask.layout: Zoology's (answers hidden, power-law query slots)
    # Decoding-state floats per layer of the rows in BUDGET_SPLIT, split as `mqar.budget_overrides` does
    # (issue 13's state-size sweep); 0 keeps the sizes above (issue 12's setting).
    state_budget: int = 0
    compile: str = ""  # mqar.TrainArgs.compile: "" eager, or the torch.compile backend of training


def row_definition(row):
    """(source, family, overrides) of a row name: an entry of ROWS, or "bmojo-me<M>" (B'MOJO, store M_e = M);
    a ValueError naming the allowed rows otherwise."""
    if row in ROWS:
        return ROWS[row]
    digits = row[len(ABLATION_PREFIX):] if row.startswith(ABLATION_PREFIX) else ""
    if digits.isdigit() and str(int(digits)) == digits:
        return "bmojo", "bmojo", dict(eidetic_capacity=int(digits))
    raise ValueError(f"rows must be a non-empty list among {tuple(ROWS)} or {ABLATION_PREFIX}<M> (B'MOJO "
                     f"with store M_e = M >= 0), got unknown {row!r}")


def budget_split(row):
    """The `mqar.budget_overrides` family whose split sizes `row` under a state budget, or None."""
    return "bmojo" if row.startswith(ABLATION_PREFIX) else BUDGET_SPLIT.get(row)


def check_rows(names):
    """The row names as a tuple; a ValueError naming the allowed rows for any unknown one."""
    names = tuple(names)
    if not names:
        raise ValueError(f"rows must be a non-empty list among {tuple(ROWS)}, got {names!r}")
    for name in names:
        row_definition(name)
    return names


def check_seeds(seeds):
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be distinct integers >= 0 (at least one), got {seeds!r}")
    return seeds


def our_config(family, setting, overrides=None, split=None):
    """BMojoConfig of one of our families at the setting's size, resized to `setting.state_budget` by the
    `split` family's budget split (when both are set), with `overrides` applied last."""
    base = _our_sized_config(family, setting, overrides)
    if not (setting.state_budget and split):
        return base
    budget = mqar.budget_overrides(split, setting.state_budget, base)
    if "window_size" in budget:  # the setting's candidates per chunk (w // 2) follow the new chunk length
        budget.setdefault("eidetic_tokens_per_chunk", max(1, budget["window_size"] // 2))
    return _our_sized_config(family, setting, {**budget, **(overrides or {})})


def _our_sized_config(family, setting, overrides):
    import bmojo

    s = setting
    name = "tiny" if family == "bmojo" else f"{family}-tiny"
    sized = dict(vocab_size=s.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
                 num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads,
                 num_key_value_heads=s.num_heads, head_dim=s.head_dim, ssm_state_size=s.ssm_state_size,
                 ssm_head_dim=s.ssm_head_dim, ssm_expand=s.ssm_expand, window_size=s.window_size,
                 fading_tokens=s.window_size, eidetic_capacity=s.eidetic_capacity,
                 eidetic_tokens_per_chunk=max(1, s.window_size // 2))
    return bmojo.preset_config(name, **{**sized, **(overrides or {})})


# Our family whose decoding state an HF reference model (or a converted one) has at the same sizes
_HF_TWIN = {"llama": "transformer", "mistral": "swa-transformer", "mamba2": "mamba2"}


def hf_config(model, setting):
    """The transformers config of an HF reference row, sized like our families, HF defaults otherwise; under a
    state budget, HF Mamba2's state size and HF Mistral's window are what our family of that split gets."""
    s = setting
    if s.state_budget and model in _HF_TWIN:  # the sizes our family of the same function gets
        twin = our_config(_HF_TWIN[model], s, None, _HF_TWIN[model])
        s = replace(s, state_budget=0, ssm_state_size=twin.ssm_state_size, window_size=twin.window_size)
    if model in ("llama", "mistral"):
        from transformers import LlamaConfig, MistralConfig

        attention = dict(vocab_size=s.vocab_size, hidden_size=s.hidden_size,
                         intermediate_size=s.intermediate_size, num_hidden_layers=s.num_layers,
                         num_attention_heads=s.num_heads, num_key_value_heads=s.num_heads,
                         head_dim=s.head_dim, max_position_embeddings=max(2048, s.seq_len),
                         tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None,
                         attn_implementation="sdpa")
        if model == "mistral":
            return MistralConfig(sliding_window=s.window_size, **attention)
        return LlamaConfig(**attention)
    if model == "mamba2":
        from transformers import Mamba2Config

        inner = s.ssm_expand * s.hidden_size
        return Mamba2Config(vocab_size=s.vocab_size, hidden_size=s.hidden_size,
                            num_hidden_layers=s.num_layers, state_size=s.ssm_state_size,
                            head_dim=s.ssm_head_dim, num_heads=inner // s.ssm_head_dim, expand=s.ssm_expand,
                            n_groups=1, chunk_size=HF_MAMBA2_CHUNK, tie_word_embeddings=False,
                            pad_token_id=None, bos_token_id=None, eos_token_id=None)
    raise ValueError(f"HF reference model must be 'llama', 'mistral' or 'mamba2', got {model!r}")


def build_model(row, setting):
    """(model, config summary) of one row, on CPU in float32; seed the RNG before calling."""
    source, family, overrides = row_definition(row)
    if source == "hf":
        return _hf_model(family, setting)
    if source == "converted":  # HF's model and initial weights, moved into our family
        from ..convert import from_hf

        hf_model, _ = _hf_model(family, setting)
        model = from_hf(hf_model)
        return model, {**_our_summary(model.config), "converted_from": type(hf_model).__name__}
    config = our_config(family, setting, overrides, budget_split(row))
    import bmojo

    return bmojo.BMojoForCausalLM(config), _our_summary(config)


def _hf_model(family, setting):
    import transformers

    config = hf_config(family, setting)
    model = getattr(transformers, _HF_CLASSES[config.model_type])(config)
    return model, _hf_summary(config)


_HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "mamba2": "Mamba2ForCausalLM"}


def _hf_summary(config):
    keep = ("tie_word_embeddings", "initializer_range", "rms_norm_eps", "layer_norm_epsilon", "num_heads",
            "num_key_value_heads", "residual_in_fp32", "intermediate_size", "sliding_window", "state_size")
    summary = {k: getattr(config, k) for k in keep if hasattr(config, k)}
    return {"class": _HF_CLASSES[config.model_type], **summary}


def row_summary(row, setting):
    """The config summary a job of `row` records (`build_model`'s), without building the model; None for a
    converted row, whose config comes from the converted model."""
    source, family, overrides = row_definition(row)
    if source == "hf":
        return _hf_summary(hf_config(family, setting))
    if source == "converted":
        return None
    return _our_summary(our_config(family, setting, overrides, budget_split(row)))


_OUR_SUMMARY_FIELDS = ("mixer_types", "tie_word_embeddings", "ssm_a_init", "ssm_proj_init",
                       "intermediate_size", "initializer_range", "ssm_num_heads", "window_size",
                       "fading_tokens", "eidetic_capacity", "eidetic_tokens_per_chunk")


def _our_summary(config):
    return {"class": "BMojoForCausalLM", **{k: getattr(config, k) for k in _OUR_SUMMARY_FIELDS}}


def state_floats(row, setting):
    """Decoding-state floats per layer of `row` at `setting` (`mqar.state_floats`; an HF row counts as our
    family of the same function and sizes: Llama as full attention over the sequence)."""
    source, family, overrides = row_definition(row)
    if source == "bmojo":
        config = our_config(family, setting, overrides, budget_split(row))
    else:
        config = our_config(_HF_TWIN[family], setting, None, _HF_TWIN[family])
    return mqar.state_floats(config, setting.seq_len)


def mqar_task(setting, seed=0):
    """The setting's MQAR task (its data splits are made by `mqar.make_splits`, not here)."""
    return mqar.MQARTask(vocab_size=setting.vocab_size, seq_len=setting.seq_len, num_pairs=setting.num_pairs,
                         num_train=setting.num_train, num_test=setting.num_test, seed=seed,
                         layout=setting.layout)


def run_job(row, seed, setting, device="cpu"):
    """Trains and evaluates one (row, seed); returns its result dict. Never raises: an error is recorded."""
    result = dict(row=row, seed=seed, lr=setting.lr, accuracy=None, final_loss=None, params=None,
                  train_seconds=None, error=None)
    start = time.time()
    try:
        task = mqar_task(setting, seed)
        cuda = torch.device(device).type == "cuda"
        # On the device once: a host-to-device copy of every batch would cost a transfer a step.
        train_data, test_data = ({k: v.to(device) for k, v in split.items()}
                                 for split in mqar.make_splits(task))
        torch.manual_seed(seed)  # the model's initialisation; mqar.train reseeds for the batch order
        model, summary = build_model(row, setting)
        model = model.to(device)
        result.update(params=sum(p.numel() for p in model.parameters()), config=summary,
                      state_floats=state_floats(row, setting))
        args = mqar.TrainArgs(steps=setting.steps, batch_size=setting.batch_size, lr=setting.lr,
                              warmup=setting.warmup, weight_decay=setting.weight_decay, seed=seed,
                              schedule=setting.schedule, compile=setting.compile,
                              progress=False, bf16=cuda)
        train_start = time.time()
        losses = mqar.train(model, train_data, args)  # bf16 autocast around each forward on CUDA
        train_seconds = time.time() - train_start
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):  # no weight update inside: safe
            accuracy = mqar.evaluate(model, test_data)
        tail = losses[-20:]
        result.update(accuracy=accuracy, final_loss=sum(tail) / len(tail),
                      train_seconds=round(train_seconds, 1), loss_curve=loss_curve(losses))
    except Exception as err:  # one failing job must not end the run: its row says why
        result["error"] = f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exc(limit=-3))
    result["seconds"] = round(time.time() - start, 1)
    return result


# ---------------------------------------------------------------------------------------------
# Running the jobs and writing the results
# ---------------------------------------------------------------------------------------------


def loss_curve(losses, points=50):
    """The training loss as `points` means of consecutive windows (fewer for a short run): when a job left
    the plateau, or whether it was still falling at the end, is read from it."""
    window = max(1, len(losses) // points)
    return [round(sum(losses[i: i + window]) / len(losses[i: i + window]), 4)
            for i in range(0, window * (len(losses) // window), window)]


def _device_name(device):
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(dev)} (cuda)"
    return f"{dev.type}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _environment(device):
    import transformers

    return dict(device=_device_name(device), torch=torch.__version__, transformers=transformers.__version__,
                mamba_ssm_installed=importlib.util.find_spec("mamba_ssm") is not None,
                causal_conv1d_installed=importlib.util.find_spec("causal_conv1d") is not None,
                precision="bf16 autocast" if torch.device(device).type == "cuda" else "float32")


def plateau_accuracy(setting):
    """Accuracy of a model that has learned which tokens are values but not the key-value association:
    the plateau MQAR training sits on before it learns recall. On the "zoology" layout (answers hidden) it
    guesses one of the N listed values: 1 / N. On the "shown" layout it can also skip the values already
    answered: with Q queries the i-th (i = 0..Q-1) has N - i left, so (1/Q) sum_i 1/(N - i), which is
    H_N / N when every pair is queried (0.340 for 8 pairs)."""
    task = mqar_task(setting)
    n, q = task.num_pairs, task.num_queries
    if task.layout == "zoology":
        return 1.0 / n
    return sum(1.0 / (n - i) for i in range(q)) / q


PLATEAU_TOLERANCE = 0.03  # a mean accuracy this close to `plateau_accuracy` is reported as the plateau


def _mean(values):
    return sum(values) / len(values) if values else None


def _seed_stats(jobs):
    """Accuracy per seed, mean / min / max over the finished seeds, mean final loss and train seconds."""
    jobs = sorted(jobs, key=lambda r: r["seed"])
    acc = [r["accuracy"] for r in jobs if r["accuracy"] is not None]
    return dict(per_seed={r["seed"]: r["accuracy"] for r in jobs}, seeds_done=len(acc), mean=_mean(acc),
                min=min(acc, default=None), max=max(acc, default=None),
                final_loss_mean=_mean([r["final_loss"] for r in jobs if r["final_loss"] is not None]),
                train_seconds_mean=_mean([r["train_seconds"] for r in jobs
                                          if r["train_seconds"] is not None]))


def _best_lr(by_lr):
    """The learning rate with the best mean accuracy over its seeds (ties: lower mean final loss), as
    `sweep.best_learning_rate` picks; only learning rates with the most finished seeds compete, so a
    cut-short run does not compare one lucky seed against three. None if no job finished."""
    most = max((stats["seeds_done"] for stats in by_lr.values()), default=0)
    if not most:
        return None
    candidates = [dict(lr=lr, accuracy=stats["mean"], final_loss=stats["final_loss_mean"])
                  for lr, stats in by_lr.items() if stats["seeds_done"] == most]
    return sweep.best_learning_rate(candidates)


def summarize(results, rows, lrs=None, plateau=None):
    """Per row: the statistics over seeds at each learning rate (`by_lr`), the best learning rate, and at
    it the accuracies by seed, mean / min / max, final loss; `plateau` says whether that mean is within
    PLATEAU_TOLERANCE of the plateau accuracy (when given). Errors of every learning rate are listed."""
    table = []
    for row in rows:
        mine = [r for r in results if r["row"] == row]
        row_lrs = list(lrs) if lrs else sorted({r["lr"] for r in mine})
        by_lr = {lr: _seed_stats([r for r in mine if r["lr"] == lr]) for lr in row_lrs}
        best = _best_lr(by_lr)
        at_best = by_lr[best] if best is not None else _seed_stats([])
        mean = at_best["mean"]
        table.append(dict(row=row, params=next((r["params"] for r in mine if r["params"]), None),
                          best_lr=best, **at_best,
                          plateau=None if plateau is None or mean is None
                          else abs(mean - plateau) <= PLATEAU_TOLERANCE,
                          by_lr={format(lr, "g"): stats for lr, stats in by_lr.items()},
                          errors=[f"lr {r['lr']:g} seed {r['seed']}: {r['error'].splitlines()[0]}"
                                  for r in sorted(mine, key=lambda r: (r["lr"], r["seed"])) if r["error"]]))
    return table


def _fmt(value, spec=".3f"):
    return "-" if value is None else format(value, spec)


def _schedule_text(setting):
    if setting.get("schedule", "cosine") == "onecycle":
        return "OneCycleLR (PyTorch defaults)"
    return f"warmup {setting['warmup']} then cosine"


def _compile_text(setting_dict):
    backend = setting_dict.get("compile", "")
    return f", trained through torch.compile ({backend})" if backend else ""


def _layout(setting_dict):
    return setting_dict.get("layout", "shown")  # files written before `layout` existed used "shown"


def _layout_text(setting_dict):
    if _layout(setting_dict) == "zoology":
        return "Zoology's (answers hidden, query slots from its power law; mqar.MQARTask.layout)"
    return "answers shown after their keys, uniform query slots (mqar.MQARTask.layout \"shown\")"


def _plateau_text(setting_dict):
    n = setting_dict["num_pairs"]
    if _layout(setting_dict) == "zoology":
        return f"1/n for n = {n} pairs: answers are hidden, so it cannot skip those already given"
    return f"H_n/n for n = {n} pairs: it skips the values whose key was already queried"


def markdown(summary, meta):
    s, env = meta["setting"], meta["environment"]
    lrs, plateau = meta["lrs"], meta["plateau_accuracy"]
    mamba_ssm = "installed" if env["mamba_ssm_installed"] else "not installed (HF torch path)"
    lr_text = f"lr {lrs[0]:g}" if len(lrs) == 1 else (
        f"lr swept over {', '.join(format(lr, 'g') for lr in lrs)} (per row the best mean accuracy over the "
        "seeds, ties to the lower mean final loss; the table shows the seeds at that lr)")
    lines = [f"# MQAR parity ({meta['date']})", "",
             f"`{meta['command']}`", "",
             f"Device: {env['device']}; {env['precision']}; torch {env['torch']}, transformers "
             f"{env['transformers']}; mamba_ssm {mamba_ssm}.",
             f"Setting: {s['num_layers']} layers, width {s['hidden_size']}, {s['num_heads']} heads of "
             f"{s['head_dim']}, SSM state {s['ssm_state_size']} heads of {s['ssm_head_dim']}, window "
             f"{s['window_size']}, M_e {s['eidetic_capacity']}; {s['num_pairs']} pairs in {s['seq_len']} "
             f"tokens, vocab {s['vocab_size']}, {s['num_train']} train / {s['num_test']} test sequences; "
             f"{lr_text}; AdamW, {_schedule_text(s)}, weight decay {s['weight_decay']:g}, batch "
             f"{s['batch_size']}, {s['steps']} steps{_compile_text(s)}. Seeds: {meta['seeds']}.", "",
             f"Layout: {_layout_text(s)}.", "",
             f"Plateau: a model that answers with one of the listed values without the key-value association "
             f"scores {plateau:.3f} ({_plateau_text(s)}). A row whose mean is within {PLATEAU_TOLERANCE} of "
             "it is marked **plateau**: it did not learn recall, whatever its accuracy above chance.", "",
             "| row | params | lr | mean | min | max | per seed | final loss | train s | plateau | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        per_seed = " / ".join(f"{seed}: {_fmt(acc)}" for seed, acc in r["per_seed"].items()) or "-"
        seeds_at = sum(acc is not None and abs(acc - plateau) <= PLATEAU_TOLERANCE
                       for acc in r["per_seed"].values())
        flag = "" if r["plateau"] is None else (
            f"**plateau** ({seeds_at}/{r['seeds_done']} seeds)" if r["plateau"] else
            f"no ({seeds_at}/{r['seeds_done']} seeds at it)" if seeds_at else "no")
        lines.append(f"| {r['row']} | {r['params'] or '-'} | {_fmt(r['best_lr'], 'g')} | {_fmt(r['mean'])} | "
                     f"{_fmt(r['min'])} | {_fmt(r['max'])} | {per_seed} | {_fmt(r['final_loss_mean'])} | "
                     f"{_fmt(r['train_seconds_mean'], '.0f')} | {flag} | {'; '.join(r['errors']) or ''} |")
    if len(lrs) > 1:
        head = " | ".join(f"lr {lr:g}" for lr in lrs)
        lines += ["", "Learning-rate sweep: mean accuracy over the seeds (seeds done) and mean final loss.",
                  "",
                  f"| row | {head} |", "|---|" + "---|" * len(lrs)]
        for r in summary:
            cells = []
            for lr in lrs:
                st = r["by_lr"][format(lr, "g")]
                cells.append(f"{_fmt(st['mean'])} ({st['seeds_done']}) "
                             f"loss {_fmt(st['final_loss_mean'], '.2f')}")
            lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir, results, rows, meta):
    summary = summarize(results, rows, meta["lrs"], meta["plateau_accuracy"])
    with open(os.path.join(out_dir, "parity.json"), "w") as f:
        json.dump(dict(meta, summary=summary, jobs=results), f, indent=1, default=str)
    with open(os.path.join(out_dir, "parity.md"), "w") as f:
        f.write(markdown(summary, meta))
    return summary


def job_devices(device, count):
    """The device of each of `count` jobs: plain "cuda" on a machine with several GPUs spreads them
    round-robin (each job is one small model on one GPU); any other device is used as given."""
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    return [f"cuda:{i % gpus}" if gpus > 1 else device for i in range(count)]


def _without_lr(setting_dict):
    # files written before `schedule` / `layout` / `state_budget` existed were all cosine runs on the "shown"
    # layout at issue 12's sizes
    defaults = {"schedule": "cosine", "layout": "shown", "state_budget": 0, "compile": ""}
    return {k: v for k, v in {**defaults, **setting_dict}.items() if k != "lr"}


def load_finished(path, setting):
    """{(row, lr, seed): job} of the jobs in an earlier parity.json that finished without error, if that
    run had the same setting apart from the learning rate (each job records its own; a job of a file
    written before the sweep has the file's lr); a ValueError otherwise (mixing settings would average
    different experiments)."""
    with open(path) as f:
        earlier = json.load(f)
    if _without_lr(earlier.get("setting") or {}) != _without_lr(asdict(setting)):
        raise ValueError(f"resume file {path} has setting {earlier.get('setting')}, this run "
                         f"{asdict(setting)}: only a run of the same setting can be resumed")
    jobs = [dict(j, lr=j.get("lr", earlier["setting"]["lr"])) for j in earlier["jobs"] if j["error"] is None]
    # A row's name can outlive its model: a preset default that changed since (the attention presets were
    # tied until 2026-12-03) makes the earlier job another model, so it is run again, not averaged in.
    current = {row: row_summary(row, setting) for row in {j["row"] for j in jobs} if _known_row(row)}
    return {(j["row"], j["lr"], j["seed"]): j for j in jobs
            if j["row"] in current and _same_config(j.get("config"), current[j["row"]])}


def _known_row(row):
    try:
        row_definition(row)
    except ValueError:
        return False
    return True


def _same_config(recorded, current):
    # JSON turned tuples into lists; a job recorded without a config predates the summaries, and a converted
    # row has no summary before it is built (current None): both trusted
    return recorded is None or current is None or json.loads(json.dumps(current)) == recorded


def check_lrs(lrs):
    lrs = tuple(lrs)
    if not lrs or len(set(lrs)) != len(lrs) or any(
            isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0
            for lr in lrs):
        raise ValueError(f"lrs must be distinct finite numbers > 0 (at least one), got {lrs!r}")
    return lrs


def run_parity(rows=tuple(ROWS), seeds=(0, 1, 2), setting=None, device="cpu", workers=1, out_dir="parity",
               command=None, time_limit=None, log=None, resume=None, lrs=None):
    """Runs every (row, lr, seed) job and writes `parity.json` and `parity.md` under `out_dir` after each
    finished one. `lrs`: the learning rates swept (default: the setting's one); each row is reported at
    its best. Jobs run seed by seed (every row and lr at seed 0 first), so a cut-short run still has
    whole seeds. `time_limit` (seconds): jobs not started by then are recorded as skipped. `resume`: an
    earlier parity.json of the same setting whose finished jobs are kept instead of run again. Returns
    the per-row summary."""
    rows, seeds = check_rows(rows), check_seeds(seeds)
    log = log or functools.partial(print, flush=True)
    setting = setting or ParitySetting()
    lrs = check_lrs(lrs or (setting.lr,))
    os.makedirs(out_dir, exist_ok=True)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = dict(command=command or "run_parity(...)", date=date,
                environment=_environment(device), setting=asdict(setting), lrs=list(lrs), rows=list(rows),
                seeds=list(seeds), plateau_accuracy=plateau_accuracy(setting), workers=workers,
                resumed_from=resume, row_definitions={r: list(row_definition(r)) for r in rows})
    finished = load_finished(resume, setting) if resume else {}
    order = [(row, lr, seed) for seed in seeds for lr in lrs for row in rows]
    results = [finished[key] for key in order if key in finished]
    jobs = [key for key in order if key not in finished]
    if results:
        log(f"resumed {len(results)} finished job(s) from {resume}; {len(jobs)} to run")
    devices, start, resumed = job_devices(device, len(jobs)), time.time(), len(results)

    def record(result):
        results.append(result)
        done, elapsed = len(results) - resumed, time.time() - start
        eta = elapsed / done * (len(jobs) - done)  # jobs are alike in cost: the mean so far predicts the rest
        error = (result["error"] or "").splitlines()[:1]
        what = (error[0] if error[0].startswith("skipped") else "ERROR " + error[0]) if error else (
            f"acc {result['accuracy']:.3f} loss {result['final_loss']:.3f}")
        log(f"[{done:>3}/{len(jobs)}] {result['row']:>22} lr {result['lr']:<6g} seed {result['seed']}: "
            f"{what} ({result['seconds']:.0f} s) | elapsed {elapsed:.0f} s, ETA {eta:.0f} s")
        write_results(out_dir, results, rows, meta)

    def skipped(row, lr, seed, why):
        return dict(row=row, seed=seed, lr=lr, accuracy=None, final_loss=None, params=None,
                    train_seconds=None, error=why, seconds=0.0)

    run_jobs(jobs, devices, setting, workers, time_limit, start, record, skipped)
    summary = write_results(out_dir, results, rows, meta)
    log(f"done in {time.time() - start:.0f} s: {os.path.join(out_dir, 'parity.md')}")
    return summary


def run_jobs(jobs, devices, setting, workers, time_limit, start, record, skipped, job=None):
    """Runs the (row, lr, seed) jobs, each `job(row, seed, setting at its lr, device)` (default `run_job`), in
    this process or in `workers` processes, and passes every result to `record` as it ends; a job not started
    `time_limit` seconds after `start` is recorded as `skipped(row, lr, seed, why)` instead."""
    job = job or run_job
    deadline = None if time_limit is None else start + time_limit
    if workers > 1:
        return _run_pool(jobs, devices, setting, workers, deadline, record, skipped, job)
    for (row, lr, seed), dev in zip(jobs, devices):
        late = deadline is not None and time.time() > deadline
        record(skipped(row, lr, seed, f"skipped: time limit {time_limit} s") if late
               else job(row, seed, replace(setting, lr=lr), dev))


def _run_pool(jobs, devices, setting, workers, deadline, record, skipped, job=None):
    """The (row, lr, seed) jobs in `workers` spawned one-thread processes (as `mqar.run_comparison`), each
    `job(row, seed, setting at its lr, device)` (default `run_job`; a module-level function, as spawned
    processes import it), recorded as they end."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    job = job or run_job
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=mqar._worker_init) as pool:
        pending = {pool.submit(job, row, seed, replace(setting, lr=lr), dev): (row, lr, seed)
                   for (row, lr, seed), dev in zip(jobs, devices)}
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            done, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            if not done:  # past the deadline: drop the jobs that have not started, finish the running ones
                for future in list(pending):
                    if future.cancel():
                        record(skipped(*pending.pop(future), "skipped: time limit"))
                deadline = None
                continue
            for future in done:
                row, lr, seed = pending.pop(future)
                try:
                    record(future.result())
                except Exception as err:  # the worker process died (e.g. killed for memory)
                    record(skipped(row, lr, seed, f"worker failed: {type(err).__name__}: {err}"))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _ints(text):
    return tuple(int(x) for x in text.split(",") if x)


def _floats(text):
    return tuple(float(x) for x in text.split(",") if x)


def add_setting_arguments(p, defaults):
    """The options of a `ParitySetting` (task, state budget, training), shared with eval.zoology."""
    p.add_argument("--seq-len", type=int, default=defaults.seq_len, help="MQAR sequence length")
    p.add_argument("--pairs", type=int, default=defaults.num_pairs, help="key-value pairs per sequence")
    p.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    p.add_argument("--state-budget", type=int, default=defaults.state_budget,
                   help="decoding-state floats per layer for the rows of parity.BUDGET_SPLIT "
                        "(0: issue 12's sizes)")
    p.add_argument("--steps", type=int, default=defaults.steps)
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--lr", type=float, default=defaults.lr,
                    help=f"one learning rate (default {defaults.lr:g})")
    lr.add_argument("--lrs", type=_floats, default=None,
                    help="comma-separated learning rates to sweep (Zoology's protocol): every (row, lr, "
                         "seed) is one job and each row is reported at the lr of its best mean accuracy")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--schedule", default=defaults.schedule, choices=mqar.SCHEDULES,
                   help="learning-rate schedule (mqar.TrainArgs.schedule; default %(default)s)")
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="warmup steps of the cosine schedule")
    p.add_argument("--layout", default=defaults.layout, choices=mqar.LAYOUTS,
                   help="MQAR sequence layout (mqar.MQARTask.layout; default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                   help="AdamW weight decay of matrices, embeddings and head included")
    p.add_argument("--num-train", type=int, default=defaults.num_train, help="training sequences per seed")
    p.add_argument("--num-test", type=int, default=defaults.num_test, help="test sequences per seed")
    p.add_argument("--compile", default=defaults.compile, choices=mqar.COMPILE_BACKENDS,
                   help="train through torch.compile with this backend (default: eager; 'inductor' on a GPU)")


def setting_from_args(ns, lr):
    """The ParitySetting of parsed `add_setting_arguments` options; a ValueError for a bad value, before
    any job."""
    setting = replace(ParitySetting(), steps=ns.steps, lr=lr, batch_size=ns.batch_size,
                      num_train=ns.num_train, num_test=ns.num_test, schedule=ns.schedule, warmup=ns.warmup,
                      weight_decay=ns.weight_decay, layout=ns.layout, seq_len=ns.seq_len, num_pairs=ns.pairs,
                      vocab_size=ns.vocab_size, state_budget=ns.state_budget, compile=ns.compile)
    mqar.TrainArgs(steps=setting.steps, lr=setting.lr, batch_size=setting.batch_size,
                   schedule=setting.schedule, warmup=setting.warmup, weight_decay=setting.weight_decay,
                   compile=setting.compile)
    mqar_task(setting)
    if isinstance(setting.state_budget, bool) or setting.state_budget < 0:
        raise ValueError(f"state_budget must be an integer >= 0 (0: issue 12's sizes), "
                         f"got {setting.state_budget!r}")
    return setting


def build_parser():
    defaults = ParitySetting()
    p = argparse.ArgumentParser(
        prog="python -m bmojo.eval.parity",
        description="MQAR parity (issue 12): our model families and the HF models they reimplement, on one "
                    "setting over several seeds; writes parity.json and parity.md.")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated, among: " + ",".join(ROWS))
    p.add_argument("--seeds", type=_ints, default=(0, 1, 2), help="comma-separated (default 0,1,2)")
    add_setting_arguments(p, defaults)
    p.add_argument("--device", default="cpu",
                   help="torch device (cuda: bf16 autocast, jobs spread over all GPUs; cpu: float32)")
    p.add_argument("--workers", type=int, default=1, help="jobs at once, one process of one thread each")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds after which jobs not yet started are skipped (running ones finish)")
    p.add_argument("--resume", default=None, metavar="PARITY_JSON",
                   help="an earlier parity.json of the same setting: its finished jobs are kept, not rerun")
    p.add_argument("--out", default="parity_results")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    ns = build_parser().parse_args(argv)
    try:
        rows = check_rows(r for r in ns.rows.split(",") if r)
        lrs = check_lrs(ns.lrs if ns.lrs is not None else (ns.lr,))
        setting = setting_from_args(ns, lrs[0])  # bad --steps / --seq-len / ... fail here, before any job
        command = "python -m bmojo.eval.parity " + shlex.join(argv)
        summary = run_parity(rows, ns.seeds, setting, ns.device, ns.workers, ns.out, command, ns.time_limit,
                             resume=ns.resume, lrs=lrs)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if all(r["seeds_done"] for r in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
