"""The Mamba-2 mixer's short convolution, defined in plain PyTorch: a causal depthwise conv1d along time,
plus bias, then SiLU. The Triton kernel (`causal.py`) computes the same function."""

import torch.nn.functional as F


def causal_conv1d_silu_reference(x, weight, bias=None):
    """x [B, T, C] (any strides), weight [C, K], bias [C] or None -> [B, T, C] in x's dtype:
    y[b, t, c] = silu(bias[c] + sum_j weight[c, j] * x[b, t - (K - 1) + j, c]), x = 0 before t = 0.

    One grouped conv1d with K - 1 zeros of padding on each side, cut to the first T outputs (what
    `nn.Conv1d(C, C, K, groups=C, padding=K - 1)` and the slice in the mixer compute)."""
    seqlen, kernel = x.shape[1], weight.shape[1]
    bias = None if bias is None else bias.to(x.dtype)
    out = F.conv1d(x.transpose(1, 2), weight[:, None, :].to(x.dtype), bias, padding=kernel - 1,
                   groups=weight.shape[0])
    return F.silu(out[..., :seqlen].transpose(1, 2))
