"""The decoding state a parallel pass (a prefill) leaves, in plain PyTorch: the rings of the last keys.

A ring of size S keeps the token at position p in slot p % S (modeling_bmojo/state.py, DESIGN.md §5); after a
parallel pass over each row's real tokens (right-padded: real tokens first) slot j holds the last position
p < length with p % S == j. The eidetic sets' counterpart is `modeling_bmojo.innovation.sets_after_prefill`.
`rows.py` beside this file writes the same tensors in one Triton launch each.
"""

import torch

NO_TOKEN = -1  # a ring slot's position when it holds no token


def ring_positions(lengths, size):
    """Which token each slot of a ring of `size` holds after `lengths` tokens: [B, size], -1 when none.

    Slot j holds the last position p < lengths[b] with p % size == j."""
    slots = torch.arange(size, device=lengths.device)[None, :]
    last = lengths[:, None] - 1 - slots  # (B, size): distance back from the last token to slot j's residue
    pos = slots + size * torch.div(last, size, rounding_mode="floor")
    return torch.where(last >= 0, pos, torch.full_like(pos, NO_TOKEN))


def gather_positions(x, pos):
    """x [B, T, ...] at positions pos [B, S] (-1 reads zeros)."""
    idx = pos.clamp(min=0).reshape(*pos.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    out = torch.gather(x, 1, idx)
    return out * (pos >= 0).reshape(*pos.shape, *([1] * (x.dim() - 2))).to(out.dtype)


def fill_ring_reference_(ring_k, ring_v, ring_pos, k, v, lengths):
    """ring_* := the ring after a parallel pass over k, v [B, T, Hkv, D], in place: ring_k, ring_v
    [B, S, Hkv, D], ring_pos [B, S] int64 (-1 where the slot is empty, whose keys and values are zeros)."""
    pos = ring_positions(lengths, ring_pos.shape[1])
    ring_k.copy_(gather_positions(k, pos))
    ring_v.copy_(gather_positions(v, pos))
    ring_pos.copy_(pos)
