"""Shared fixtures. Every test runs with `torch.empty*` returning NaN-filled float tensors, so code that
reads memory it never wrote fails loudly instead of passing by luck (as fla's test suite does)."""

import contextlib
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import bmojo  # noqa: E402  (registers the Auto classes)
from bmojo.modeling_bmojo.cache import CACHE_NAME  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def _poisoned(factory):
    # Only real tensors are poisoned, never under a compiler's tracing (fake or functional tensors): a
    # fill there is a mutation recorded into the traced graph, and AOTAutograd rejects it inside an op
    # body ("n=copy_..., n.args[0]=empty_..."); Inductor's own buffers that require grad (its pad_mm
    # pattern setup) are filled without recording autograd history. The compiled paths are tested
    # against the eager ones, which are poisoned.
    def make(*args, **kwargs):
        out = factory(*args, **kwargs)
        if out.is_floating_point() and type(out) is torch.Tensor and not torch.compiler.is_compiling():
            with torch.no_grad():
                out.fill_(float("nan"))
        return out

    return make


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    for name in ("empty", "empty_like"):
        monkeypatch.setattr(torch, name, _poisoned(getattr(torch, name)))
    yield


def tiny_model(seed=0, **overrides):
    """A tiny preset model with non-trivial weights (larger init so selection and attention matter)."""
    torch.manual_seed(seed)
    cfg = bmojo.preset_config("tiny", **{"initializer_range": 0.2, **overrides})
    return bmojo.BMojoForCausalLM(cfg).eval()


def random_ids(batch, length, seed=0, vocab=128):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g)


def left_padded_batch():
    """Two rows of 21 tokens with labels, the second left-padded by 5 tokens (labels -100 there)."""
    ids = random_ids(2, 21, seed=1)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def training_step(preset, monkeypatch, force, on, autocast=None):
    """A tiny `preset` model's training step on `left_padded_batch()` with `force(patch, on)` applied (a
    kernel switch patched on or off, for the backward too): [loss (float32), every parameter gradient].
    `autocast`: a dtype to run the forward under CPU autocast, as HF Trainer's bf16=True does."""
    torch.manual_seed(0)
    model = bmojo.BMojoForCausalLM(bmojo.preset_config(preset, use_kernels=False)).train()
    amp = torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext()
    with monkeypatch.context() as patch:
        force(patch, on)
        with amp:
            loss = model(**left_padded_batch()).loss
        loss.backward()
    return [loss.detach().float()] + [p.grad for p in model.parameters() if p.grad is not None]


def cache_of(out):
    """The cache a forward pass returned: `out.cache` since transformers 5.24, where `out.past_key_values`
    still works but logs a deprecation warning; `out.past_key_values` before. (Our forward takes the
    cache as `cache=` on every version.)"""
    return getattr(out, CACHE_NAME)


def in_position_order(token_set):
    """A token set's (p, s, k, v) with each row's entries sorted by position, empty slots last (and their
    keys and values zeroed: decoding leaves them unspecified). Decoding keeps a set in no particular slot
    order (kernels/innovation/naive.py), prefill in position order: compare sets through this."""
    order = torch.argsort(token_set.p, dim=-1, stable=True)
    p, s = torch.gather(token_set.p, -1, order), torch.gather(token_set.s, -1, order)
    filled = torch.isfinite(s)[..., None, None]

    def rows(x):
        x = torch.gather(x, 1, order[..., None, None].expand(-1, -1, *x.shape[2:]))
        return torch.where(filled, x, torch.zeros((), dtype=x.dtype))

    return p, s, rows(token_set.k), rows(token_set.v)


def triton_interpreter_marks(cuda):
    """(INTERPRET, on_interpreter) for a Triton kernel test module, after its `pytest.importorskip("triton")`.

    Triton picks its interpreter when it is first imported, and this conftest imports bmojo (and so triton)
    before any test module: on CPU the interpreter cases run in a child pytest that has TRITON_INTERPRET=1
    from its start (`run_under_interpreter`), or in this process when it is already set. `on_interpreter`
    marks the cases that only make sense there (tiny shapes on CPU)."""
    import triton

    interpret = type(getattr(triton.language.standard, "zeros", None)).__name__ == "InterpretedFunction"
    mark = pytest.mark.skipif(cuda or not interpret, reason="runs on CPU under TRITON_INTERPRET=1 "
                              "(in the child process test_interpreter_suite starts)")
    return interpret, mark


def run_under_interpreter(test_file):
    """Runs `test_file` in a child pytest with TRITON_INTERPRET=1 and asserts it passes. From the repository
    root, where setup.cfg's pytest settings apply (kernels/__init__.py keeps the root's `kernels/` folder
    from shadowing HF's `kernels` package there)."""
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", test_file]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=root)
    print(proc.stdout[-6000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stdout[-6000:]


class CountOps(TorchDispatchMode):
    """Counts the ATen ops dispatched inside the block (each one launch on CUDA, bar views and allocations)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))
