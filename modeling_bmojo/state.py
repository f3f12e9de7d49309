"""Typed decoding states: what each mixer keeps between tokens (DESIGN.md §5).

Every state allocates its tensors once, at their final shapes and dtypes, and the mixer's `step`
updates them in place: ring buffers with a per-row write slot for the window and the fading band,
copies into fixed-size sets for the eidetic store. Nothing is allocated or re-bound per token, so
a decode step can be captured in a CUDA graph (the tensors' addresses never change) and compiled
without graph breaks. Shapes are fixed by w, n_f and M_e; only full attention (a buffer as long as
the generation) and an unbounded store (`eidetic_capacity=None`) grow, eagerly, and make the cache
non-compileable.

Positions: `pos` buffers hold each slot's token position in its row, -1 when the slot is empty.
A ring of size S keeps the token at position p in slot p % S, so the order of slots is not the
order of tokens: attention is a softmax over a set, and every key was rotated at its own position.
"""

from collections import defaultdict

import torch

from ..kernels.dispatch import fill_ring_
from ..kernels.innovation.naive import EMPTY
from ..kernels.state_fill.naive import NO_TOKEN as _NO_TOKEN


class State:
    """Named tensors and nested states, allocated once. Subclasses allocate their tensors in __init__, with
    `torch.empty`: a new state holds garbage until `reset_states_` sets its initial values,
    which BMojoCache.allocate does for every layer at once."""

    # the attributes that are tensors or nested states, in order; an absent one (an optional part, e.g. a
    # store without eidetic memory) is skipped. Named, not found with vars(): torch 2.11's Dynamo cannot
    # trace vars(state).items() and broke a compiled prefill's graph in four at the cache's reset (H100,
    # 2026-12-05: benchmarks/results/explain_compiled_prefill_2026-12-05d.py), which torch 2.13 traces.
    FIELDS = ()
    # the initial value of each tensor that does not start at zero (the marker of an empty slot)
    INITIAL = {}
    # whether a prefill writes every element of this state's own tensors (nested states answer for theirs),
    # whatever it held: a compiled prefill then leaves them out of the reset (`reset_states_`)
    PREFILL_WRITES_ALL = False

    def named_tensors(self, prefix=""):
        for name, tensor, _ in self._walk(prefix):
            yield name, tensor

    def initial_values(self, skip_prefilled=False):
        """(tensor, its initial value) of every tensor, nested states included; with `skip_prefilled`, only
        those a prefill does not overwrite in full."""
        for _, tensor, value in self._walk("", skip_prefilled):
            yield tensor, value

    def _walk(self, prefix, skip_prefilled=False):
        """(qualified name, tensor, initial value) of every tensor, nested states included."""
        for name, value in self._fields():
            if isinstance(value, State):
                yield from value._walk(f"{prefix}{name}.", skip_prefilled)
            elif not (skip_prefilled and self.PREFILL_WRITES_ALL):
                yield prefix + name, value, self.INITIAL.get(name, 0)

    def _fields(self):
        for name in self.FIELDS:
            value = getattr(self, name, None)
            if value is not None:
                yield name, value

    def map_(self, fn):
        """Re-binds every tensor to fn(tensor): for batch changes (beam expansion, selection), not per token."""
        for name, value in list(self._fields()):
            if isinstance(value, torch.Tensor):
                setattr(self, name, fn(value))
            elif isinstance(value, State):
                value.map_(fn)

    def reorder_(self, index):
        """Rows re-ordered in place (beam search): same batch size, same addresses."""
        for _, t in self.named_tensors():
            t.copy_(t.index_select(0, index))

    def mark_static(self):
        """Tells torch.compile the tensors keep their addresses (CUDA graphs may then write them in place)."""
        if not torch.compiler.is_compiling():
            for _, t in self.named_tensors():
                torch._dynamo.mark_static_address(t)

    def nbytes(self):
        return sum(t.numel() * t.element_size() for _, t in self.named_tensors())


def reset_states_(states, skip_prefilled=False):
    """Every tensor of `states` set to its initial value, in place, in a few launches: the tensors grouped by
    device, dtype and value, each group zeroed by one foreach call and moved to a non-zero value by one more
    (0 + -inf = -inf, 0 + EMPTY = EMPTY, exactly). A fill per tensor cost a 12-layer B'MOJO cache ~250
    launches, each paid for in host time by an eager prefill (~1,600 launches in all at 1 x 2048, H200,
    2026-12-05). `skip_prefilled`: leave out what the coming prefill overwrites in full
    (`State.PREFILL_WRITES_ALL`)."""
    if torch.compiler.is_compiling():
        # traced, a fill per tensor: Inductor has no lowering for the foreach ops and calls them as functional
        # fallbacks, each tensor then copied back (~250 device copies in a compiled 12-layer prefill, H100
        # 2026-12-05); and each fill stays a kernel of its own (120 launches, ~1.7 ms of host time in a
        # compiled 2k prefill, H100 2026-12-05e), so a compiled prefill resets only what it will not write
        for state in states:
            for tensor, value in state.initial_values(skip_prefilled):
                tensor.fill_(value)
        return
    groups = defaultdict(list)
    for state in states:
        for tensor, value in state.initial_values(skip_prefilled):
            groups[tensor.device, tensor.dtype, value].append(tensor)
    for (_, _, value), tensors in groups.items():
        torch._foreach_zero_(tensors)
        if value != 0:
            torch._foreach_add_(tensors, value)


def write_rows(buffer, slot, new, valid):
    """buffer[b, slot[b]] = new[b] where valid[b], in place. buffer [B, S, ...], slot [B], new [B, ...]."""
    rows = torch.arange(buffer.shape[0], device=buffer.device)
    keep = valid.reshape(-1, *([1] * (new.dim() - 1)))
    buffer[rows, slot] = torch.where(keep, new.to(buffer.dtype), buffer[rows, slot])


def copy_rows(dest, new, valid):
    """dest[b] = new[b] where valid[b], in place."""
    dest.copy_(torch.where(valid.reshape(-1, *([1] * (dest.dim() - 1))), new.to(dest.dtype), dest))


class Mamba2State(State):
    """The Mamba-2 mixer's recurrent state: the last k-1 conv inputs and the SSM state (float32)."""

    FIELDS = ("conv", "ssm")
    PREFILL_WRITES_ALL = True  # Mamba2Mixer.forward: both, at each row's length

    def __init__(self, batch, conv_dim, kernel, heads, head_dim, state_size, device, dtype):
        self.conv = torch.empty(batch, conv_dim, kernel - 1, device=device, dtype=dtype)  # (B, C, k-1)
        self.ssm = torch.empty(batch, heads, head_dim, state_size, device=device, dtype=torch.float32)


class KeyValueRing(State):
    """Rotated keys and values of the last `size` real tokens of each row, in a ring."""

    FIELDS = ("k", "v", "pos")
    INITIAL = {"pos": _NO_TOKEN}
    PREFILL_WRITES_ALL = True  # `fill`: every slot, an empty one as zeros at NO_TOKEN

    def __init__(self, batch, size, kv_heads, head_dim, device, dtype):
        self.k = torch.empty(batch, size, kv_heads, head_dim, device=device, dtype=dtype)  # (B, S, Hkv, D)
        self.v = torch.empty_like(self.k)
        self.pos = torch.empty((batch, size), dtype=torch.long, device=device)

    @property
    def size(self):
        return self.pos.shape[1]

    def fill(self, k, v, lengths, use_kernels="auto"):
        """From a parallel pass: k, v [B, T, Hkv, D] with each row's real tokens first."""
        fill_ring_(self.k, self.v, self.pos, k, v, lengths, use_kernels=use_kernels)

    def push(self, k, v, pos, valid):
        """One token per row (k, v [B, Hkv, D] at positions pos [B]); rows where not valid keep their ring."""
        slot = pos % self.size
        write_rows(self.k, slot, k, valid)
        write_rows(self.v, slot, v, valid)
        write_rows(self.pos, slot, pos, valid)


class FullKeyValues(KeyValueRing):
    """Every real token's rotated key and value, slot = position; grows (eagerly) past its capacity."""

    PREFILL_WRITES_ALL = False  # `fill` writes the prompt's columns only; a reused buffer can be longer

    def fill(self, k, v, lengths, use_kernels="auto"):
        seqlen = k.shape[1]
        self.k[:, :seqlen] = k
        self.v[:, :seqlen] = v
        pos = torch.arange(seqlen, device=k.device).expand(k.shape[0], -1)
        self.pos[:, :seqlen] = torch.where(pos < lengths[:, None], pos, torch.full_like(pos, _NO_TOKEN))

    def reserve(self, needed):
        """Capacity for `needed` positions per row (doubling); re-binds the tensors, so only outside compiled steps."""
        if needed <= self.size:
            return
        extra = max(needed, 2 * self.size) - self.size
        for name, t in list(self._fields()):  # the new slots empty: each tensor's initial value
            room = t.new_full((t.shape[0], extra, *t.shape[2:]), self.INITIAL.get(name, 0))
            setattr(self, name, torch.cat([t, room], dim=1))


class TokenSet(State):
    """A set of tokens kept verbatim: scores s [B, S] (float32, -inf = empty slot), positions p [B, S]
    (EMPTY when empty), pre-RoPE keys and values k, v [B, S, Hkv, D]. Kept sorted by position."""

    FIELDS = ("s", "p", "k", "v")
    INITIAL = {"s": float("-inf"), "p": EMPTY}
    PREFILL_WRITES_ALL = True  # `fill_sets_after_prefill_`: every slot, an empty one at -inf / EMPTY

    def __init__(self, batch, size, kv_heads, head_dim, device, dtype):
        self.s = torch.empty((batch, size), dtype=torch.float32, device=device)
        self.p = torch.empty((batch, size), dtype=torch.long, device=device)
        self.k = torch.empty(batch, size, kv_heads, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)

    @property
    def size(self):
        return self.s.shape[1]

    def as_dict(self):
        return {"s": self.s, "p": self.p, "k": self.k, "v": self.v}

    def as_tuple(self):
        return self.s, self.p, self.k, self.v

    def assign(self, tokens):
        """Takes the contents of a dict set of the same size, in place; a larger one (an unbounded store
        that grew) re-binds the tensors."""
        if tokens["s"].shape[1] != self.size:
            for name, t in tokens.items():
                setattr(self, name, t.to(getattr(self, name).dtype))
            return
        for name, t in tokens.items():
            if t is not getattr(self, name):  # a set the step left as it was is its own tensors: no copy
                getattr(self, name).copy_(t)


class AttentionState(State):
    """Sliding-window attention: a ring of the last w keys/values. Full attention: every key/value."""

    FIELDS = ("window",)

    def __init__(self, batch, size, kv_heads, head_dim, device, dtype, full=False):
        kind = FullKeyValues if full else KeyValueRing
        self.window = kind(batch, size, kv_heads, head_dim, device, dtype)


class BMojoState(State):
    """The B'MOJO mixer: its fading memory's Mamba-2 state, the window ring, the ring of the last w + n_f
    fading keys/values (of which the oldest n_f form the fading band), the fading output f_{t-1}, and the
    eidetic store with the candidates of the previous and current chunk."""

    FIELDS = ("fading", "window", "band", "f_last", "store", "prev", "cur")
    PREFILL_WRITES_ALL = True  # f_last, its only tensor (zeros for an empty row); the nested states say

    def __init__(self, batch, fading, window, span, kv_heads, head_dim, hidden_size, eidetic_sizes,
                 device, dtype):
        self.fading = fading
        self.window = KeyValueRing(batch, window, kv_heads, head_dim, device, dtype)
        self.band = KeyValueRing(batch, span, kv_heads, head_dim, device, dtype)
        self.f_last = torch.empty(batch, hidden_size, device=device, dtype=dtype)
        self.eidetic = eidetic_sizes is not None
        if self.eidetic:
            store, per_chunk = eidetic_sizes
            self.store = TokenSet(batch, store, kv_heads, head_dim, device, dtype)
            self.prev = TokenSet(batch, per_chunk, kv_heads, head_dim, device, dtype)
            self.cur = TokenSet(batch, per_chunk, kv_heads, head_dim, device, dtype)

    def sets(self):
        return {"store": self.store, "prev": self.prev, "cur": self.cur} if self.eidetic else {}

