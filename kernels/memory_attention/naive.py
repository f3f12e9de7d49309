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


def accumulation_dtype(t):
    """float64 stays float64 (for reference checks); everything else accumulates in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def memory_attention_naive(q_rot, k, v, window, q_raw=None, fading_keys=None, fading_values=None,
                           fading_tokens=0, eidetic_keys=None, eidetic_values=None, eidetic_valid=None):
    batch, seqlen, heads, dim = q_rot.shape
    group = heads // k.shape[2]
    scale = 1.0 / math.sqrt(dim)

    acc = accumulation_dtype(q_rot)

    def rep(t):  # (B, S, Hkv, D) -> (B, S, H, D)
        return t.to(acc).repeat_interleave(group, dim=2)

    k, v = rep(k), rep(v)
    out = []
    for t in range(seqlen):
        lo = 0 if window is None else max(0, t - window + 1)
        logits = [torch.einsum("bhd,bshd->bhs", q_rot[:, t].to(acc), k[:, lo:t + 1])]
        values = [v[:, lo:t + 1]]
        masks = [torch.ones(batch, t + 1 - lo, dtype=torch.bool, device=q_rot.device)]
        if window is not None and fading_tokens and fading_keys is not None and t - window >= 0:
            flo = max(0, t - window - fading_tokens + 1)
            logits.append(torch.einsum("bhd,bshd->bhs", q_rot[:, t].to(acc), rep(fading_keys)[:, flo:t - window + 1]))
            values.append(rep(fading_values)[:, flo:t - window + 1])
            masks.append(torch.ones(batch, t - window + 1 - flo, dtype=torch.bool, device=q_rot.device))
        if window is not None and eidetic_keys is not None and eidetic_keys.shape[2] > 0:
            c = t // window
            logits.append(torch.einsum("bhd,bshd->bhs", q_raw[:, t].to(acc), rep(eidetic_keys[:, c])))
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
    N indexes blocks of Q queries that share keys. Returns [B, N, Q, Hkv, G, D] in float32 (float64 for float64 inputs).
    """
    logits, values = [], []
    acc = accumulation_dtype(segments[0][0])
    for q, k, v, mask in segments:
        s = torch.einsum("bnqhgd,bnshd->bnhgqs", q.to(acc), k.to(acc)) * scale
        logits.append(s.masked_fill(~mask[:, :, None, None], float("-inf")))
        values.append(v.to(acc))
    p = torch.softmax(torch.cat(logits, dim=-1), dim=-1)
    return torch.einsum("bnhgqs,bnshd->bnqhgd", p, torch.cat(values, dim=2))


# Score elements materialised at once (fp32): bounds the memory of long prefills without grad.
_MAX_SCORES = 1 << 27


def _bands(x, starts, width):
    """Key slabs: for each block b, positions starts[b] + [0, width). x [B, T, Hkv, D] -> [B, NB, width, Hkv, D].
    Positions outside [0, T) read a clamped neighbour; callers mask them out."""
    idx = starts[:, None] + torch.arange(width, device=x.device)[None, :]
    return x[:, idx.clamp(0, x.shape[1] - 1)]


def _block_segments(blocks, w, qb, qe, k, v, fading, eidetic):
    """The key segments of the query blocks `blocks` (a 1-D tensor of block indices)."""
    t = blocks[:, None, None] * w + torch.arange(w, device=k.device)[None, :, None]  # (NB, w, 1) query positions
    s = (blocks[:, None, None] - 1) * w + torch.arange(2 * w, device=k.device)  # window keys
    mask = (s > t - w) & (s <= t) & (s >= 0)
    segments = [(qb[:, blocks], _bands(k, (blocks - 1) * w, 2 * w), _bands(v, (blocks - 1) * w, 2 * w), mask[None])]
    if fading is not None:
        kf, vf, nf = fading
        start = blocks * w - w - nf
        s = start[:, None, None] + torch.arange(w + nf, device=k.device)
        mask = (s > t - w - nf) & (s <= t - w) & (s >= 0)
        segments.append((qb[:, blocks], _bands(kf, start, w + nf), _bands(vf, start, w + nf), mask[None]))
    if eidetic is not None:
        ek, ev, ok = eidetic
        mask = ok[:, blocks, None, :].expand(-1, -1, w, -1)
        segments.append((qe[:, blocks], ek[:, blocks], ev[:, blocks], mask))
    return segments


def memory_attention_chunked(q_rot, k, v, window, q_raw=None, fading_keys=None, fading_values=None,
                             fading_tokens=0, eidetic_keys=None, eidetic_values=None, eidetic_valid=None):
    """Same function as `memory_attention_naive`, by blocks of w queries: cost O(T (2w + w + n_f + M)).
    Blocks are processed in groups so that at most ~_MAX_SCORES scores exist at once."""
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

    fading = (fading_keys, fading_values, fading_tokens) if fading_tokens and fading_keys is not None else None
    eidetic = None
    if eidetic_keys is not None and eidetic_keys.shape[2] > 0:
        eidetic = (eidetic_keys, eidetic_values, eidetic_valid)
    qb = blocks_of_queries(q_rot)
    qe = blocks_of_queries(q_raw) if eidetic is not None else None
    keys_per_query = 2 * w + (w + fading_tokens if fading else 0) + (eidetic_keys.shape[2] if eidetic else 0)
    group = max(1, _MAX_SCORES // (batch * heads * w * keys_per_query))
    outs = []
    for first in range(0, nblocks, group):
        blocks = torch.arange(first, min(nblocks, first + group), device=q_rot.device)
        segments = _block_segments(blocks, w, qb, qe, k, v, fading, eidetic)
        outs.append(attend_segments(segments, scale).to(q_rot.dtype))  # (B, NBg, w, Hkv, G, D)
    o = torch.cat(outs, dim=1)
    return o.reshape(batch, nblocks * w, heads, dim)[:, :seqlen]


def decode_attention_reference(segments, scale):
    """One query per row against key segments in ONE softmax (the decoding step of every attention mixer).

    segments: 1 or more tuples (q [B, H, D], k [B, S, Hkv, D], v [B, S, Hkv, D], mask [B, S] bool); each
    segment has its own query (the eidetic store is scored with the un-rotated one); query head h reads
    kv head h // (H / Hkv). Returns [B, H, D] in the first query's dtype. A row with no valid key in any
    segment gets zeros (the softmax of nothing is defined as no output, not NaN).

    Written as broadcasts and sums with float32 accumulation, not float32 copies of the keys and einsums:
    a compiled decode step then reads each bf16 key and value once, in fused reductions (DESIGN.md §5)."""
    q0 = segments[0][0]
    batch, heads, dim = q0.shape
    kv_heads = segments[0][1].shape[2]
    group = heads // kv_heads
    acc = accumulation_dtype(q0)
    logits, masks = [], []
    for q, k, _, mask in segments:
        q = q.reshape(batch, 1, kv_heads, group, dim).to(acc)
        s = (q * k[:, :, :, None, :].to(acc)).sum(-1) * scale  # (B, S, Hkv, G)
        logits.append(s.masked_fill(~mask[:, :, None, None], float("-inf")))
        masks.append(mask)
    p = torch.softmax(torch.cat(logits, dim=1), dim=1)
    any_valid = torch.cat(masks, dim=1).any(dim=1)  # (B,): rows without one valid key softmax to NaN
    p = p.masked_fill(~any_valid[:, None, None, None], 0.0)
    out, start = 0.0, 0
    for (_, _, v, _), s in zip(segments, logits):
        weights = p[:, start:start + s.shape[1], :, :, None]
        out = out + (weights * v[:, :, :, None, :].to(acc)).sum(1)  # (B, Hkv, G, D)
        start += s.shape[1]
    return out.reshape(batch, heads, dim).to(q0.dtype)
