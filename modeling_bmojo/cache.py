"""`BMojoCache`: what each layer needs to continue a sequence one token at a time (DESIGN.md §5).

One typed state per layer (`state.py`), allocated at the first forward (when batch, device and dtype
are known) at its final shapes and updated in place by the mixers' `step`: the Mamba-2 conv and SSM
states, the window ring, the ring of fading keys/values, the fading output f_{t-1}, and the eidetic
sets. Sizes are fixed by w, n_f and M_e, so decoding memory does not grow with the context
(full-attention layers keep every key, in a buffer sized for the generation).

Rows may hold different numbers of real tokens (left padding): `lengths[b]` counts row b's real
tokens, while `get_seq_length()` counts every column seen, as `generate()` expects. Both are device
tensors updated in place, so a compiled decode step reads and advances them without guards on
Python numbers (a changing Python int would recompile the step every token).
"""

import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .state import FullKeyValues, reset_states_

# transformers 5.24 renamed the cache argument of forward()/generate() and the output field from
# `past_key_values` to `cache` (the old name is deprecated until 5.40). Both names are accepted on
# input; outputs and generate()'s model_kwargs use the name of the installed version.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class BMojoCache(Cache):
    """Cache of a B'MOJO model. Created empty; the first forward pass allocates and fills it.

    `max_cache_len`: positions a full-attention layer gets room for (generate() passes its max_length);
    None lets those buffers grow as needed, which keeps the cache out of compiled decoding."""

    def __init__(self, config, max_cache_len=None, **kwargs):
        # Our layers are typed states of our own: transformers' layer registry changed within 5.x.
        super().__init__(layers=[])
        self.config = config
        self.num_layers = config.num_hidden_layers
        self._max_cache_len = max_cache_len
        self.states = [None] * self.num_layers
        self._spares = {}  # batch size -> an allocation put aside (_swap_batch)
        self.lengths = None  # (B,) int64: real tokens per row
        self.seen = None  # () int64: columns seen, padding included
        self.dtype = None  # the dtype the states were allocated in (the model's compute dtype)
        self.devices = None  # each layer's state's device
        self.filled = False
        self.fingerprint = _fingerprint(config)
        self.verified_for = None  # what check_cache_tensors last accepted this cache for

    @property
    def max_cache_len(self):
        """Room of full-attention layers (transformers' own caches name it so; None: they grow)."""
        return self._max_cache_len

    def grow_room(self, max_length):
        self._max_cache_len = max(self._max_cache_len or 0, max_length)

    # --- what the model uses -------------------------------------------------------------
    @property
    def is_empty(self):
        return not self.filled

    def allocate(self, model, batch, seqlen, device, dtype):
        """States for a new sequence of `batch` rows and a `seqlen`-column prefill: the existing ones,
        cleared in place, when they fit (so compiled decoding keeps its buffers' addresses), else new."""
        room = max(seqlen, self.max_cache_len or 0)
        # each layer's state lives where that layer's weights are (device_map may spread them)
        devices = [_layer_device(layer) or device for layer in model.layers]
        if not self._fits(batch, room, devices, dtype):
            self._swap_batch(batch)
        if not self._fits(batch, room, devices, dtype):
            self.states = [layer.mixer.new_state(batch, where, dtype, room)
                           for layer, where in zip(model.layers, devices)]
            self.devices = devices
            self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
            self.seen = torch.zeros((), dtype=torch.long, device=device)
            self.dtype = dtype
            self._mark_static()
        # new or reused, every layer's state at its initial values, at once; a compiled prefill skips what it
        # overwrites in full (each tensor a fill kernel there, where eager groups them in a few launches)
        reset_states_(self.states, skip_prefilled=torch.compiler.is_compiling())
        self.verified_for = None

    # Allocations of other batch sizes kept by a cache that generate() reuses: a compiled decode step's CUDA
    # graphs are recorded on its buffers' addresses, so going back to a batch size finds them unchanged
    # instead of re-recording on new ones (re-recording under a graph compiled for dynamic batch sizes
    # failed inside torch's CUDA-graph trees on torch 2.11). Bounded: the oldest allocation goes first.
    _SPARE_BATCH_SIZES = 3

    def _swap_batch(self, batch):
        """Puts the current allocation aside under its batch size; takes back the one for `batch`, if any."""
        spares = self._spares
        if self.lengths is not None:
            spares[self.lengths.shape[0]] = (self.states, self.devices, self.lengths, self.seen, self.dtype)
        if batch in spares:
            self.states, self.devices, self.lengths, self.seen, self.dtype = spares.pop(batch)
        else:
            self.states, self.lengths = [None] * self.num_layers, None
        while len(spares) > self._SPARE_BATCH_SIZES:
            spares.pop(next(iter(spares)))

    def _fits(self, batch, room, devices, dtype):
        if self.lengths is None or self.lengths.shape[0] != batch or self.devices != devices:
            return False
        return self.dtype == dtype and all(full.size >= room for full in self._full_attention_buffers())

    def _full_attention_buffers(self):
        return [state.window for state in self.states
                if isinstance(getattr(state, "window", None), FullKeyValues)]

    def start(self, lengths, columns):
        self.lengths.copy_(lengths)
        self.seen.fill_(columns)
        self.filled = True

    def advance(self, valid, columns):
        """After a decode step: each row's real-token count and the column count, in place."""
        self.lengths.add_(valid.long())
        self.seen.add_(columns)

    def reserve(self, new):
        """Room for `new` more positions in full-attention layers (eager decoding past max_cache_len)."""
        buffers = self._full_attention_buffers()
        if not buffers:  # nothing grows: no need to read the column count from the device
            return
        needed = self.get_seq_length() + new
        if any(full.size < needed for full in buffers):
            for full in buffers:
                full.reserve(needed)
            self.verified_for = None
            self._mark_static()

    def _mark_static(self):
        if torch.compiler.is_compiling():
            return
        for state in self.states:
            state.mark_static()
        for t in (self.lengths, self.seen):
            torch._dynamo.mark_static_address(t)

    # --- what generate() uses -------------------------------------------------------------
    def get_seq_length(self, layer_idx=0):
        return int(self.seen) if self.filled else 0

    @property
    def seen_tokens(self):
        return self.get_seq_length()

    def get_max_length(self, layer_idx=None):
        return -1

    def get_mask_sizes(self, query_length, layer_idx=0):
        return self.get_seq_length() + query_length, 0

    @property
    def is_compileable(self):
        """True when every layer's state has a fixed size: no unbounded eidetic store, and full-attention
        layers only with a known `max_cache_len` (generate() gives one)."""
        config = self.config
        kinds = set(config.mixer_types)
        if "full_attention" in kinds and self.max_cache_len is None:
            return False
        unbounded = config.eidetic_capacity is None and config.eidetic_tokens_per_chunk > 0
        return not ("bmojo" in kinds and unbounded)

    @property
    def is_croppable(self):
        return False

    @property
    def is_initialized(self):
        return self.filled

    @property
    def batch_size(self):
        return None if self.lengths is None else self.lengths.shape[0]

    def __len__(self):
        return self.num_layers

    def _rebind(self, fn):
        """Applies fn to every tensor (a batch change): new tensors, so they are marked static again."""
        self.verified_for = None
        for state in self.states:
            state.map_(fn)
        self.lengths = fn(self.lengths)
        self._mark_static()

    def reorder_cache(self, beam_idx):
        if self.lengths is None:
            return
        index = beam_idx.to(self.lengths.device)
        for state in self.states:
            state.reorder_(index.to(next(state.named_tensors())[1].device))
        self.lengths.copy_(self.lengths.index_select(0, index))

    def batch_repeat_interleave(self, repeats):
        if self.lengths is not None:
            self._rebind(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices):
        if self.lengths is not None:
            self._rebind(lambda t: t[indices.to(t.device)])

    def reset(self):
        """Forgets the sequence; the states stay allocated and are cleared at the next prefill."""
        self.verified_for = None
        self.filled = False

    def crop(self, max_length):
        seen = self.get_seq_length()
        if max_length < 0:
            max_length = seen + max_length
        if max_length != seen:
            raise ValueError(
                "BMojoCache cannot be cropped: its SSM state and eidetic store cannot forget tokens "
                f"(asked to keep {max_length} of {seen} tokens). Re-run the prefix instead."
            )

    def nbytes(self):
        """Bytes held by the cache's states (for memory checks)."""
        return sum(state.nbytes() for state in self.states if state is not None)


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
    """A filled cache must have been allocated in the dtype the model computes in and hold each layer's
    state on the device of that layer's weights; otherwise the first decode step would fail deep inside a
    matmul (or silently compute in another precision). `layer_devices[i]` None skips layer i's device
    check."""
    if not skip_dtype and cache.dtype != dtype:
        raise ValueError(
            f"the cache holds its states in {cache.dtype}, expected {dtype} for a model computing in {dtype} "
            f"(the cache was filled by a model in another dtype); start a new cache for this model, or "
            f"convert the model to the dtype the cache was made with")
    for i, state in enumerate(cache.states):
        device = layer_devices[i] if i < len(layer_devices) else None
        if state is None or device is None:
            continue
        for name, t in state.named_tensors():
            if t.device != device:
                raise ValueError(
                    f"the cache holds layer {i}'s {name!r} on {t.device} but that layer's weights are "
                    f"on {device}; move the model back, or start a new cache for it where it is now")


def _layer_device(layer):
    norm = getattr(layer, "input_norm", None)  # one known weight: walking parameters() is slower
    weight = getattr(norm, "weight", None)
    param = weight if isinstance(weight, torch.Tensor) else next(layer.parameters(), None)
    # Parameters on "meta" are offloaded (accelerate moves them in at call time): that layer is skipped.
    return None if param is None or param.device.type == "meta" else param.device


def check_cache_storage(cache, model, inputs_embeds=None):
    """Checks a filled cache's tensors against the dtype and devices of `model` (a BMojoModel) reading it.

    Decoding calls this every step, so a cache accepted once is not read again while the model, its
    dtype and embedding device stay the same: the model's own writes keep each tensor's dtype and device
    (`BMojoCache._rebind`, `reserve` and `allocate`, which make new tensors, forget the acceptance)."""
    if cache.is_empty:
        return
    weight = model.get_input_embeddings().weight
    dtype = inputs_embeds.dtype if inputs_embeds is not None else weight.dtype
    skip_dtype = _autocast_on(weight.device.type)
    key = (id(model), dtype, weight.device, skip_dtype)
    if cache.verified_for != key:
        check_cache_tensors(cache, dtype, [_layer_device(layer) for layer in model.layers], skip_dtype)
        cache.verified_for = key


def _autocast_on(device_type):
    """Under autocast the mixers store keys in the autocast dtype, not the weights' dtype."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no argument (CUDA), with a separate CPU query
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
