"""`BMojoCache`: what each layer needs to continue a sequence one token at a time (DESIGN.md §5).

Per layer, a dict of batch-first tensors: the Mamba-2 conv and SSM states, the last w window
keys/values, the last w + n_f fading keys/values, the fading output f_{t-1}, and the eidetic sets
(store, previous and current chunk candidates). Sizes are fixed by w, n_f and M_e, so decoding
memory does not grow with the context (full-attention layers excepted: they keep every key).

Rows may hold different numbers of real tokens (left padding): `lengths[b]` counts row b's real
tokens, while `get_seq_length()` counts every column seen, as `generate()` expects.
"""

import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5.24 renamed the cache argument of forward()/generate() and the output field from
# `past_key_values` to `cache` (the old name is deprecated until 5.40). Both names are accepted on
# input; outputs and generate()'s model_kwargs use the name of the installed version.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class BMojoCache(Cache):
    """Cache of a B'MOJO model. Created empty; the first forward pass fills it."""

    def __init__(self, config, **kwargs):
        # Our layers are plain dicts: transformers' layer registry changed within 5.x and is not used.
        super().__init__(layers=[])
        self.config = config
        self.num_layers = config.num_hidden_layers
        self.states = [None] * self.num_layers
        self.lengths = None  # (B,) real tokens per row
        self.seen_tokens = 0
        self.fingerprint = _fingerprint(config)
        self.verified_for = None  # what check_cache_tensors last accepted this cache for

    # --- what the model uses -------------------------------------------------------------
    @property
    def is_empty(self):
        return self.lengths is None

    def start(self, lengths):
        self.lengths = lengths.clone()

    # --- what generate() uses -------------------------------------------------------------
    def get_seq_length(self, layer_idx=0):
        return self.seen_tokens

    def get_max_length(self, layer_idx=None):
        return -1

    def get_mask_sizes(self, query_length, layer_idx=0):
        return self.seen_tokens + query_length, 0

    @property
    def is_compileable(self):
        return False

    @property
    def is_croppable(self):
        return False

    @property
    def is_initialized(self):
        return not self.is_empty

    @property
    def batch_size(self):
        return None if self.lengths is None else self.lengths.shape[0]

    def __len__(self):
        return self.num_layers

    def _map(self, fn):
        self.verified_for = None  # fn may move or cast the tensors
        for state in self.states:
            if state is not None:
                for name in state:
                    state[name] = fn(state[name])
        if self.lengths is not None:
            self.lengths = fn(self.lengths)

    def reorder_cache(self, beam_idx):
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats):
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices):
        self._map(lambda t: t[indices.to(t.device)])

    def reset(self):
        self.verified_for = None
        self.states = [None] * self.num_layers
        self.lengths = None
        self.seen_tokens = 0

    def crop(self, max_length):
        if max_length < 0:
            max_length = self.seen_tokens + max_length
        if max_length != self.seen_tokens:
            raise ValueError(
                "BMojoCache cannot be cropped: its SSM state and eidetic store cannot forget tokens "
                f"(asked to keep {max_length} of {self.seen_tokens} tokens). Re-run the prefix instead."
            )

    def nbytes(self):
        """Bytes held by the cache's tensors (for memory checks)."""
        total = 0
        for state in self.states:
            if state is not None:
                total += sum(t.numel() * t.element_size() for t in state.values())
        return total


# Every config field that shapes a cached tensor or gives it its meaning: layer count and kinds, widths
# and head counts, window / fading / store sizes, whether keys are RMS-normalised, the RoPE base the
# cached keys were rotated with, whether fading keys/values come from the K/V projections, and the SSM
# state layout. Fields that only change training or kernels (losses, init ranges, chunk sizes of the
# parallel scan, use_kernels) are left out. The model's identity is left out on purpose: generate()
# and beam search hand the cache between calls and copies, and two models with the same config and
# dtype may share a cache (their states are then valid shapes, though the numbers belong to the model
# that filled it).
FINGERPRINT_FIELDS = (
    "num_hidden_layers", "mixer_types", "hidden_size", "num_attention_heads", "num_key_value_heads",
    "head_dim", "qk_norm", "rope_theta", "window_size", "fading_tokens", "tie_fading_projections",
    "eidetic_capacity", "eidetic_tokens_per_chunk", "ssm_state_size", "ssm_head_dim", "ssm_expand",
    "ssm_n_groups", "conv_kernel",
)

# Cached floating-point tensors the mixers keep in float32 whatever the model's dtype (by the last part
# of their name): the SSM state and the eidetic scores. Every other floating tensor is in the model's.
_FLOAT32_STATES = ("ssm", "s")


def _fingerprint(config):
    """What a cache must agree on with the model that reads it."""
    def freeze(value):  # compared by value: 10000 == 10000.0, ["bmojo"] == ("bmojo",)
        return tuple(value) if isinstance(value, list) else value

    return tuple((k, freeze(getattr(config, k, None))) for k in FINGERPRINT_FIELDS)


def pick_cache(cache, past_key_values):
    """The cache passed under either name (`cache` from transformers 5.24, `past_key_values` before)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the cache once, as `cache` or as `past_key_values`, not two different ones")
    return cache if cache is not None else past_key_values


def check_cache(cache, config):
    if not isinstance(cache, BMojoCache):
        raise ValueError(f"the cache (`cache` / `past_key_values`) must be a BMojoCache (or None), "
                         f"got {type(cache).__name__}")
    mine, theirs = dict(_fingerprint(config)), dict(cache.fingerprint)
    differ = [k for k in mine if mine[k] != theirs.get(k)]
    if differ:
        shown = ", ".join(f"{k}={theirs.get(k, '?')} (model: {mine[k]})" for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise ValueError(f"the cache (`cache` / `past_key_values`) is a BMojoCache made for a model with a "
                         f"different config: "
                         f"{shown}{more}; start a new cache for this model")


def check_cache_tensors(cache, dtype, layer_devices, skip_dtype=False):
    """A filled cache must hold its tensors in the dtype the model computes in and, layer by layer, on the
    device of that layer's weights; otherwise the first decode step would fail deep inside a matmul (or
    silently compute in another precision). `layer_devices[i]` None skips layer i's device check."""
    for i, state in enumerate(cache.states):
        if not state:
            continue
        device = layer_devices[i] if i < len(layer_devices) else None
        for name, t in state.items():
            if device is not None and t.device != device:
                raise ValueError(
                    f"the cache holds layer {i}'s {name!r} on {t.device} but that layer's weights are "
                    f"on {device}; move the model back, or start a new cache for it where it is now")
            if skip_dtype or not t.is_floating_point():
                continue
            want = torch.float32 if name.rpartition(".")[2] in _FLOAT32_STATES else dtype
            if t.dtype != want:
                raise ValueError(
                    f"the cache holds layer {i}'s {name!r} in {t.dtype}, expected {want} for a model "
                    f"computing in {dtype} (the cache was filled by a model in another dtype); start a new "
                    f"cache for this model, or convert the model to the dtype the cache was made with")


def _layer_device(layer):
    norm = getattr(layer, "input_norm", None)  # one known weight: walking parameters() is slower
    weight = getattr(norm, "weight", None)
    param = weight if isinstance(weight, torch.Tensor) else next(layer.parameters(), None)
    # Parameters on "meta" are offloaded (accelerate moves them in at call time): that layer is skipped.
    return None if param is None or param.device.type == "meta" else param.device


def check_cache_storage(cache, model, inputs_embeds=None):
    """Checks a filled cache's tensors against the dtype and devices of `model` (a BMojoModel) reading it.

    Decoding calls this every step, so a cache accepted once is not read again while the model, its
    dtype and embedding device and the set of filled layers stay the same: the model's own writes keep
    each tensor's dtype and device (`BMojoCache._map`, which reorders or moves the cache, and `reset`
    forget the acceptance)."""
    if cache.is_empty:
        return
    weight = model.get_input_embeddings().weight
    dtype = inputs_embeds.dtype if inputs_embeds is not None else weight.dtype
    skip_dtype = _autocast_on(weight.device.type)
    key = (id(model), dtype, weight.device, skip_dtype, tuple(state is not None for state in cache.states))
    if cache.verified_for != key:
        check_cache_tensors(cache, dtype, [_layer_device(layer) for layer in model.layers], skip_dtype)
        cache.verified_for = key


def _autocast_on(device_type):
    """Under autocast the mixers store keys in the autocast dtype, not the weights' dtype."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no argument (CUDA), with a separate CPU query
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
