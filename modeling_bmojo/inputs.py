"""Checks at the model's boundary: bad input raises a ValueError that names the field, the value
and what is allowed, before it can reach a kernel or silently change an answer.

Under torch.compile the checks on tensor values are in-graph asserts (`_require`): reading a value on
the host would break the graph at every check."""

import torch

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _holes(mask):
    """True where a row has a 0 between two 1s. mask [B, S] bool -> [B, S] bool."""
    after_first = mask.long().cumsum(1) > 0
    before_last = mask.flip(1).long().cumsum(1).flip(1) > 0
    return ~mask & after_first & before_last


def _require(ok, message, detail=None):
    """ValueError(message + detail()) unless the bool tensor `ok` is all true. While torch.compile traces,
    an in-graph assert instead (a RuntimeError with `message`), not a graph break to read `ok`."""
    if torch.compiler.is_compiling():
        torch._assert_async(ok.all(), message)
    elif not bool(ok.all()):
        raise ValueError(message + (detail() if detail else ""))


def check_inputs(config, input_ids, inputs_embeds, attention_mask, position_ids, cache):
    """Validates one forward call; returns the bool mask of the new tokens [B, T]."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None:
        if not torch.is_tensor(input_ids) or input_ids.dtype not in _INT_DTYPES:
            kind = input_ids.dtype if torch.is_tensor(input_ids) else type(input_ids).__name__
            raise ValueError(f"input_ids must be an integer tensor, got {kind}")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must have shape (batch, seq_len) with seq_len >= 1, got {tuple(input_ids.shape)}")

        def worst_id():
            low = int(input_ids.min())
            return f", got {low if low < 0 else int(input_ids.max())}"

        vocab = config.vocab_size
        _require((input_ids >= 0) & (input_ids < vocab),
                 f"input_ids must lie in [0, {vocab - 1}] (vocab_size={vocab})", worst_id)
        batch, new = input_ids.shape
        device = input_ids.device
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size or inputs_embeds.shape[1] == 0:
            raise ValueError(f"inputs_embeds must have shape (batch, seq_len, {config.hidden_size}), "
                             f"got {tuple(inputs_embeds.shape)}")
        if not inputs_embeds.is_floating_point():
            raise ValueError(f"inputs_embeds must be a floating-point tensor, got {inputs_embeds.dtype}")
        batch, new = inputs_embeds.shape[:2]
        device = inputs_embeds.device
    filled = cache is not None and not cache.is_empty
    past = cache.seen_tokens if filled else 0
    if filled and cache.batch_size != batch:
        raise ValueError(f"batch size {batch} does not match the cache's batch size {cache.batch_size}")

    if attention_mask is None:
        mask = torch.ones(batch, new, dtype=torch.bool, device=device)
    else:
        if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, past + new):
            raise ValueError(f"attention_mask must have shape (batch, past + seq_len) = ({batch}, {past + new}), "
                             f"got {tuple(attention_mask.shape)}")
        if attention_mask.dtype != torch.bool:
            _require((attention_mask == 0) | (attention_mask == 1), "attention_mask must hold only 0 and 1")
        mask = attention_mask[:, past:].to(device=device, dtype=torch.bool)
    started = (cache.lengths > 0)[:, None] if filled else mask.new_zeros(batch, 0)
    _require(~_holes(torch.cat([started, mask], dim=1)),
             "attention_mask has a 0 between real tokens of a row; only left or right padding is supported")

    if position_ids is not None:
        if position_ids.dim() != 2 or position_ids.shape[1] != new or position_ids.shape[0] not in (1, batch):
            raise ValueError(f"position_ids must have shape (batch, seq_len) = ({batch}, {new}), "
                             f"got {tuple(position_ids.shape)}")
        before = cache.lengths[:, None] if filled else 0
        expected = before + mask.long().cumsum(1) - 1
        _require((position_ids.to(device) == expected) | ~mask, "position_ids must count each row's real "
                 "tokens from 0, continuing the cache (packed or shifted positions are not supported); leave "
                 "them out to derive them")
    return mask


def left_justify_order(mask):
    """A per-row permutation putting real tokens first, in order; None when no row needs moving.
    While torch.compile traces, always the permutation (the identity when no row needs moving), rather
    than a graph break to read the mask."""
    first = mask.long().argmax(dim=1)
    if not torch.compiler.is_compiling() and not bool((first > 0).any()):
        return None
    return torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
