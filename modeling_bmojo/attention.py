"""Attention mixers: sliding-window and full causal attention, and the B'MOJO mixer that joins a
window, a fading band read from a Mamba-2 state, and an eidetic store in one softmax (DESIGN.md §3).

B'MOJO: Zancato et al., NeurIPS 2024. The fading band ("hollow window") follows the authors'
released B'MOJO-F layer; the eidetic store is ours, from the paper's description.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.dispatch import (decode_attention, eidetic_decode_step_, eidetic_kernel_used, memory_attention,
                                push_rings_, rotate, state_writes_use_kernels)
from .common import (RMSNorm, gather_last, no_loss, real_token_count, real_tokens, rope_angles,
                     sequence_angles)
from .innovation import InnovationPredictor, fill_sets_after_prefill_, parallel_eidetic, step_sets
from .mamba2 import Mamba2Mixer
from .state import AttentionState, BMojoState, copy_rows


class Attention(nn.Module):
    """Causal attention with RoPE; `window` None for full attention, else the band (t - w, t]."""

    def __init__(self, config, window):
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.window = window
        self.rope_theta = config.rope_theta
        self.use_kernels = config.use_kernels
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=False)
        self.q_norm = self.k_norm = None
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, config.use_kernels)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, config.use_kernels)

    def project_keys(self, x, k_proj, v_proj):
        k = k_proj(x).reshape(*x.shape[:-1], self.kv_heads, self.head_dim)  # (B, T, Hkv, D)
        if self.k_norm is not None:
            k = self.k_norm(k)
        return k, v_proj(x).reshape(*x.shape[:-1], self.kv_heads, self.head_dim)

    def project_queries(self, x):
        q = self.q_proj(x).reshape(*x.shape[:-1], self.heads, self.head_dim)  # (B, T, H, D)
        return q if self.q_norm is None else self.q_norm(q)

    def project(self, x):
        k, v = self.project_keys(x, self.k_proj, self.v_proj)
        return self.project_queries(x), k, v

    def angles(self, positions):
        return rope_angles(positions, self.head_dim, self.rope_theta)

    def sequence_angles(self, batch, seqlen, device):
        """The angles of a parallel pass's positions (computed once per pass, `common.sequence_angles`)."""
        return sequence_angles(batch, seqlen, self.head_dim, self.rope_theta, device)

    def rope(self, x, angles):
        return rotate(x, *angles, use_kernels=self.use_kernels)

    def _out(self, o):
        return self.o_proj(o.reshape(*o.shape[:-2], self.heads * self.head_dim))

    def forward(self, hidden, lengths, state=None):
        batch, seqlen, _ = hidden.shape
        q, k, v = self.project(hidden)
        angles = self.sequence_angles(batch, seqlen, hidden.device)
        q_rot, k_rot = self.rope(q, angles), self.rope(k, angles)
        o = memory_attention(q_rot, k_rot, v, self.window, use_kernels=self.use_kernels)
        if state is not None:
            state.window.fill(k_rot, v, lengths, self.use_kernels)
        return self._out(o), no_loss(hidden.device)

    def new_state(self, batch, device, dtype, max_length):
        """The decoding state: a ring of the last w keys/values, or (full attention) room for `max_length`."""
        size = max_length if self.window is None else self.window
        full = self.window is None
        return AttentionState(batch, size, self.kv_heads, self.head_dim, device, dtype, full=full)

    def writes_state_through_custom_op(self, hidden):
        """Whether `step` updates its state with a mutating custom op (see modeling._decode_layer)."""
        return False

    def _attend(self, q_rot, segments):
        """One query per row against key segments: q_rot [B, H, D], segments [(q [B, H, D], k [B, S, Hkv, D],
        v, mask [B, S])] -> [B, H, D] in q_rot's dtype, one softmax over all segments (a row without a valid
        key gets zeros). The fused Triton kernel on CUDA, else the reference (kernels/dispatch.py)."""
        o = decode_attention(segments, 1.0 / math.sqrt(self.head_dim), use_kernels=self.use_kernels)
        return o.to(q_rot.dtype)

    def rotate_one(self, pos, *tensors):
        """RoPE at positions pos [B] for one token per row: each tensor [B, H, D] (head counts may differ).

        Tensors of one dtype are rotated as one [B, sum H, D] tensor: one fused call (or, eagerly on the CPU,
        one chain of ops) instead of one per tensor, since an eager decode step is bound by its launches and
        each fused call costs host time; the rotation is elementwise, so the values are the same."""
        angles = self.angles(pos[:, None])
        if len({t.dtype for t in tensors}) > 1:
            return [self.rope(t[:, None], angles)[:, 0] for t in tensors]
        rotated = self.rope(torch.cat(tensors, dim=1)[:, None], angles)[:, 0]
        return list(rotated.split([t.shape[1] for t in tensors], dim=1))

    def step(self, hidden, pos, valid, state):
        """One token per row: hidden [B, d] at positions pos [B]; rows not `valid` leave `state` as it was."""
        q, k, v = self.project(hidden)  # (B, H, D), (B, Hkv, D)
        q_rot, k_rot = self.rotate_one(pos, q, k)
        ring = state.window
        ring.push(k_rot, v, pos, valid)
        return self._out(self._attend(q_rot, [(q_rot, ring.k, ring.v, ring.pos >= 0)]))


class BMojoMixer(Attention):
    """Window + fading band + eidetic store in one softmax; fading keys come from a Mamba-2 state."""

    def __init__(self, config):
        super().__init__(config, config.window_size)
        self.fading_tokens = config.fading_tokens
        self.fading = Mamba2Mixer(config)
        if config.tie_fading_projections:
            self.kf_proj, self.vf_proj = None, None
        else:
            d, kv = config.hidden_size, self.kv_heads * self.head_dim
            self.kf_proj, self.vf_proj = nn.Linear(d, kv, bias=False), nn.Linear(d, kv, bias=False)
        self.per_chunk = config.eidetic_tokens_per_chunk
        self.capacity = config.eidetic_capacity
        self.eidetic = self.capacity != 0 and self.per_chunk > 0
        self.predictor = InnovationPredictor(config) if self.eidetic else None

    def writes_state_through_custom_op(self, hidden):
        return self.eidetic and self.capacity is not None and eidetic_kernel_used(hidden, self.use_kernels)

    def fading_kv(self, f):
        return self.project_keys(f, self.kf_proj or self.k_proj, self.vf_proj or self.v_proj)

    def project_step(self, hidden, f):
        """One token per row: q, k, v of hidden [B, d] and the fading keys / values of f [B, d]. With tied
        fading projections the two inputs go through k_proj and v_proj as one batch of 2B rows: one matmul
        each instead of two, since a decode step is bound by its launches, not by these tiny products."""
        if self.kf_proj is not None:
            return (*self.project(hidden), *self.fading_kv(f))
        keys, values = self.project_keys(torch.cat([hidden, f.to(hidden.dtype)]), self.k_proj, self.v_proj)
        rows = hidden.shape[0]
        return self.project_queries(hidden), keys[:rows], values[:rows], keys[rows:], values[rows:]

    def forward(self, hidden, lengths, state=None):
        batch, seqlen, _ = hidden.shape
        f, _ = self.fading(hidden, lengths, None if state is None else state.fading)  # (B, T, d)
        q, k, v = self.project(hidden)
        kf, vf = self.fading_kv(f)
        real = real_tokens(lengths, seqlen)
        angles = self.sequence_angles(batch, seqlen, hidden.device)
        q_rot, k_rot, kf_rot = self.rope(q, angles), self.rope(k, angles), self.rope(kf, angles)
        extra, aux = {}, no_loss(hidden.device)
        if self.eidetic:
            f_prev = F.pad(f, (0, 0, 1, 0))[:, :seqlen]  # f_{t-1}, zero before the first token
            innovation = self.predictor(f_prev, k)  # (B, T)
            aux = (innovation * real).sum() / real_token_count(lengths, seqlen)
            ek, ev, e_valid, cands, stores = parallel_eidetic(
                innovation.detach(), real, k, v, self.window, self.per_chunk, self.capacity, self.use_kernels)
            extra = dict(q_raw=q, eidetic_keys=ek, eidetic_values=ev, eidetic_valid=e_valid)
        o = memory_attention(q_rot, k_rot, v, self.window, use_kernels=self.use_kernels, fading_keys=kf_rot,
                             fading_values=vf, fading_tokens=self.fading_tokens, **extra)
        if state is not None:
            state.window.fill(k_rot, v, lengths, self.use_kernels)
            state.band.fill(kf_rot, vf, lengths, self.use_kernels)
            state.f_last.copy_(gather_last(f, lengths, 1)[0][:, 0])  # f at the last real token, zeros if none
            if self.eidetic:
                fill_sets_after_prefill_(state.sets(), lengths, self.window, cands, stores, k, v,
                                         use_kernels=self.use_kernels)
        return self._out(o), aux

    def new_state(self, batch, device, dtype, max_length):
        fading = self.fading.new_state(batch, device, dtype, max_length)
        sizes = (self.capacity or 0, self.per_chunk) if self.eidetic else None
        return BMojoState(batch, fading, self.window, self.window + self.fading_tokens, self.kv_heads,
                          self.head_dim, self.fading.hidden_size, sizes, device, dtype)

    def step(self, hidden, pos, valid, state):
        f = self.fading.step(hidden, pos, valid, state.fading)  # (B, d)
        q, k, v, kf, vf = self.project_step(hidden, f)
        segments = []
        if self.eidetic:
            innovation = self.predictor(state.f_last[:, None], k[:, None])[:, 0]  # (B,)
            token = (innovation.detach().float(), pos, k, v)
            at_boundary = valid & (pos % self.window == 0)
            if self.capacity is None:  # an unbounded store grows (eagerly): merged as a new, larger set
                sets = {name: token_set.as_dict() for name, token_set in state.sets().items()}
                token = {name: t[:, None] for name, t in zip("spkv", token)}
                sets = step_sets(sets, token, at_boundary, valid, self.capacity, self.per_chunk)
                for name, token_set in state.sets().items():
                    token_set.assign(sets[name])
            else:  # fixed sizes: updated in place, one fused launch on CUDA
                eidetic_decode_step_(state.store.as_tuple(), state.prev.as_tuple(), state.cur.as_tuple(),
                                     token, at_boundary, valid, use_kernels=self.use_kernels)
            store = state.store
            segments.append((q, store.k, store.v, ~torch.isneginf(store.s)))
        copy_rows(state.f_last, f, valid)
        q_rot, k_rot, kf_rot = self.rotate_one(pos, q, k, kf)
        band = state.band
        if state_writes_use_kernels(k_rot, self.use_kernels):
            ring = (state.window.k, state.window.v, state.window.pos)  # one launch for both rings (eager)
            push_rings_(ring, (band.k, band.v, band.pos), k_rot, v, kf_rot, vf, pos, valid)
        else:
            state.window.push(k_rot, v, pos, valid)
            band.push(kf_rot, vf, pos, valid)
        # The ring holds the last w + n_f fading keys; the band is the oldest n_f: positions <= t - w.
        in_band = (band.pos >= 0) & (band.pos <= (pos - self.window)[:, None])
        segments = [(q_rot, state.window.k, state.window.v, state.window.pos >= 0),
                    (q_rot, band.k, band.v, in_band)] + segments
        return self._out(self._attend(q_rot, segments))
