"""One B'MOJO layer as a numbered listing of the paper, in plain PyTorch, token by token.

Zancato et al., "B'MOJO: Hybrid State Space Realizations of Foundation Models with Eidetic and
Fading Memory", NeurIPS 2024. It reads the parameters of a `BMojoMixer` and recomputes the
layer's output for ONE unpadded sequence with explicit loops and Python sorting, so that tests can
hold the parallel and recurrent forms against a version a reader can check line by line.
Nothing here is fast; nothing here is used by the model.
"""

import math

import torch
import torch.nn.functional as F


def _rms(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, pos, theta):
    # x [heads, D] rotated by angle pos * theta^(-2i/D), rotate-half pairing (i, i + D/2).
    dim = x.shape[-1]
    freq = theta ** (-torch.arange(0, dim, 2, dtype=x.dtype) / dim)
    cos, sin = torch.cos(pos * freq), torch.sin(pos * freq)
    a, b = x[..., : dim // 2], x[..., dim // 2:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def fading_memory(m, x):
    """(1) Mamba-2: f_t from u_1..u_t through a conv window and a [H, P, N] state. x [T, d] -> f [T, d]."""
    T = x.shape[0]
    z, xbc, dt = (m.in_proj.weight.double() @ x.T).T.split([m.inner, m.conv_dim, m.heads], dim=-1)
    w, bias = m.conv1d.weight.double()[:, 0], m.conv1d.bias.double()  # (C, k)
    padded = torch.cat([xbc.new_zeros(m.kernel - 1, m.conv_dim), xbc])
    state = x.new_zeros(m.heads, m.head_dim, m.state_size)
    A = -torch.exp(m.A_log.double())
    rep = m.heads // m.groups
    out = []
    for t in range(T):
        u = F.silu((padded[t:t + m.kernel].T * w).sum(-1) + bias)  # causal depthwise conv
        xs, Bs, Cs = u.split([m.inner, m.groups * m.state_size, m.groups * m.state_size])
        xs = xs.reshape(m.heads, m.head_dim)
        Bs = Bs.reshape(m.groups, m.state_size).repeat_interleave(rep, 0)
        Cs = Cs.reshape(m.groups, m.state_size).repeat_interleave(rep, 0)
        step = F.softplus(dt[t] + m.dt_bias.double())  # (H,)
        state = torch.exp(step * A)[:, None, None] * state + (step[:, None] * xs)[:, :, None] * Bs[:, None, :]
        y = (state * Cs[:, None, :]).sum(-1) + m.D.double()[:, None] * xs  # (H, P)
        gated = y.reshape(-1) * F.silu(z[t])
        out.append(m.out_proj.weight.double() @ _rms(gated, m.norm.weight.double(), m.norm.eps))
    return torch.stack(out)


def bmojo_layer_reference(mixer, x):
    """x [T, d] (one sequence, no padding) -> (y [T, d], innovation [T], stores: list of position lists)."""
    x = x.double()
    T, w, nf = x.shape[0], mixer.window, mixer.fading_tokens
    H, Hkv, D = mixer.heads, mixer.kv_heads, mixer.head_dim
    theta = mixer.rope_theta

    def proj(layer, inp, heads, norm):
        out = (layer.weight.double() @ inp.T).T.reshape(-1, heads, D)
        return out if norm is None else _rms(out, norm.weight.double(), norm.eps)

    # (1) fading memory and (2) projections: q, k, v from x; fading keys/values from f.
    f = fading_memory(mixer.fading, x)
    q = proj(mixer.q_proj, x, H, mixer.q_norm)
    k, v = proj(mixer.k_proj, x, Hkv, mixer.k_norm), proj(mixer.v_proj, x, Hkv, None)
    kf = proj(mixer.kf_proj or mixer.k_proj, f, Hkv, mixer.k_norm)
    vf = proj(mixer.vf_proj or mixer.v_proj, f, Hkv, None)

    # (4) innovation: how badly f_{t-1} predicts k_t.
    innovation = torch.zeros(T, dtype=torch.float64)
    if mixer.eidetic:
        p = mixer.predictor.proj
        f_prev = torch.cat([f.new_zeros(1, f.shape[1]), f[:-1]])
        k_hat = (p.weight.double() @ f_prev.T).T + p.bias.double()
        innovation = (k.reshape(T, -1) - k_hat).pow(2).mean(-1)
    best = lambda positions, n: sorted(positions, key=lambda s: (-innovation[s].item(), s))[:n]  # noqa: E731

    # Candidates: each chunk's n_e most innovative tokens. Store of chunk c: best M_e of chunks <= c-2.
    nchunks = -(-T // w)
    cands = [best(range(c * w, min(T, (c + 1) * w)), mixer.per_chunk) for c in range(nchunks)]
    stores = []
    for c in range(nchunks):
        pool = [s for j in range(c - 1) for s in cands[j]] if mixer.eidetic else []
        stores.append(sorted(best(pool, len(pool) if mixer.capacity is None else mixer.capacity)))

    # (3) one softmax per query over window, fading band and the chunk's store.
    group = H // Hkv
    y = []
    for t in range(T):
        qr = _rope(q[t], t, theta)
        keys, values, queries = [], [], []
        for s in range(max(0, t - w + 1), t + 1):  # window (t - w, t]
            keys.append(_rope(k[s], s, theta)), values.append(v[s]), queries.append(qr)
        for s in range(max(0, t - w - nf + 1), t - w + 1):  # fading band (t - w - n_f, t - w]
            keys.append(_rope(kf[s], s, theta)), values.append(vf[s]), queries.append(qr)
        for s in stores[t // w]:  # eidetic: no rotation on either side
            keys.append(k[s]), values.append(v[s]), queries.append(q[t])
        K = torch.stack(keys).repeat_interleave(group, 1)  # (S, H, D)
        V = torch.stack(values).repeat_interleave(group, 1)
        Q = torch.stack(queries)  # (S, H, D): the query each key is scored with
        logits = (Q * K).sum(-1) / math.sqrt(D)  # (S, H)
        y.append((torch.softmax(logits, dim=0)[..., None] * V).sum(0))  # (H, D)
    # (5) output projection.
    o = torch.stack(y).reshape(T, H * D)
    return (mixer.o_proj.weight.double() @ o.T).T, innovation, stores
