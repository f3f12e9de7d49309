"""Attention mixers: sliding-window and full causal attention, and the B'MOJO mixer that joins a
window, a fading band read from a Mamba-2 state, and an eidetic store in one softmax (DESIGN.md §3).

B'MOJO: Zancato et al., NeurIPS 2024. The fading band ("hollow window") follows the authors'
released B'MOJO-F layer; the eidetic store is ours, from the paper's description.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.dispatch import memory_attention
from ..kernels.memory_attention.naive import attend_segments
from .common import RMSNorm, gather_last, push, rope_angles, rotate, where_rows
from .innovation import InnovationPredictor, empty_set, parallel_eidetic, sets_after_prefill, step_sets
from .mamba2 import Mamba2Mixer


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

    def project(self, x):
        q = self.q_proj(x).reshape(*x.shape[:-1], self.heads, self.head_dim)  # (B, T, H, D)
        if self.q_norm is not None:
            q = self.q_norm(q)
        k, v = self.project_keys(x, self.k_proj, self.v_proj)
        return q, k, v

    def angles(self, positions):
        return rope_angles(positions, self.head_dim, self.rope_theta)

    def rope(self, x, angles):
        return rotate(x, *angles, use_kernels=self.use_kernels)

    def _out(self, o):
        return self.o_proj(o.reshape(*o.shape[:-2], self.heads * self.head_dim))

    def forward(self, hidden, lengths, state=None):
        batch, seqlen, _ = hidden.shape
        q, k, v = self.project(hidden)
        pos = torch.arange(seqlen, device=hidden.device).expand(batch, -1)
        angles = self.angles(pos)
        q_rot, k_rot = self.rope(q, angles), self.rope(k, angles)
        o = memory_attention(q_rot, k_rot, v, self.window, use_kernels=self.use_kernels)
        if state is not None:
            if self.window is None:
                state["k"], state["v"] = k_rot, v
                state["kv_valid"] = pos < lengths[:, None]
            else:
                state["k"], state["kv_valid"] = gather_last(k_rot, lengths, self.window)
                state["v"], _ = gather_last(v, lengths, self.window)
        return self._out(o), hidden.new_zeros(())

    def empty_state(self, batch, device, dtype):
        size = 0 if self.window is None else self.window
        return {
            "k": torch.zeros(batch, size, self.kv_heads, self.head_dim, device=device, dtype=dtype),
            "v": torch.zeros(batch, size, self.kv_heads, self.head_dim, device=device, dtype=dtype),
            "kv_valid": torch.zeros(batch, size, dtype=torch.bool, device=device),
        }

    def _push_window(self, state, k_rot, v, valid):
        if self.window is None:  # a growing cache: every column is kept, invalid ones masked
            state["k"] = torch.cat([state["k"], k_rot[:, None].to(state["k"].dtype)], dim=1)
            state["v"] = torch.cat([state["v"], v[:, None].to(state["v"].dtype)], dim=1)
            state["kv_valid"] = torch.cat([state["kv_valid"], valid[:, None]], dim=1)
        else:
            state["k"] = push(state["k"], k_rot, valid)
            state["v"] = push(state["v"], v, valid)
            state["kv_valid"] = push(state["kv_valid"], valid, valid)

    def _attend(self, q_rot, segments):
        """q_rot [B, H, D] against [(q, k [B, S, Hkv, D], v, mask [B, S])] -> [B, H, D]."""
        batch = q_rot.shape[0]
        group = self.heads // self.kv_heads

        def as_block(t):  # a single query is one block of one query
            return t.reshape(batch, 1, 1, self.kv_heads, group, self.head_dim)

        segs = [(as_block(q), k[:, None], v[:, None], mask[:, None, None]) for q, k, v, mask in segments]
        o = attend_segments(segs, 1.0 / math.sqrt(self.head_dim))
        return o.reshape(batch, self.heads, self.head_dim).to(q_rot.dtype)

    def step(self, hidden, pos, valid, state):
        q, k, v = self.project(hidden)  # (B, H, D), (B, Hkv, D)
        angles = self.angles(pos[:, None])
        q_rot, k_rot = self.rope(q[:, None], angles)[:, 0], self.rope(k[:, None], angles)[:, 0]
        self._push_window(state, k_rot, v, valid)
        o = self._attend(q_rot, [(q_rot, state["k"], state["v"], state["kv_valid"])])
        return self._out(o)


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

    def fading_kv(self, f):
        return self.project_keys(f, self.kf_proj or self.k_proj, self.vf_proj or self.v_proj)

    def forward(self, hidden, lengths, state=None):
        batch, seqlen, _ = hidden.shape
        f = self.fading(hidden, lengths, state)  # (B, T, d): the fading memory at every position
        q, k, v = self.project(hidden)
        kf, vf = self.fading_kv(f)
        pos = torch.arange(seqlen, device=hidden.device).expand(batch, -1)
        real = pos < lengths[:, None]
        angles = self.angles(pos)
        q_rot, k_rot, kf_rot = self.rope(q, angles), self.rope(k, angles), self.rope(kf, angles)
        extra, aux = {}, hidden.new_zeros((), dtype=torch.float32)
        if self.eidetic:
            f_prev = F.pad(f, (0, 0, 1, 0))[:, :seqlen]  # f_{t-1}, zero before the first token
            innovation = self.predictor(f_prev, k)  # (B, T)
            aux = (innovation * real).sum() / real.sum().clamp(min=1)
            ek, ev, e_valid, cands, stores = parallel_eidetic(
                innovation.detach(), real, k, v, self.window, self.per_chunk, self.capacity)
            extra = dict(q_raw=q, eidetic_keys=ek, eidetic_values=ev, eidetic_valid=e_valid)
        o = memory_attention(q_rot, k_rot, v, self.window, use_kernels=self.use_kernels, fading_keys=kf_rot,
                             fading_values=vf, fading_tokens=self.fading_tokens, **extra)
        if state is not None:
            state["k"], state["kv_valid"] = gather_last(k_rot, lengths, self.window)
            state["v"], _ = gather_last(v, lengths, self.window)
            span = self.window + self.fading_tokens
            state["fk"], state["f_valid"] = gather_last(kf_rot, lengths, span)
            state["fv"], _ = gather_last(vf, lengths, span)
            state["f_last"] = gather_last(f, lengths, 1)[0][:, 0]
            if self.eidetic:
                for name, token_set in sets_after_prefill(lengths, self.window, cands, stores, k, v).items():
                    state.update({f"{name}.{key}": t for key, t in token_set.items()})
        return self._out(o), aux

    def empty_state(self, batch, device, dtype):
        state = super().empty_state(batch, device, dtype)
        state.update(self.fading.empty_state(batch, device, dtype))
        span = self.window + self.fading_tokens
        like = torch.zeros(batch, 1, self.kv_heads, self.head_dim, device=device, dtype=dtype)
        state["fk"] = torch.zeros(batch, span, self.kv_heads, self.head_dim, device=device, dtype=dtype)
        state["fv"] = torch.zeros_like(state["fk"])
        state["f_valid"] = torch.zeros(batch, span, dtype=torch.bool, device=device)
        state["f_last"] = torch.zeros(batch, self.fading.hidden_size, device=device, dtype=dtype)
        if self.eidetic:
            sizes = {"store": self.capacity or 0, "prev": self.per_chunk, "cur": self.per_chunk}
            for name, size in sizes.items():
                state.update({f"{name}.{key}": t for key, t in empty_set(batch, size, like).items()})
        return state

    def step(self, hidden, pos, valid, state):
        f = self.fading.step(hidden, valid, state)  # (B, d)
        q, k, v = self.project(hidden)
        kf, vf = self.fading_kv(f)
        segments = []
        if self.eidetic:
            innovation = self.predictor(state["f_last"][:, None], k[:, None])[:, 0]  # (B,)
            token = {"s": innovation.detach(), "p": pos, "k": k, "v": v}
            token = {name: t[:, None] for name, t in token.items()}
            sets = {name: {key: state[f"{name}.{key}"] for key in "spkv"} for name in ("store", "prev", "cur")}
            at_boundary = valid & (pos % self.window == 0)
            sets = step_sets(sets, token, at_boundary, valid, self.capacity, self.per_chunk)
            for name, token_set in sets.items():
                state.update({f"{name}.{key}": t for key, t in token_set.items()})
            store = sets["store"]
            segments.append((q, store["k"], store["v"], ~torch.isneginf(store["s"])))
        state["f_last"] = where_rows(valid, f.to(state["f_last"].dtype), state["f_last"])
        angles = self.angles(pos[:, None])
        q_rot, k_rot, kf_rot = (self.rope(t[:, None], angles)[:, 0] for t in (q, k, kf))
        self._push_window(state, k_rot, v, valid)
        state["fk"] = push(state["fk"], kf_rot, valid)
        state["fv"] = push(state["fv"], vf, valid)
        state["f_valid"] = push(state["f_valid"], valid, valid)
        nf = self.fading_tokens
        segments = [(q_rot, state["k"], state["v"], state["kv_valid"]),
                    (q_rot, state["fk"][:, :nf], state["fv"][:, :nf], state["f_valid"][:, :nf])] + segments
        return self._out(self._attend(q_rot, segments))
