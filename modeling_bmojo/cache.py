"""`BMojoCache`: what each layer needs to continue a sequence one token at a time (DESIGN.md §5).

Per layer, a dict of batch-first tensors: the Mamba-2 conv and SSM states, the last w window
keys/values, the last w + n_f fading keys/values, the fading output f_{t-1}, and the eidetic sets
(store, previous and current chunk candidates). Sizes are fixed by w, n_f and M_e, so decoding
memory does not grow with the context (full-attention layers excepted: they keep every key).

Rows may hold different numbers of real tokens (left padding): `lengths[b]` counts row b's real
tokens, while `get_seq_length()` counts every column seen, as `generate()` expects.
"""

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


def _fingerprint(config):
    """What a cache must agree on with the model that reads it."""
    keys = ("hidden_size", "num_hidden_layers", "mixer_types", "num_key_value_heads", "head_dim", "window_size",
            "fading_tokens", "eidetic_capacity", "eidetic_tokens_per_chunk", "ssm_state_size", "ssm_head_dim",
            "ssm_expand", "ssm_n_groups", "conv_kernel")
    return tuple((k, str(getattr(config, k))) for k in keys)


def pick_cache(cache, past_key_values):
    """The cache passed under either name (`cache` from transformers 5.24, `past_key_values` before)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the cache once, as `cache` or as `past_key_values`, not two different ones")
    return cache if cache is not None else past_key_values


def check_cache(cache, config):
    if not isinstance(cache, BMojoCache):
        raise ValueError(f"past_key_values must be a BMojoCache (or None), got {type(cache).__name__}")
    if cache.fingerprint != _fingerprint(config):
        raise ValueError("past_key_values is a BMojoCache made for a model with a different config "
                         "(layers, widths, window or store sizes differ); start a new cache for this model")
