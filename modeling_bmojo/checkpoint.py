"""Refusing a checkpoint saved with another config (a different depth, `mixer_types`, or width).

transformers loads such a checkpoint "leniently": parameters the checkpoint lacks are left randomly
initialised and extra ones are dropped, with only a logged LOAD REPORT, and shape disagreements end
in a generic RuntimeError. A B'MOJO model loaded like that gives wrong answers without a sign, so
`from_pretrained` asks transformers for its loading info and raises a ValueError listing what does not
match. Uses only the `output_loading_info` dict (`missing_keys`, `unexpected_keys`,
`mismatched_keys`), whose keys are the same from transformers 4.x to 5.24.

Where transformers' contract says the caller takes the loading info in hand, it is left to the caller,
as for any transformers model:
- `output_loading_info=True`: missing and unexpected parameters come back in the info (shape mismatches
  still raise unless `ignore_mismatched_sizes=True`, as in transformers);
- `from_pretrained(None, config=..., state_dict=...)`: the caller's own weights; parameters the dict
  leaves out are initialised (`state_dict={}` initialises them all);
- a checkpoint without the output head (a base `BMojoModel` saved, loaded into an untied
  `BMojoForCausalLM`): the head alone is initialised and reported in `missing_keys`, as Llama does.
"""

import re

_SHOWN = 5  # names listed per kind of disagreement
_HEAD = "lm_head."  # the causal LM's output head, the only part a base-model checkpoint may lack


class CheckpointMismatchError(ValueError):
    """The checkpoint's parameters do not match the model built from the config. `loading_info` holds
    transformers' dict (missing_keys, unexpected_keys, mismatched_keys, error_msgs)."""

    def __init__(self, message, loading_info):
        super().__init__(message)
        self.loading_info = loading_info


def load_checked(load, args, kwargs):
    """`load(*args, **kwargs)` is transformers' `from_pretrained`; returns what it would return (the
    model, or `(model, loading_info)` when the caller passed `output_loading_info=True`)."""
    want_info = bool(kwargs.pop("output_loading_info", False))
    # transformers raises a RuntimeError on shape mismatches (after logging them) unless told to ignore
    # them; ignore there and raise here, with the names. A caller's own ignore_mismatched_sizes=True keeps
    # its meaning: mismatched shapes are then re-initialised on purpose and not refused.
    allow_mismatched = bool(kwargs.get("ignore_mismatched_sizes", False))
    kwargs["ignore_mismatched_sizes"] = True
    model, info = load(*args, output_loading_info=True, **kwargs)
    source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
    own_weights = kwargs.get("state_dict") is not None
    check_loading_info(model, info, source, allow_mismatched=allow_mismatched,
                       allow_missing=want_info or own_weights, allow_unexpected=want_info)
    return (model, info) if want_info else model


def check_loading_info(model, info, source=None, allow_mismatched=False, allow_missing=False,
                       allow_unexpected=False):
    """Raises CheckpointMismatchError for what transformers' loading `info` reports and the caller did not
    allow."""
    missing = set() if allow_missing else set(info.get("missing_keys") or ())
    unexpected = set() if allow_unexpected else set(info.get("unexpected_keys") or ())
    mismatched = [] if allow_mismatched else list(info.get("mismatched_keys") or ())
    if getattr(model.config, "tie_word_embeddings", False):
        # A tied output head is never saved: it is the embedding. transformers 5.24 drops it from
        # missing_keys itself; some versions may not.
        tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None)
        missing -= set(tied or ())
    if all(k.startswith(_HEAD) for k in missing):
        # Only the untied output head is missing: a base-model checkpoint. transformers initialised the
        # head (_init_weights) and reported it (LOAD REPORT, missing_keys), as for Llama.
        missing = set()
    if getattr(model, "lm_head", None) is None:
        # A base model loaded from a causal-LM checkpoint with an untied head: the head is not part of it.
        unexpected = {k for k in unexpected if not k.startswith(_HEAD)}
    if not (missing or unexpected or mismatched):
        return

    cfg = model.config
    parts = []
    if missing:
        parts.append(f"{len(missing)} parameter(s) of the model missing from the checkpoint (they would be "
                     f"left randomly initialised): {_names(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} parameter(s) in the checkpoint that the model does not have: "
                     f"{_names(unexpected)}")
    if mismatched:
        ordered = sorted(mismatched, key=lambda m: _natural(_key_of(m)))
        shown = ", ".join(_describe_mismatch(m) for m in ordered[:_SHOWN])
        more = f", and {len(mismatched) - _SHOWN} more" if len(mismatched) > _SHOWN else ""
        parts.append(f"{len(mismatched)} parameter(s) with a different shape: {shown}{more}")
    where = f" at {str(source)!r}" if source is not None else ""
    raise CheckpointMismatchError(
        f"The checkpoint{where} does not match the config of this {type(model).__name__} "
        f"(num_hidden_layers={cfg.num_hidden_layers}, mixer_types={list(cfg.mixer_types)}, "
        f"hidden_size={cfg.hidden_size}): " + "; ".join(parts) + ". Load it with the config saved with it "
        "(without overriding num_hidden_layers, mixer_types or sizes), or pass a config that matches it.",
        info,
    )


def _natural(name):
    """Sort key that puts layers.2 before layers.10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _names(keys):
    ordered = sorted(keys, key=_natural)
    more = f", and {len(ordered) - _SHOWN} more" if len(ordered) > _SHOWN else ""
    return ", ".join(ordered[:_SHOWN]) + more


def _key_of(entry):
    return entry[0] if isinstance(entry, (tuple, list)) else str(entry)


def _describe_mismatch(entry):
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        name, saved, expected = entry
        return f"{name} (checkpoint {tuple(saved)}, model {tuple(expected)})"
    return _key_of(entry)
