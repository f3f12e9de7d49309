"""Mamba-2 state-space duality (SSD) scan in plain PyTorch: the definition our kernels must match.

Dao & Gu, "Transformers are SSMs" (ICML 2024). Per head h, with a scalar decay per step:

    S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * x_t B_t^T          S_t: [P, N]
    y_t = S_t C_t + D_h * x_t

Shapes: x [B, T, H, P], dt [B, T, H] (after softplus, >= 0), A [H] (< 0), B and C [B, T, G, N]
with G groups shared by H // G heads each, D [H] or None, state [B, H, P, N].
Every function returns (y, final_state); final_state is None unless output_final_state.
Computation is in float32 (float64 for float64 inputs); y comes back in x's dtype.
"""

import torch


def _acc(t):
    """float64 stays float64 (for reference checks); everything else computes in float32."""
    return t.double() if t.dtype == torch.float64 else t.float()


def _expand_groups(t, num_heads):
    # (B, T, G, N) -> (B, T, H, N)
    return t.repeat_interleave(num_heads // t.shape[2], dim=2)


def ssd_recurrent(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False):
    """Step-by-step recurrence: slow and obviously right."""
    batch, seqlen, heads, headdim = x.shape
    xf, dtf, Af = _acc(x), _acc(dt), _acc(A)
    Bh, Ch = _expand_groups(_acc(B), heads), _expand_groups(_acc(C), heads)
    state = x.new_zeros(batch, heads, headdim, B.shape[-1], dtype=xf.dtype)
    if initial_state is not None:
        state = _acc(initial_state).clone()
    ys = []
    for t in range(seqlen):
        decay = torch.exp(dtf[:, t] * Af)  # (B, H)
        update = torch.einsum("bhp,bhn->bhpn", xf[:, t] * dtf[:, t, :, None], Bh[:, t])
        state = decay[:, :, None, None] * state + update
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else xf.clone()
    if D is not None:
        y = y + xf * _acc(D)[:, None]
    return y.to(x.dtype), (state if output_final_state else None)


def _per_head(t, heads):
    """[B, G, N] -> [B, H, N], each group's row for its H / G heads: a view when G = 1 (no copy to launch in
    an eager decode step), else repeated."""
    if t.shape[1] == 1:
        return t.expand(-1, heads, -1)
    return t.repeat_interleave(heads // t.shape[1], dim=1)


def ssd_step(x, dt, A, B, C, state, D=None):
    """One decoding step. x [B, H, P], dt [B, H], B/C [B, G, N], state [B, H, P, N] (float32).

    Returns (y [B, H, P], new_state)."""
    heads = x.shape[1]
    Bh, Ch = (_per_head(_acc(t), heads) for t in (B, C))
    xf, dtf = _acc(x), _acc(dt)
    decay = torch.exp(dtf * _acc(A))
    # Broadcasts and a sum rather than einsums: a compiled decode step then fuses the state update and
    # the read-out into one pass over the state (an einsum becomes a batched matrix-vector call per op).
    state = decay[:, :, None, None] * state + (xf * dtf[..., None])[..., None] * Bh[:, :, None, :]
    y = (state * Ch[:, :, None, :]).sum(-1)
    if D is not None:
        y = y + xf * _acc(D)[:, None]
    return y.to(x.dtype), state


def ssd_chunked(x, dt, A, B, C, chunk_size, D=None, initial_state=None, output_final_state=False):
    """The chunked matmul form: quadratic attention-like products inside chunks of `chunk_size`,
    a linear recurrence over chunk states between them. Same function as `ssd_recurrent`."""
    batch, seqlen, heads, headdim = x.shape
    pad = (-seqlen) % chunk_size
    xf, dtf = _acc(x), _acc(dt)
    Bh, Ch = _expand_groups(_acc(B), heads), _expand_groups(_acc(C), heads)
    if pad:
        # dt = 0 on padding: no decay and no input, so the final state is the state at seqlen.
        xf = torch.nn.functional.pad(xf, (0, 0, 0, 0, 0, pad))
        dtf = torch.nn.functional.pad(dtf, (0, 0, 0, pad))
        Bh = torch.nn.functional.pad(Bh, (0, 0, 0, 0, 0, pad))
        Ch = torch.nn.functional.pad(Ch, (0, 0, 0, 0, 0, pad))
    nchunks = xf.shape[1] // chunk_size
    shape = (batch, nchunks, chunk_size, heads)
    xdt = (xf * dtf[..., None]).reshape(*shape, headdim)  # (B, C, Q, H, P)
    Bc, Cc = Bh.reshape(*shape, -1), Ch.reshape(*shape, -1)  # (B, C, Q, H, N)
    log_decay = (dtf * _acc(A)).reshape(shape).permute(0, 3, 1, 2)  # (B, H, C, Q)
    cum = torch.cumsum(log_decay, dim=-1)

    # Inside a chunk: y_i = sum_{j<=i} (C_i . B_j) exp(cum_i - cum_j) dt_j x_j
    seg = cum[..., :, None] - cum[..., None, :]  # (B, H, C, Q, Q)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    decay_ij = torch.exp(seg.masked_fill(~causal, float("-inf")))
    scores = torch.einsum("bcihn,bcjhn->bhcij", Cc, Bc) * decay_ij
    y = torch.einsum("bhcij,bcjhp->bcihp", scores, xdt)

    # State each chunk adds, decayed to the chunk's end.
    to_end = torch.exp(cum[..., -1:] - cum)  # (B, H, C, Q)
    chunk_states = torch.einsum("bcjhn,bhcj,bcjhp->bchpn", Bc, to_end, xdt)
    chunk_decay = torch.exp(cum[..., -1])  # (B, H, C)
    state = x.new_zeros(batch, heads, headdim, Bc.shape[-1], dtype=xf.dtype)
    if initial_state is not None:
        state = _acc(initial_state)
    entering = []
    for c in range(nchunks):
        entering.append(state)
        state = chunk_decay[:, :, c, None, None] * state + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)  # (B, C, H, P, N)

    # Contribution of the state entering each chunk.
    y = y + torch.einsum("bcihn,bchpn,bhci->bcihp", Cc, entering, torch.exp(cum))
    y = y.reshape(batch, nchunks * chunk_size, heads, headdim)[:, :seqlen]
    if D is not None:
        y = y + _acc(x) * _acc(D)[:, None]
    return y.to(x.dtype), (state if output_final_state else None)
