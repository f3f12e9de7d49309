"""Linear layer + cross-entropy in chunks of tokens, so that the [N, V] logits never exist at once.

The idea is Liger-Kernel's fused linear cross-entropy (Hsu et al. 2024) and Apple's Cut Cross-Entropy
(Wijmans et al. 2024); this is our own plain-PyTorch version. For a chunk of rows c:

    z_c = h_c @ W^T                                  # (n, V), matmul in the input dtype
    lse_c = logsumexp(float32(z_c))                  # (n,)
    loss += sum over rows with a label of lse_c - z_c[label]
    g_c = softmax(z_c) - onehot(label), 0 on ignored rows      # d loss / d z_c, (n, V)
    dh_c = g_c @ W ;  dW += g_c^T @ h_c              # dW accumulated in float32

The gradients are formed in the forward pass, while each chunk's logits are at hand; the backward pass
only scales them by the incoming gradient (the loss is a sum, so d loss/d h is linear in it).
"""

import torch

from ..kernels.memory_attention.naive import accumulation_dtype

# A chunk's float32 logits take at most this many bytes by default (256 MiB).
_CHUNK_LOGIT_BYTES = 2 ** 28


def default_chunk_size(vocab_size):
    """Rows per chunk so that a chunk's float32 logits stay within 256 MiB; a multiple of 8 when >= 8."""
    rows = max(1, _CHUNK_LOGIT_BYTES // (vocab_size * 4))
    return rows - rows % 8 if rows >= 8 else rows


def _chunk_loss_and_grad(h, weight, labels, ignore_index, need_grad):
    """Summed loss of one chunk and, if `need_grad`, d loss / d logits (in h's dtype)."""
    acc = accumulation_dtype(h)
    logits = (h @ weight.t()).to(acc)  # (n, V)
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    valid = labels != ignore_index
    target = torch.where(valid, labels, torch.zeros_like(labels))  # ignored rows gather column 0, masked out
    picked = logits.gather(1, target.unsqueeze(1)).squeeze(1)  # (n,)
    loss = torch.where(valid, lse - picked, torch.zeros_like(lse)).sum()
    if not need_grad:
        return loss, None
    grad = torch.exp(logits - lse.unsqueeze(1))  # softmax, (n, V)
    grad.scatter_add_(1, target.unsqueeze(1), -valid.to(acc).unsqueeze(1))
    grad = grad * valid.to(acc).unsqueeze(1)  # ignored rows contribute nothing
    return loss, grad.to(h.dtype)


def _forward_and_grads(hidden, weight, labels, ignore_index, chunk_size, need_dh, need_dw):
    """Loss sum and the gradients dh (hidden's dtype) and dW (float32 or float64) for grad_output = 1."""
    acc = accumulation_dtype(hidden)
    need_grad = need_dh or need_dw
    loss = torch.zeros((), dtype=acc, device=hidden.device)
    dh = torch.zeros_like(hidden) if need_dh else None
    dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_dw else None
    # A static Python loop: dynamo unrolls it (the chunk count depends only on N and chunk_size).
    for start in range(0, hidden.shape[0], chunk_size):
        h = hidden[start:start + chunk_size]  # (n, d)
        chunk_loss, grad = _chunk_loss_and_grad(h, weight, labels[start:start + chunk_size], ignore_index,
                                                need_grad)
        loss = loss + chunk_loss
        if need_dh:
            dh[start:start + chunk_size] = (grad @ weight).to(hidden.dtype)
        if need_dw:
            dw = dw + (grad.t() @ h).to(acc)  # (V, d)
    return loss, dh, dw


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, chunk_size, need_dh, need_dw):
        loss, dh, dw = _forward_and_grads(hidden, weight, labels, ignore_index, chunk_size, need_dh, need_dw)
        ctx.need_dh, ctx.need_dw = need_dh, need_dw
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(*(t for t in (dh, dw) if t is not None))
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        saved = list(ctx.saved_tensors)
        grad_hidden = grad_weight = None
        if ctx.need_dh:
            dh = saved.pop(0)
            grad_hidden = dh * grad_output.to(dh.dtype)
        if ctx.need_dw:
            dw = saved.pop(0)
            grad_weight = (dw * grad_output.to(dw.dtype)).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def _describe(x):
    return f"shape {tuple(x.shape)} {x.dtype}" if torch.is_tensor(x) else repr(x)


def linear_cross_entropy(hidden, weight, labels, ignore_index=-100, chunk_size=None):
    """Sum over tokens with `labels != ignore_index` of cross_entropy(hidden @ weight^T, labels), in chunks.

    Equals `F.cross_entropy(hidden @ weight.T, labels, reduction="sum", ignore_index=ignore_index)` (with the
    logits upcast to float32) and its gradients, without materialising the [N, V] logits or their gradient.
    Memory beyond the inputs: one chunk's logits and their gradient, dh [N, d] and a float32 dW [V, d].

    Args:
        hidden: [N, d] final hidden states (bf16, fp16, fp32 or fp64).
        weight: [V, d] bias-free output projection, same dtype as `hidden` (may be tied to the embedding).
        labels: [N] int64 target ids in [0, V - 1], or `ignore_index`.
        ignore_index: label value of tokens that carry no loss.
        chunk_size: rows per chunk (>= 1); None picks rows so that a chunk's float32 logits take <= 256 MiB.
    Returns:
        A scalar: float32 (float64 for float64 inputs) sum of the token losses; 0 if every label is ignored.
    """
    where = "linear_cross_entropy"
    if not torch.is_tensor(hidden) or hidden.dim() != 2:
        raise ValueError(f"{where}: hidden must be a 2-D tensor [N, d], got {_describe(hidden)}")
    n, d = hidden.shape
    if not torch.is_tensor(weight) or weight.dim() != 2 or weight.shape[1] != d:
        raise ValueError(f"{where}: weight must be a 2-D tensor [V, d] with d = {d} (hidden's width), "
                         f"got {_describe(weight)}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"{where}: weight's dtype must equal hidden's ({hidden.dtype}), got {weight.dtype}")
    if not torch.is_tensor(labels) or labels.shape != (n,) or labels.dtype != torch.long:
        raise ValueError(f"{where}: labels must be an int64 tensor of shape ({n},), got {_describe(labels)}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"{where}: ignore_index must be an integer, got {ignore_index!r}")
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0])
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{where}: chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    grad_on = torch.is_grad_enabled()
    need_dh, need_dw = grad_on and hidden.requires_grad, grad_on and weight.requires_grad
    if not (need_dh or need_dw):
        return _forward_and_grads(hidden, weight, labels, ignore_index, chunk_size, False, False)[0]
    return LinearCrossEntropyFunction.apply(hidden, weight, labels, ignore_index, chunk_size,
                                            need_dh, need_dw)
