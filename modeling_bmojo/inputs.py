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
    """Validates one forward call; returns the bool mask of the new tokens [B, T].

    `attention_mask` covers the cached and the new columns (B, past + T), as transformers passes it, or,
    on a filled cache, only the new ones (B, T): generate() is given the latter
    (`prepare_inputs_for_generation`) so that a compiled decode step sees the same shapes at every token.
    Checks of tensor values (id range, 0/1 mask, holes, positions) are skipped in a compiled decode step (a
    filled cache): the prefill checked the prompt, and asserts would cost kernels every token."""
    filled = cache is not None and not cache.is_empty
    stepping = filled and torch.compiler.is_compiling()
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
        if not stepping:
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
    if filled and cache.batch_size != batch:
        raise ValueError(f"batch size {batch} does not match the cache's batch size {cache.batch_size}")

    if attention_mask is None:
        mask = torch.ones(batch, new, dtype=torch.bool, device=device)
    else:
        columns = attention_mask.shape[-1]
        wrong_columns = columns != new and not stepping and columns != _past(cache) + new
        if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or wrong_columns:
            shapes = f"({batch}, {new})" + (f" or ({batch}, {_past(cache) + new})" if filled else "")
            raise ValueError(f"attention_mask must have shape (batch, past + seq_len) or, after a prefill, "
                             f"(batch, seq_len): {shapes}, got {tuple(attention_mask.shape)}")
        if attention_mask.dtype != torch.bool and not stepping:
            _require((attention_mask == 0) | (attention_mask == 1), "attention_mask must hold only 0 and 1")
        mask = attention_mask[:, columns - new:].to(device=device, dtype=torch.bool)
    if stepping:
        return mask
    if attention_mask is not None:  # without one, every new token is real: no row can have a hole
        started = (cache.lengths > 0)[:, None] if filled else mask.new_zeros(batch, 0)
        _require(~_holes(torch.cat([started, mask], dim=1)), "attention_mask has a 0 between real tokens "
                 "of a row; only left or right padding is supported")

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


def _past(cache):
    return 0 if cache is None or cache.is_empty else cache.get_seq_length()


def left_justify_order(mask):
    """A per-row permutation putting real tokens first, in order; None when no row needs moving.
    While torch.compile traces, always the permutation (the identity when no row needs moving), rather
    than a graph break to read the mask."""
    first = mask.long().argmax(dim=1)
    if not torch.compiler.is_compiling() and not bool((first > 0).any()):
        return None
    return torch.argsort((~mask).to(torch.int8), dim=1, stable=True)


def output_hidden_states_flag(config, output_hidden_states, output_attentions):
    """The call's `output_hidden_states`, or the config's when the call leaves it out (as every transformers
    model reads it). Refuses `output_attentions` (from the call or the config): B'MOJO's attention layers
    never form attention weights, and transformers itself raises for attention weights from a backend
    that has none, rather than returning None."""
    if output_attentions is None:
        output_attentions = getattr(config, "output_attentions", False)
    if output_attentions:
        raise ValueError("output_attentions=True is not supported: B'MOJO's sliding-window and eidetic "
                         "attention never form attention weights; leave it out or set it to False (in the "
                         "call and in config.output_attentions)")
    if output_hidden_states is None:
        output_hidden_states = getattr(config, "output_hidden_states", False)
    if output_hidden_states not in (True, False):
        raise ValueError(f"output_hidden_states must be True or False (selecting layers by index is not "
                         f"supported), got {output_hidden_states!r}")
    return bool(output_hidden_states)
