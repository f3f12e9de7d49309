"""B'MOJO memory attention in plain PyTorch: the definition (a loop over queries) and the
chunked form the model runs on CPU.

Query t (0-based, in the row's own token positions) attends, in ONE softmax with scale 1/sqrt(D):
  - the window        k_s, v_s   for t - w < s <= t                 (RoPE'd, scored with q_rot)
  - the fading band   kf_s, vf_s for t - w - n_f < s <= t - w       (RoPE'd, scored with q_rot)
  - the eidetic set   ek_m, ev_m of the chunk c = t // w that holds t (no RoPE, scored with q_raw)
`window=None` is plain causal attention over every s <= t (no fading band, no eidetic set).

Shapes: q_rot, q_raw [B, T, H, D]; k, v, kf, vf [B, T, Hkv, D] (H a multiple of Hkv: GQA);
eidetic_keys/values [B, NC, M, Hkv, D] with NC = ceil(T / w); eidetic_valid [B, NC, M] bool.
Returns o [B, T, H, D] in q's dtype; softmax in float32.
"""

import math

import torch


def memory_attention_naive(q_rot, k, v, window, q_raw=None, fading_keys=None, fading_values=None,
                           fading_tokens=0, eidetic_keys=None, eidetic_values=None, eidetic_valid=None):
    batch, seqlen, heads, dim = q_rot.shape
    group = heads // k.shape[2]
    scale = 1.0 / math.sqrt(dim)

    def rep(t):  # (B, S, Hkv, D) -> (B, S, H, D)
        return t.float().repeat_interleave(group, dim=2)

    k, v = rep(k), rep(v)
    out = []
    for t in range(seqlen):
        lo = 0 if window is None else max(0, t - window + 1)
        logits = [torch.einsum("bhd,bshd->bhs", q_rot[:, t].float(), k[:, lo:t + 1])]
        values = [v[:, lo:t + 1]]
        masks = [torch.ones(batch, t + 1 - lo, dtype=torch.bool, device=q_rot.device)]
        if window is not None and fading_tokens and fading_keys is not None and t - window >= 0:
            flo = max(0, t - window - fading_tokens + 1)
            logits.append(torch.einsum("bhd,bshd->bhs", q_rot[:, t].float(), rep(fading_keys)[:, flo:t - window + 1]))
            values.append(rep(fading_values)[:, flo:t - window + 1])
            masks.append(torch.ones(batch, t - window + 1 - flo, dtype=torch.bool, device=q_rot.device))
        if window is not None and eidetic_keys is not None and eidetic_keys.shape[2] > 0:
            c = t // window
            logits.append(torch.einsum("bhd,bshd->bhs", q_raw[:, t].float(), rep(eidetic_keys[:, c])))
            values.append(rep(eidetic_values[:, c]))
            masks.append(eidetic_valid[:, c])
        s = torch.cat(logits, dim=-1) * scale
        s = s.masked_fill(~torch.cat(masks, dim=-1)[:, None, :], float("-inf"))
        p = torch.softmax(s, dim=-1)
        out.append(torch.einsum("bhs,bshd->bhd", p, torch.cat(values, dim=1)))
    return torch.stack(out, dim=1).to(q_rot.dtype)


def attend_segments(segments, scale):
    """One softmax over several key segments, each scored with its own query.

    segments: list of (q [B, N, Q, Hkv, G, D], k [B, N, S, Hkv, D], v [B, N, S, Hkv, D], mask [B|1, N, Q, S]).
    N indexes blocks of Q queries that share keys. Returns [B, N, Q, Hkv, G, D] in float32.
    """
    logits, values = [], []
    for q, k, v, mask in segments:
        s = torch.einsum("bnqhgd,bnshd->bnhgqs", q.float(), k.float()) * scale
        logits.append(s.masked_fill(~mask[:, :, None, None], float("-inf")))
        values.append(v.float())
    p = torch.softmax(torch.cat(logits, dim=-1), dim=-1)
    return torch.einsum("bnhgqs,bnshd->bnqhgd", p, torch.cat(values, dim=2))


def _bands(x, window, start, width, nblocks):
    """Key slabs for each block j of `window` queries: positions j*w + start + [0, width). Out-of-range
    positions read zeros (and are masked by the caller). x [B, T, Hkv, D] -> [B, NB, width, Hkv, D]."""
    front = max(0, -start)
    back = max(0, nblocks * window + start + width - x.shape[1] - front)
    xp = torch.nn.functional.pad(x, (0, 0, 0, 0, front, back))
    idx = torch.arange(nblocks, device=x.device)[:, None] * window + start + front
    idx = idx + torch.arange(width, device=x.device)[None, :]
    return xp[:, idx]


def memory_attention_chunked(q_rot, k, v, window, q_raw=None, fading_keys=None, fading_values=None,
                             fading_tokens=0, eidetic_keys=None, eidetic_values=None, eidetic_valid=None):
    """Same function as `memory_attention_naive`, by blocks of w queries: cost O(T (2w + w + n_f + M))."""
    batch, seqlen, heads, dim = q_rot.shape
    kv_heads = k.shape[2]
    scale = 1.0 / math.sqrt(dim)
    if window is None:
        group = heads // kv_heads
        o = torch.nn.functional.scaled_dot_product_attention(
            q_rot.transpose(1, 2), k.repeat_interleave(group, 2).transpose(1, 2),
            v.repeat_interleave(group, 2).transpose(1, 2), is_causal=True)
        return o.transpose(1, 2)
    w = window
    nblocks = -(-seqlen // w)
    pad = nblocks * w - seqlen

    def blocks_of_queries(q):  # (B, T, H, D) -> (B, NB, w, Hkv, G, D)
        q = torch.nn.functional.pad(q, (0, 0, 0, 0, 0, pad))
        return q.reshape(batch, nblocks, w, kv_heads, heads // kv_heads, dim)

    qb = blocks_of_queries(q_rot)
    t = torch.arange(nblocks * w, device=q_rot.device).reshape(nblocks, w, 1)  # query positions
    s_win = (torch.arange(nblocks, device=q_rot.device)[:, None, None] - 1) * w + torch.arange(2 * w, device=q_rot.device)
    win_mask = (s_win > t - w) & (s_win <= t) & (s_win >= 0)  # (NB, w, 2w)
    segments = [(qb, _bands(k, w, -w, 2 * w, nblocks), _bands(v, w, -w, 2 * w, nblocks), win_mask[None])]
    if fading_tokens and fading_keys is not None:
        width = w + fading_tokens
        s_fad = (torch.arange(nblocks, device=q_rot.device)[:, None, None] - 1) * w - fading_tokens \
            + torch.arange(width, device=q_rot.device)
        fad_mask = (s_fad > t - w - fading_tokens) & (s_fad <= t - w) & (s_fad >= 0)
        start = -w - fading_tokens
        segments.append((qb, _bands(fading_keys, w, start, width, nblocks),
                         _bands(fading_values, w, start, width, nblocks), fad_mask[None]))
    if eidetic_keys is not None and eidetic_keys.shape[2] > 0:
        mask = eidetic_valid[:, :, None, :].expand(-1, -1, w, -1)
        segments.append((blocks_of_queries(q_raw), eidetic_keys, eidetic_values, mask))
    o = attend_segments(segments, scale)  # (B, NB, w, Hkv, G, D)
    return o.reshape(batch, nblocks * w, heads, dim)[:, :seqlen].to(q_rot.dtype)
