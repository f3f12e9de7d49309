"""Model card (`README.md`) for an exported B'MOJO checkpoint.

The architecture summary is read off the config, so a card can never disagree with the weights it
ships with; training data and evaluation results are whatever the caller passes in.
"""

from collections import Counter

FRONT_MATTER = """---
library_name: transformers
license: apache-2.0
pipeline_tag: text-generation
tags:
- bmojo
- ssm
- hybrid
- custom_code
---
"""

PAPER = "[B'MOJO](https://arxiv.org/abs/2407.06324) (Zancato et al., NeurIPS 2024)"


def format_count(n):
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def architecture_rows(config, num_params):
    """(field, value) pairs describing the memories each layer has."""
    mixers = ", ".join(f"{kind} x{count}" for kind, count in Counter(config.mixer_types).items())
    capacity = "unbounded" if config.eidetic_capacity is None else config.eidetic_capacity
    return [
        ("parameters", f"{format_count(num_params)} ({num_params:,})"),
        ("layers (mixer types)", f"{config.num_hidden_layers} ({mixers})"),
        ("hidden size / MLP size", f"{config.hidden_size} / {config.intermediate_size}"),
        ("attention heads / KV heads / head dim",
         f"{config.num_attention_heads} / {config.num_key_value_heads} / {config.head_dim}"),
        ("sliding window (eidetic, recent)", config.window_size),
        ("fading tokens (SSM summaries past the window)", config.fading_tokens),
        ("eidetic capacity (stored tokens) / per chunk", f"{capacity} / {config.eidetic_tokens_per_chunk}"),
        ("SSM state size / head dim / expand",
         f"{config.ssm_state_size} / {config.ssm_head_dim} / {config.ssm_expand}"),
        ("vocabulary", config.vocab_size),
    ]


def eval_rows(results):
    """(task, metric, value) rows from {task: {metric: value}} or lm-eval's own results JSON."""
    results = results.get("results", results)
    rows = []
    for task, metrics in sorted(results.items()):
        for metric, value in sorted(metrics.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "stderr" not in metric:
                rows.append((task, metric, f"{value:.4f}" if isinstance(value, float) else value))
    return rows


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def model_card(config, num_params, info=None, tokenizer_included=True):
    """Markdown text of the card. `info` keys (all optional): model_name, description,
    training_data (str or list of str), eval_results ({task: {metric: value}} or lm-eval JSON), repo_id
    (written into the usage snippet). `tokenizer_included`: whether a tokenizer ships beside the weights
    (the usage snippet loads it; otherwise the card says there is none and feeds token ids)."""
    info = dict(info or {})
    name = info.get("model_name", "B'MOJO model")
    parts = [FRONT_MATTER, f"# {name}\n", info.get("description", f"A {PAPER} language model.") + "\n",
             "## Architecture\n",
             "Each B'MOJO layer attends, in one softmax, to a sliding window of recent tokens, to the "
             "SSM's summaries of the tokens that just left it (fading memory) and to a store of older "
             "tokens kept because the SSM could not predict them (eidetic memory).\n",
             table(("field", "value"), architecture_rows(config, num_params)) + "\n"]
    training = info.get("training_data")
    if training:
        items = [training] if isinstance(training, str) else list(training)
        parts += ["## Training data\n", "\n".join(f"- {item}" for item in items) + "\n"]
    results = info.get("eval_results")
    if results:
        parts += ["## Evaluation\n", table(("task", "metric", "value"), eval_rows(results)) + "\n"]
    repo = info.get("repo_id", "<repo_id>")
    if tokenizer_included:
        usage = USAGE_WITH_TOKENIZER.format(repo=repo)
    else:
        usage = USAGE_WITHOUT_TOKENIZER.format(repo=repo, vocab=config.vocab_size,
                                               hint=tokenizer_hint(config.vocab_size))
    parts += ["## Usage\n", usage]
    return "\n".join(parts)


def tokenizer_hint(vocab_size):
    """Which tokenizer a vocabulary of this size was laid out for, as far as the presets know."""
    if vocab_size == 50280:
        return (" The presets' vocabulary of 50,280 ids is the GPT-NeoX tokenizer's "
                "(`EleutherAI/gpt-neox-20b`) as Mamba uses it, if the model was trained with that one.")
    return ""


USAGE_PREAMBLE = """The modeling code ships with the weights (`trust_remote_code=True`); the `bmojo` package
is not needed to load it.
"""

USAGE_WITH_TOKENIZER = USAGE_PREAMBLE + """
```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{repo}", trust_remote_code=True)
inputs = tokenizer("The capital of France is", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))
```
"""

USAGE_WITHOUT_TOKENIZER = USAGE_PREAMBLE + """
No tokenizer was uploaded with these weights: encode text with the tokenizer the model was trained with
(its ids must lie below the vocabulary size, {vocab}).{hint}

```python
import torch
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)
input_ids = torch.tensor([[1, 2, 3, 4]])  # token ids from the model's tokenizer
print(model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=20))
```
"""
